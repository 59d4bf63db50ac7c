//! A cluster on etcd, end to end: three lab nodes whose agents find everything in the lab's
//! etcd (TLS, a certificate each), take their pod CIDRs from the cluster pools and route
//! between nodes themselves. Pods on different nodes reach each other over TCP and UDP, IPv4
//! and IPv6; a Service's ClusterIP and NodePort reach backends on other nodes; a NetworkPolicy
//! and a SluiceNetworkPolicy are enforced across nodes; one label set has one identity number
//! everywhere. Faults: etcd restarted under a live connection, a node cut off from etcd, an
//! agent killed (its node withdrawn when its lease expires) and started again. The cross-node
//! checks run with endpoints published in slices (the default) and per pod.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{collect, drain, privileged, sluice_bin, spawn_hold, text, watch, TestLab};

/// The lab's nodes on the underlay.
const NODE_V4: [&str; 3] = ["198.18.0.10", "198.18.0.11", "198.18.0.12"];
/// Where the lab's etcd listens (the control-plane host).
const ETCD_V4: &str = "198.18.0.240";
/// How long a change in etcd may take to show in every node's datapath.
const CONVERGE: Duration = Duration::from_secs(5);

/// echo-1 on node1 and echo-2 on node2 (same labels), client and guest on node0, and a
/// dual-stack NodePort Service in front of the echo pods.
fn manifest() -> String {
    let bin = sluice_bin();
    let bin = bin.display();
    let pod = |name: &str, node: &str, app: &str, command: String| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, command: {command}, ports: [{{name: echo, containerPort: 8080}}]}}]\n")
    };
    let server = |name: &str| format!("[{bin}, svc-server, --name, {name}]");
    let mut out = String::new();
    out.push_str(&pod("echo-1", "node1", "echo", server("echo-1")));
    out.push_str(&pod("echo-2", "node2", "echo", server("echo-2")));
    out.push_str(&pod("client", "node0", "client", "[sleep, infinity]".into()));
    out.push_str(&pod("guest", "node0", "guest", "[sleep, infinity]".into()));
    out.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: echo}\nspec:\n  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n  selector: {app: echo}\n  ports: [{port: 80, targetPort: echo, nodePort: 30090}]\n",
    );
    out
}

/// `ip:port` or `[ip]:port`.
fn target(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `svc-probe` from a pod in `default`: target -> reached.
fn probe(lab: &TestLab, pod: &str, targets: &[String]) -> serde_json::Value {
    let bin = sluice_bin();
    let mut argv = vec![bin.to_str().unwrap(), "svc-probe", "--timeout", "1s"];
    argv.extend(targets.iter().map(String::as_str));
    let out = lab.exec("default", pod, &argv);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("svc-probe printed JSON ({e}): {}", text(&out)))
}

