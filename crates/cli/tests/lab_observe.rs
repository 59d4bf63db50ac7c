//! Privileged lab tests of observability: flows name pods and verdicts, `--follow` is prompt,
//! a flood of drops stays bounded and is accounted for, and a real Prometheus server scrapes
//! the agent's metrics endpoint.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{privileged, text, TestLab, TWO_PODS};

fn flows(lab: &TestLab, args: &[&str]) -> Vec<serde_json::Value> {
    let out = lab.run(&[&["observe", "-o", "json"], args].concat());
    assert!(out.status.success(), "observe: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("observe -o json printed a line that is not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn pod_traffic_is_forwarded_and_spoofing_is_dropped_with_both_named() {
    if !privileged("pod_traffic_is_forwarded_and_spoofing_is_dropped_with_both_named") {
        return;
    }
    let lab = TestLab::up("obs", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, _) = lab.pod_ips("demo", "server");
    let out = lab.exec_until_ok("demo", "client", &["iperf3", "-c", &v4, "-t", "1"], Duration::from_secs(10));
    assert!(out.status.success(), "{}", text(&out));

    let forwarded = flows(&lab, &["--from-pod", "demo/client", "--to-pod", "demo/server", "--verdict", "FORWARDED", "--protocol", "tcp"]);
    assert!(!forwarded.is_empty(), "client -> server TCP appears as FORWARDED");
    let syn = forwarded.iter().find(|f| f["tcpFlags"] == "SYN").expect("the connection's SYN is traced");
    assert_eq!(syn["source"]["pod"], "client");
    assert_eq!(syn["destination"]["pod"], "server");
    assert_eq!(syn["destination"]["port"], 5201);
    assert!(syn["source"]["identity"].as_u64().unwrap_or(0) >= 256, "identities are shown: {syn}");
    assert_eq!(syn["forward"], "local endpoint");

    lab.exec("demo", "client", &["ip", "addr", "add", "198.19.0.250/32", "dev", "eth0"]);
    let spoofed = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "1", "-I", "198.19.0.250", &v4]);
    assert!(!spoofed.status.success());
    let dropped = flows(&lab, &["--type", "drop", "--pod", "client"]);
    let drop = dropped.iter().find(|f| f["source"]["ip"] == "198.19.0.250").expect("the spoofed ping appears as a drop");
    assert_eq!(drop["verdict"], "DROPPED");
    assert_eq!(drop["dropReason"], "invalid source IP");
    assert_eq!(drop["source"]["pod"], "client", "the sending pod is named even with a forged address");
    assert_eq!(drop["protocol"], "ICMPv4");

    let table = lab.run(&["observe", "--last", "3"]);
    assert!(table.status.success(), "{}", text(&table));
    assert_eq!(String::from_utf8_lossy(&table.stdout).lines().count(), 3, "--last 3 prints three lines");
}

#[test]
fn follow_delivers_a_new_flow_within_a_second() {
    if !privileged("follow_delivers_a_new_flow_within_a_second") {
        return;
    }
    let lab = TestLab::up("fol", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, _) = lab.pod_ips("demo", "server");
    let mut follower = lab
        // To the server's IPv4 address only: the pod's own IPv6 neighbour discovery is ICMP too.
        .cmd(&["observe", "--follow", "-o", "json", "--protocol", "icmp", "--from-pod", "client", "--ip", &v4])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("observe --follow");
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let ping = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "1", &v4]);
    assert!(ping.status.success(), "{}", text(&ping));
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send((line, Instant::now()));
        }
    });
    let received = rx.recv_timeout(Duration::from_secs(3));
    let _ = follower.kill();
    let _ = follower.wait();
    let (line, at) = received.expect("a followed flow arrives");
    let flow: serde_json::Value = serde_json::from_str(&line).expect("a JSON flow");
    assert_eq!(flow["protocol"], "ICMPv4");
    let delay = at.duration_since(sent);
    assert!(delay < Duration::from_secs(1), "delivered {delay:?} after the ping, within 1 s");
}

