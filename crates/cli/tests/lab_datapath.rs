//! Privileged lab tests of the datapath's promises: eBPF host routing bypasses the node's
//! stack (forwarding counters and an iptables FORWARD rule stay still) while legacy routing
//! goes through it; spoofing pods are dropped and counted; an agent restart does not break a
//! live TCP stream.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::time::Duration;

use common::{privileged, text, TestLab, TWO_PODS};

/// (IPv4 forwarded datagrams, IPv6 forwarded datagrams, FORWARD rule packets) of node0.
fn node_counters(lab: &TestLab) -> (u64, u64, u64) {
    let (fwd4, fwd6) = node_forwarded(lab, "node0");
    let mut rule = 0;
    for tool in ["iptables", "ip6tables"] {
        let out = lab.in_node("node0", &[tool, "-w", "-L", "FORWARD", "-v", "-x", "-n"]);
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        rule += listing
            .lines()
            .filter(|l| l.contains("sluice-test"))
            .filter_map(|l| l.split_whitespace().next().and_then(|p| p.parse::<u64>().ok()))
            .sum::<u64>();
    }
    (fwd4, fwd6, rule)
}

fn add_counting_rules(lab: &TestLab) {
    for (tool, cidr) in [("iptables", "198.19.0.0/16"), ("ip6tables", "2001:2::/48")] {
        let out =
            lab.in_node("node0", &[tool, "-w", "-I", "FORWARD", "-s", cidr, "-m", "comment", "--comment", "sluice-test", "-j", "ACCEPT"]);
        assert!(out.status.success(), "{tool} rule: {}", text(&out));
    }
}

fn traffic(lab: &TestLab) {
    let (v4, v6) = lab.pod_ips("demo", "server");
    for target in [v4, v6] {
        let out = lab.exec_until_ok("demo", "client", &["iperf3", "-c", &target, "-t", "1"], Duration::from_secs(10));
        assert!(out.status.success(), "iperf3 to {target}: {}", text(&out));
    }
}