/// Probes until every target's answer is `want`, at most `within`; returns the last answers.
fn probe_until(lab: &TestLab, pod: &str, targets: &[String], want: bool, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let v = probe(lab, pod, targets);
        if targets.iter().all(|t| v[t] == want) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// TCP and UDP to port 8080 of both families of each pod.
fn echo_targets(lab: &TestLab, pods: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for pod in pods {
        let (v4, v6) = lab.pod_ips("default", pod);
        for ip in [v4, v6] {
            out.push(format!("tcp:{}", target(&ip, 8080)));
            out.push(format!("udp:{}", target(&ip, 8080)));
        }
    }
    out
}

/// `svc-client` to `to` from a pod (or from the external client): the name of the backend.
fn backend(lab: &TestLab, pod: Option<&str>, to: &str) -> Option<String> {
    let bin = sluice_bin();
    let argv = [bin.to_str().unwrap(), "svc-client", to];
    let out = match pod {
        Some(p) => lab.exec("default", p, &argv),
        None => lab.run(&[&["exec", "--external", "--"], &argv[..]].concat()),
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["reply"].as_str().and_then(|r| r.split_whitespace().next()).map(str::to_owned)
}

/// Backends seen over `tries` connections; retries until both are seen or `within` passes.
fn backends_seen(lab: &TestLab, pod: Option<&str>, to: &str, within: Duration) -> BTreeSet<String> {
    let deadline = Instant::now() + within;
    let mut seen = BTreeSet::new();
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(name) = backend(lab, pod, to) {
            seen.insert(name);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    seen
}

fn nodes(lab: &TestLab) -> Vec<serde_json::Value> {
    lab.json(&["get", "nodes", "-o", "json"]).as_array().expect("a list of nodes").clone()
}

/// The identity of a pod as its node's agent lists it.
fn identity(lab: &TestLab, node: &str, pod: &str) -> u64 {
    let list = lab.json(&["endpoint", "list", "--node", node, "-o", "json"]);
    let all = list.as_array().cloned().or_else(|| list["items"].as_array().cloned()).expect("endpoints");
    all.iter()
        .find(|e| e["podName"] == pod)
        .and_then(|e| e["identity"].as_u64())
        .unwrap_or_else(|| panic!("{pod} listed on {node}: {list}"))
}

/// Routes the agent of `node` installed (route protocol 197).
fn agent_routes(lab: &TestLab, node: &str) -> String {
    let v4 = lab.in_node(node, &["ip", "route", "show", "proto", "197"]);
    let v6 = lab.in_node(node, &["ip", "-6", "route", "show", "proto", "197"]);
    format!("{}{}", String::from_utf8_lossy(&v4.stdout), String::from_utf8_lossy(&v6.stdout))
}

#[test]
fn pods_services_and_policy_work_across_three_nodes_on_etcd() {
    across_three_nodes("etc", "slices");
}

#[test]
fn pods_services_and_policy_work_across_three_nodes_with_endpoints_per_pod() {
    across_three_nodes("etp", "per-pod");
}

/// What the lab's etcd holds of published endpoints: (per-pod records, endpoints in slices).
fn published(lab: &TestLab) -> (usize, usize) {
    let opened = sluice_lab::Lab::open(&lab.name, sluice_bin()).expect("opening the lab");
    let store = opened.store().load().expect("reading the lab's etcd");
    (store.endpoints.len(), store.published_slices.values().map(|s| s.endpoints.len()).sum())
}

/// The cross-node checks with the agents publishing endpoints as `endpoints` (`slices` or
/// `per-pod`): connectivity, services and policy must not tell the two apart.
fn across_three_nodes(tag: &str, endpoints: &str) {
    if !privileged(module_path!()) {
        return;
    }
    let lab = TestLab::up(tag, &["--nodes", "3", "--datastore", "etcd", "--endpoints", endpoints]);

    let listed = nodes(&lab);
    assert_eq!(listed.len(), 3, "three nodes registered: {listed:?}");
    let mut cidrs = BTreeSet::new();
    for n in &listed {
        assert_eq!(n["health"], "ready", "every agent reports ready: {n}");
        let own: Vec<String> = n["podCIDRs"].as_array().expect("podCIDRs").iter().map(|c| c.as_str().unwrap().to_owned()).collect();
        assert_eq!(own.len(), 2, "an IPv4 and an IPv6 pod CIDR from the pools: {n}");
        for c in own {
            assert!(cidrs.insert(c.clone()), "pod CIDR {c} given to one node only: {listed:?}");
        }
    }
    let routes = agent_routes(&lab, "node0");
    assert_eq!(routes.lines().count(), 4, "node0's agent routes the other two nodes' CIDRs, both families: {routes}");

    lab.apply_ok(&manifest());
    let pods = echo_targets(&lab, &["echo-1", "echo-2"]);
    let v = probe_until(&lab, "client", &pods, true, CONVERGE);
    assert!(pods.iter().all(|t| v[t] == true), "client on node0 reaches pods on node1 and node2, TCP and UDP, IPv4 and IPv6: {v}");

    // Four pods, published the configured way only.
    let want = if endpoints == "slices" { (0, 4) } else { (4, 0) };
    let deadline = Instant::now() + CONVERGE;
    while published(&lab) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(published(&lab), want, "(records, endpoints in slices) with endpoints: {endpoints}");

    let (id1, id2) = (identity(&lab, "node1", "echo-1"), identity(&lab, "node2", "echo-2"));
    assert_eq!(id1, id2, "one label set, one identity number on node1 and node2");
    assert_ne!(identity(&lab, "node0", "client"), id1, "another label set, another number");

    let svc = lab.json(&["get", "services", "echo", "-o", "json"]);
    let cluster_ips: Vec<String> =
        svc["spec"]["clusterIPs"].as_array().expect("clusterIPs").iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    assert_eq!(cluster_ips.len(), 2, "dual-stack ClusterIPs: {svc}");
    for ip in &cluster_ips {
        let seen = backends_seen(&lab, Some("client"), &target(ip, 80), CONVERGE);
        assert_eq!(
            seen,
            BTreeSet::from(["echo-1".to_owned(), "echo-2".to_owned()]),
            "ClusterIP {ip} from node0 reaches both backends on the other nodes"
        );
    }
    let seen = backends_seen(&lab, None, &target(NODE_V4[0], 30090), CONVERGE);
    assert_eq!(
        seen,
        BTreeSet::from(["echo-1".to_owned(), "echo-2".to_owned()]),
        "node0's NodePort reaches both backends, neither on node0"
    );

    // Only app=client may reach the echo pods: guest (same node as client) is denied on node1
    // and node2, which enforce ingress by the identity the packet came from.
    lab.apply_ok("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: echo-from-client}\nspec:\n  podSelector: {matchLabels: {app: echo}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n");
    let denied = probe_until(&lab, "guest", &pods, false, CONVERGE);
    assert!(pods.iter().all(|t| denied[t] == false), "guest denied on both other nodes: {denied}");
    let allowed = probe(&lab, "client", &pods);
    assert!(pods.iter().all(|t| allowed[t] == true), "client still allowed: {allowed}");

    // A Sluice deny rule wins over the allow, on every node.
    lab.apply_ok("apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: no-client}\nspec:\n  endpointSelector: {matchLabels: {app: echo}}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]\n");
    let denied = probe_until(&lab, "client", &pods, false, CONVERGE);
    assert!(pods.iter().all(|t| denied[t] == false), "the deny rule holds on node1 and node2: {denied}");
}

#[test]
fn the_datapath_rides_out_etcd_faults_and_a_dead_agent_is_withdrawn() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = TestLab::up("etf", &["--nodes", "3", "--datastore", "etcd"]);
    lab.apply_ok(&manifest());
    let echo1 = echo_targets(&lab, &["echo-1"]);
    let v = probe_until(&lab, "guest", &echo1, true, CONVERGE);
    assert!(echo1.iter().all(|t| v[t] == true), "guest reaches echo-1 before any policy: {v}");

    // etcd restarted under a long-lived connection from node0 to node1.
    let (echo1_v4, _) = lab.pod_ips("default", "echo-1");
    let mut hold = spawn_hold(&lab, Some("client"), &target(&echo1_v4, 8080));
    let (tx, lines) = watch(&mut hold);
    let first = lines.recv_timeout(Duration::from_secs(5)).expect("greeting");
    assert!(first.contains("echo-1"), "connected to echo-1: {first}");
    let out = lab.run(&["restart-etcd"]);
    assert!(out.status.success(), "restart-etcd: {}", text(&out));
    drain(&lines);
    let during = collect(&lines, Duration::from_secs(2));
    assert!(during.iter().filter(|l| l.contains("echo")).count() >= 5, "echoes keep flowing across the etcd restart: {during:?}");
    assert!(!during.iter().any(|l| l.contains("closed")), "the connection survived: {during:?}");
    // A policy change made after etcd returned reaches node1.
    lab.apply_ok("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: echo-from-client}\nspec:\n  podSelector: {matchLabels: {app: echo}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]\n");
    let denied = probe_until(&lab, "guest", &echo1, false, CONVERGE);
    assert!(echo1.iter().all(|t| denied[t] == false), "the policy applied after the restart is enforced on node1: {denied}");

    // node1 cut off from etcd (shorter than its lease): it keeps forwarding on what it knows,
    // and converges on a change made meanwhile once the cut ends.
    // Both ways: node1's packets to etcd and etcd's to node1 are dropped.
    for (host, peer) in [("node1", ETCD_V4), ("cp", NODE_V4[1])] {
        let cut = lab.in_node(host, &["ip", "route", "add", "blackhole", &format!("{peer}/32")]);
        assert!(cut.status.success(), "cutting node1 off at {host}: {}", String::from_utf8_lossy(&cut.stderr));
    }
    let out = lab.run(&["delete", "networkpolicy", "echo-from-client"]);
    assert!(out.status.success(), "delete policy: {}", text(&out));
    drain(&lines);
    let cut_off = collect(&lines, Duration::from_secs(2));
    assert!(cut_off.iter().filter(|l| l.contains("echo")).count() >= 5, "node1 keeps forwarding while cut off: {cut_off:?}");
    let still = probe(&lab, "guest", &echo1);
    assert!(echo1.iter().all(|t| still[t] == false), "cut off, node1 cannot have seen the deletion yet: {still}");
    for (host, peer) in [("node1", ETCD_V4), ("cp", NODE_V4[1])] {
        let heal = lab.in_node(host, &["ip", "route", "del", "blackhole", &format!("{peer}/32")]);
        assert!(heal.status.success(), "ending the cut at {host}: {}", String::from_utf8_lossy(&heal.stderr));
    }
    let allowed = probe_until(&lab, "guest", &echo1, true, Duration::from_secs(15));
    assert!(echo1.iter().all(|t| allowed[t] == true), "node1 converges on the deletion once the cut ends: {allowed}");
    drain(&lines);
    let after = collect(&lines, Duration::from_secs(1));
    assert!(!after.iter().any(|l| l.contains("closed")), "the long-lived connection lived through both faults: {after:?}");
    let _ = hold.kill();
    let _ = hold.wait();
    drop(tx);

    // node2's agent killed: the other nodes withdraw it once its lease (5 s) expires.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).expect("lab.json")).expect("lab.json parses");
    let pid = state["nodes"][2]["agentPid"].as_i64().expect("node2's agent pid") as i32;
    let node2_cidr =
        nodes(&lab).iter().find(|n| n["name"] == "node2").map(|n| n["podCIDRs"][0].as_str().unwrap().to_owned()).expect("node2 listed");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill node2's agent");
    let killed = Instant::now();
    let withdrawn = loop {
        let gone = !nodes(&lab).iter().any(|n| n["name"] == "node2") && !agent_routes(&lab, "node0").contains(&node2_cidr);
        if gone || killed.elapsed() > Duration::from_secs(15) {
            break gone;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(withdrawn, "node2 and node0's route to {node2_cidr} withdrawn within the lease plus a margin: {}", agent_routes(&lab, "node0"));
    let out = lab.run(&["restart-agent", "--node", "node2"]);
    assert!(out.status.success(), "restart node2's agent: {}", text(&out));
    let back = probe_until(&lab, "client", &echo_targets(&lab, &["echo-2"]), true, CONVERGE);
    assert!(back.as_object().is_some_and(|m| m.values().all(|v| v == true)), "node2 rejoins with its pod reachable again: {back}");
    let listed = nodes(&lab);
    let again = listed.iter().find(|n| n["name"] == "node2").expect("node2 registered again");
    assert_eq!(again["podCIDRs"][0].as_str(), Some(node2_cidr.as_str()), "node2 keeps its pod CIDR across the restart");
}

#[test]
fn eight_agents_starting_at_once_get_disjoint_pod_cidrs() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = TestLab::up("et8", &["--nodes", "8", "--datastore", "etcd", "--monitor", "off"]);
    let listed = nodes(&lab);
    assert_eq!(listed.len(), 8, "eight nodes registered: {listed:?}");
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in &listed {
        for c in n["podCIDRs"].as_array().expect("podCIDRs") {
            let net: ipnet::IpNet = c.as_str().unwrap().parse().expect("a CIDR");
            if net.addr().is_ipv4() {
                v4.push(net)
            } else {
                v6.push(net)
            }
        }
    }
    assert_eq!((v4.len(), v6.len()), (8, 8), "one subnet per family per node: {listed:?}");
    for family in [&v4, &v6] {
        for (i, a) in family.iter().enumerate() {
            for b in &family[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap: {listed:?}");
            }
        }
    }
    let routes = agent_routes(&lab, "node0");
    assert_eq!(routes.lines().count(), 14, "node0 routes the seven other nodes' subnets, both families: {routes}");
}