#[test]
fn a_flood_of_drops_stays_bounded_and_losses_are_counted() {
    if !privileged("a_flood_of_drops_stays_bounded_and_losses_are_counted") {
        return;
    }
    let lab = TestLab::up("fld", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, _) = lab.pod_ips("demo", "server");
    // A real ping first: the client learns its gateway's MAC with its own address (an ARP
    // asked from the forged address would itself be dropped as spoofed).
    let ok = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "1", &v4]);
    assert!(ok.status.success(), "{}", text(&ok));
    lab.exec("demo", "client", &["ip", "addr", "add", "198.19.0.251/32", "dev", "eth0"]);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).unwrap()).unwrap();
    let pid = state["nodes"][0]["agentPid"].as_i64().expect("agent pid");
    let rss = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap()
    };
    let before = rss();
    // Three seconds of spoofed UDP as fast as nc can write it: far above the drop-event budget.
    let flood = format!("timeout 3 nc -u -s 198.19.0.251 {v4} 9 < /dev/zero; true");
    let out = lab.exec("demo", "client", &["sh", "-c", &flood]);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = String::from_utf8_lossy(&lab.run(&["metrics"]).stdout).to_string();
    let metric =
        |name: &str| -> u64 { metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0) };
    let dropped = metric(r#"sluice_drop_packets_total{reason="invalid source IP",direction="from-pod"}"#);
    let limited = metric(r#"sluice_events_lost_total{reason="rate-limited"}"#);
    let observed = metric("sluice_flows_observed_total");
    assert!(dropped > 20_000, "the flood was dropped in the datapath ({dropped} packets)");
    assert!(limited > 0, "drop events beyond the budget are counted as lost");
    assert!(observed < dropped, "not every drop became an event ({observed} of {dropped})");
    assert!(observed + limited + 100 >= dropped, "drops are either observed or counted as lost: {observed} + {limited} vs {dropped}");
    let listing = lab.run(&["observe", "-o", "json", "--type", "drop"]);
    assert!(listing.status.success(), "{}", text(&listing));
    let held = String::from_utf8_lossy(&listing.stdout).lines().count();
    assert!(held <= 4096, "the agent holds at most its flow buffer ({held} flows)");
    let after = rss();
    assert!(after < before + 16 * 1024, "agent memory stays bounded: {before} KiB -> {after} KiB");
}

#[test]
fn the_agent_answers_its_liveness_and_readiness_probes() {
    if !privileged("the_agent_answers_its_liveness_and_readiness_probes") {
        return;
    }
    let lab = TestLab::up("prb", &[]);
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let out = lab.in_node("node0", &["curl", "-s", "--max-time", "5", "-w", " %{http_code}", &format!("http://127.0.0.1:9962{path}")]);
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(answer.split_whitespace().collect::<Vec<_>>(), [body, "200"], "{path}: {}", text(&out));
    }
    let missing =
        lab.in_node("node0", &["curl", "-s", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9962/nothing"]);
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
}

#[test]
fn prometheus_scrapes_the_agent_and_sees_a_drop_counter_move() {
    if !privileged("prometheus_scrapes_the_agent_and_sees_a_drop_counter_move") {
        return;
    }
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(prometheus) = prometheus else {
        panic!("Prometheus is not installed (apt-get install prometheus; scripts/install-deps.sh does it)");
    };
    let lab = TestLab::up("prom", &[]);
    lab.apply_ok(TWO_PODS);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:9962']\n",
    )
    .expect("config");
    // Prometheus runs in the node's namespace, where the agent's endpoint is on loopback.
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.node_netns("node0"), prometheus])
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(std::mem::replace(&mut server, Command::new("true").spawn().expect("true")));
    let query = |q: &str| -> Option<f64> {
        let out = lab.in_node(
            "node0",
            &["curl", "-s", "--max-time", "2", "--data-urlencode", &format!("query={q}"), "http://127.0.0.1:9090/api/v1/query"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"].as_array()?.first()?["value"][1].as_str()?.parse().ok()
    };
    let metric = r#"sum(sluice_drop_packets_total{reason="invalid source IP"})"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        if let Some(v) = query(metric) {
            break v;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped the agent");
        std::thread::sleep(Duration::from_millis(500));
    };
    let (v4, _) = lab.pod_ips("demo", "server");
    let ok = lab.exec("demo", "client", &["ping", "-c", "1", "-W", "1", &v4]);
    assert!(ok.status.success(), "the gateway is learned with the pod's own address first: {}", text(&ok));
    lab.exec("demo", "client", &["ip", "addr", "add", "198.19.0.252/32", "dev", "eth0"]);
    lab.exec("demo", "client", &["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "198.19.0.252", &v4]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = query(metric).unwrap_or(before);
        if now >= before + 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the drop counter did not move in Prometheus ({before} -> {now})");
        std::thread::sleep(Duration::from_millis(500));
    }
}