fn bypass_deltas(mode: &str) -> (u64, u64, u64) {
    let lab = TestLab::up(&format!("by{}", &mode[..1]), &["--host-routing", mode]);
    lab.apply_ok(TWO_PODS);
    let status = lab.json(&["status", "-o", "json"]);
    assert_eq!(status["hostRouting"]["mode"], mode, "lab runs in {mode} mode: {status}");
    add_counting_rules(&lab);
    let before = node_counters(&lab);
    let redirected = node_forwards(&lab, "node0", "local endpoint");
    traffic(&lab);
    let after = node_counters(&lab);
    let redirected = node_forwards(&lab, "node0", "local endpoint") - redirected;
    if mode == "bpf" {
        assert!(redirected > 1000, "bpf: the datapath redirected the traffic itself ({redirected} packets)");
    } else {
        assert_eq!(redirected, 0, "legacy: the datapath leaves delivery to the stack");
    }
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

#[test]
fn bpf_host_routing_bypasses_the_node_stack_and_legacy_does_not() {
    if !privileged("bpf_host_routing_bypasses_the_node_stack_and_legacy_does_not") {
        return;
    }
    let (fwd4, fwd6, rule) = bypass_deltas("bpf");
    assert_eq!(fwd4, 0, "bpf: IpForwDatagrams must not move");
    assert_eq!(fwd6, 0, "bpf: Ip6OutForwDatagrams must not move");
    assert_eq!(rule, 0, "bpf: the iptables FORWARD rule must see no packet");
    let (fwd4, fwd6, rule) = bypass_deltas("legacy");
    assert!(fwd4 > 1000, "legacy: IPv4 traffic is forwarded by the stack (moved {fwd4})");
    assert!(fwd6 > 1000, "legacy: IPv6 traffic is forwarded by the stack (moved {fwd6})");
    assert!(rule > 1000, "legacy: the FORWARD rule counts pod traffic (moved {rule})");
}

fn drops(lab: &TestLab, reason: &str) -> u64 {
    let status = lab.json(&["status", "-o", "json"]);
    status["drops"]
        .as_array()
        .expect("drops")
        .iter()
        .find(|d| d["reason"] == reason)
        .and_then(|d| d["packets"].as_u64())
        .expect("reason listed")
}

#[test]
fn spoofing_pods_are_dropped_and_counted() {
    if !privileged("spoofing_pods_are_dropped_and_counted") {
        return;
    }
    let lab = TestLab::up("spoof", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, v6) = lab.pod_ips("demo", "server");
    let ok = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "1", &v4]);
    assert!(ok.status.success(), "unspoofed ping works first: {}", text(&ok));

    let add = lab.exec("demo", "client", &["ip", "addr", "add", "198.19.0.250/32", "dev", "eth0"]);
    assert!(add.status.success(), "{}", text(&add));
    let add6 = lab.exec("demo", "client", &["ip", "-6", "addr", "add", "2001:2::250/128", "dev", "eth0", "nodad"]);
    assert!(add6.status.success(), "{}", text(&add6));
    let before = drops(&lab, "invalid source IP");
    let spoofed = lab.exec("demo", "client", &["ping", "-c", "2", "-W", "1", "-I", "198.19.0.250", &v4]);
    assert!(!spoofed.status.success(), "a spoofed IPv4 source must not get through: {}", text(&spoofed));
    let spoofed6 = lab.exec("demo", "client", &["ping", "-6", "-c", "2", "-W", "1", "-I", "2001:2::250", &v6]);
    assert!(!spoofed6.status.success(), "a spoofed IPv6 source must not get through: {}", text(&spoofed6));
    assert!(drops(&lab, "invalid source IP") >= before + 4, "all four spoofed pings counted");

    let mac = lab.exec("demo", "client", &["ip", "link", "set", "dev", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(mac.status.success(), "{}", text(&mac));
    let before = drops(&lab, "invalid source MAC");
    let spoofed = lab.exec("demo", "client", &["ping", "-c", "2", "-W", "1", &v4]);
    assert!(!spoofed.status.success(), "a spoofed MAC must not get through: {}", text(&spoofed));
    assert!(drops(&lab, "invalid source MAC") > before, "spoofed MAC counted");
}

#[test]
fn agent_restart_keeps_a_live_tcp_stream_and_restores_endpoints() {
    if !privileged("agent_restart_keeps_a_live_tcp_stream_and_restores_endpoints") {
        return;
    }
    let lab = TestLab::up("rst", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, _) = lab.pod_ips("demo", "server");
    let ready = lab.exec_until_ok("demo", "client", &["iperf3", "-c", &v4, "-t", "1"], Duration::from_secs(10));
    assert!(ready.status.success(), "server answers: {}", text(&ready));
    let endpoints_before = lab.json(&["endpoint", "list", "-o", "json"]);

    let stream = lab.cmd(&["exec", "client", "-n", "demo", "--", "iperf3", "-c", &v4, "-t", "5", "-i", "0.5", "-J"]).output_async();
    std::thread::sleep(Duration::from_millis(1500));
    let restart = lab.run(&["restart-agent", "--node", "node0"]);
    assert!(restart.status.success(), "restart: {}", text(&restart));
    let out = stream.join().expect("stream thread");
    assert!(out.status.success(), "the stream must survive the restart: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    assert!(result.get("error").is_none(), "iperf3 reported an error: {}", result["error"]);
    let intervals = result["intervals"].as_array().expect("intervals");
    assert!(intervals.len() >= 9, "the stream ran its whole time: {} intervals", intervals.len());
    for (i, iv) in intervals.iter().enumerate() {
        let bps = iv["sum"]["bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(bps > 1e6, "interval {i} carried traffic ({bps} b/s): no stall across the restart");
    }
    let endpoints_after = lab.json(&["endpoint", "list", "-o", "json"]);
    assert_eq!(endpoints_before, endpoints_after, "the restarted agent restores the same endpoints, no duplicate, no leak");
    let again = lab.exec("demo", "client", &["iperf3", "-c", &v4, "-t", "1"]);
    assert!(again.status.success(), "new connections work after the restart: {}", text(&again));
}

trait OutputAsync {
    fn output_async(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for std::process::Command {
    fn output_async(mut self) -> std::thread::JoinHandle<std::process::Output> {
        std::thread::spawn(move || self.output().expect("run"))
    }
}

fn node_forwarded(lab: &TestLab, node: &str) -> (u64, u64) {
    let snmp = String::from_utf8_lossy(&lab.in_node(node, &["cat", "/proc/net/snmp"]).stdout).to_string();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    let idx = names.split_whitespace().position(|n| n == "ForwDatagrams").expect("ForwDatagrams column");
    let fwd4 = values.split_whitespace().nth(idx).and_then(|v| v.parse().ok()).expect("ForwDatagrams value");
    let snmp6 = String::from_utf8_lossy(&lab.in_node(node, &["cat", "/proc/net/snmp6"]).stdout).to_string();
    let fwd6 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams").map(|v| v.trim().parse().unwrap_or(0)))
        .expect("Ip6OutForwDatagrams");
    (fwd4, fwd6)
}

fn node_forwards(lab: &TestLab, node: &str, kind: &str) -> u64 {
    let status = lab.json(&["status", "--node", node, "-o", "json"]);
    status["forwards"]
        .as_array()
        .expect("forwards")
        .iter()
        .find(|d| d["reason"] == kind)
        .and_then(|d| d["packets"].as_u64())
        .expect("kind listed")
}

#[test]
fn pods_on_two_nodes_talk_through_fib_redirect_and_skip_both_stacks() {
    if !privileged("pods_on_two_nodes_talk_through_fib_redirect_and_skip_both_stacks") {
        return;
    }
    let lab = TestLab::up("xn", &["--nodes", "2"]);
    lab.apply_ok(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  nodeName: node0\n  containers: [{name: c, command: [iperf3, -s]}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec:\n  nodeName: node1\n  containers: [{name: c, command: [sleep, infinity]}]\n",
    );
    let (v4, v6) = lab.pod_ips("default", "a");
    assert!(v4.starts_with("198.19.0."), "pod a is in node0's CIDR: {v4}");
    let (b4, _) = lab.pod_ips("default", "b");
    assert!(b4.starts_with("198.19.1."), "pod b is in node1's CIDR: {b4}");
    let before = (node_forwarded(&lab, "node0"), node_forwarded(&lab, "node1"));
    let fib_before = node_forwards(&lab, "node1", "fib redirect");
    for target in [&v4, &v6] {
        let out = lab.exec_until_ok("default", "b", &["iperf3", "-c", target, "-t", "1"], Duration::from_secs(10));
        assert!(out.status.success(), "iperf3 across nodes to {target}: {}", text(&out));
        let ping = lab.exec("default", "b", &["ping", "-c", "1", "-W", "1", target]);
        assert!(ping.status.success(), "ping across nodes to {target}: {}", text(&ping));
    }
    let after = (node_forwarded(&lab, "node0"), node_forwarded(&lab, "node1"));
    assert_eq!(before, after, "neither node's stack forwarded pod traffic (IPv4, IPv6 per node)");
    let fib = node_forwards(&lab, "node1", "fib redirect") - fib_before;
    assert!(fib > 1000, "node1 sent the stream with fib_lookup + redirect_neigh ({fib} packets)");
}
