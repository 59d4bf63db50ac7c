//! Services in the lab, end to end: real pods serving TCP and UDP on two nodes, a client pod,
//! and the lab's external client on the underlay. ClusterIPs over IPv4 and IPv6 reach every
//! backend and getpeername shows the service address; NodePort and external IPs from outside
//! (SNAT to another node, client source kept under externalTrafficPolicy Local); session
//! affinity; a service without backends refuses at once; a removed backend gets no new
//! connections and its established ones are closed; an agent restart keeps NodePort flows.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{collect, drain, privileged, sluice_bin, spawn_hold, text, watch, TestLab};

fn manifest() -> String {
    let bin = sluice_bin();
    let bin = bin.display();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web-1, labels: {{app: web}}}}
spec:
  nodeName: node0
  containers: [{{name: s, command: [{bin}, svc-server, --name, web-1], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-2, labels: {{app: web}}}}
spec:
  nodeName: node1
  containers: [{{name: s, command: [{bin}, svc-server, --name, web-2], ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: node1
  containers: [{{name: c, command: [sleep, infinity]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http, nodePort: 30080}}
  - {{name: dns, port: 80, targetPort: 8080, protocol: UDP, nodePort: 30053}}
---
apiVersion: v1
kind: Service
metadata: {{name: sticky}}
spec:
  selector: {{app: web}}
  sessionAffinity: ClientIP
  ports: [{{port: 81, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  selector: {{app: nobody}}
  ipFamilyPolicy: RequireDualStack
  ports: [{{port: 82, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: local}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  externalIPs: [198.51.100.7]
  selector: {{app: web}}
  ports: [{{port: 83, targetPort: 8080, nodePort: 30083}}]
"#
    )
}

/// `sluice svc-client` in a pod (or the external client when `pod` is None).
fn probe(lab: &TestLab, pod: Option<&str>, target: &str, udp: bool) -> serde_json::Value {
    let bin = sluice_bin();
    let bin = bin.to_str().unwrap();
    let mut argv = vec![bin, "svc-client", target];
    if udp {
        argv.push("--udp");
    }
    let out = match pod {
        Some(p) => lab.exec("default", p, &argv),
        None => lab.run(&[&["exec", "--external", "--"], argv.as_slice()].concat()),
    };
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("svc-client output is JSON ({e}): {}", text(&out)))
}

/// The backend name and the client address it saw, from a reply "web-1 198.19.1.3:4000".
fn replied(v: &serde_json::Value) -> (String, String) {
    let reply = v["reply"].as_str().unwrap_or_else(|| panic!("a reply expected, got {v}"));
    let (name, peer) = reply.split_once(' ').expect("name and peer");
    (name.to_string(), peer.rsplit_once(':').map(|(a, _)| a.trim_matches(['[', ']']).to_string()).unwrap_or_default())
}

/// Until every service is programmed on both nodes and the servers answer: the ClusterIP from
/// the client pod (node1) and the NodePort of each node, both families, from the external
/// client. Each agent programs on its own round, so one node answering says nothing of the other.
fn ready(lab: &TestLab, cluster_ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let paths = [
        (Some("client"), format!("{cluster_ip}:80")),
        (None, target("198.18.0.10", 30080)),
        (None, target("198.18.0.11", 30080)),
        (None, target("2001:2:0:ff::a", 30080)),
        (None, target("2001:2:0:ff::b", 30080)),
    ];
    for (pod, to) in &paths {
        loop {
            let v = probe(lab, *pod, to, false);
            if v["reply"].is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "{to} never answered: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn cluster_ips(lab: &TestLab, name: &str) -> Vec<String> {
    let svc = lab.json(&["get", "services", name, "-o", "json"]);
    let svc = if svc["items"].is_array() { svc["items"][0].clone() } else { svc };
    svc["spec"]["clusterIPs"].as_array().expect("clusterIPs").iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn target(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn setup(tag: &str) -> TestLab {
    let lab = TestLab::up(tag, &["--nodes", "2"]);
    lab.apply_ok(&manifest());
    ready(&lab, &cluster_ips(&lab, "web")[0]);
    lab
}

#[test]
fn cluster_ips_reach_every_backend_and_show_the_service_address() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = setup("svc");
    for ip in cluster_ips(&lab, "web") {
        for udp in [false, true] {
            let mut names = BTreeSet::new();
            for _ in 0..24 {
                let v = probe(&lab, Some("client"), &target(&ip, 80), udp);
                assert_eq!(
                    v["peer"].as_str(),
                    Some(target(&ip, 80).as_str()),
                    "{ip} udp={udp}: the socket API shows the service address: {v}"
                );
                names.insert(replied(&v).0);
            }
            assert_eq!(
                names,
                BTreeSet::from(["web-1".to_string(), "web-2".to_string()]),
                "{ip} udp={udp}: both backends (one per node) answer"
            );
        }
    }

    // As programmed in the datapath.
    let list = lab.json(&["service", "list", "--node", "node1", "-o", "json"]);
    let web: Vec<&serde_json::Value> =
        list.as_array().unwrap().iter().filter(|f| f["service"] == "default/web" && f["kind"] == "ClusterIP").collect();
    assert_eq!(web.len(), 4, "ClusterIP frontends of web: TCP and UDP, IPv4 and IPv6: {list}");
    assert!(web.iter().all(|f| f["backends"].as_array().unwrap().len() == 2), "each with two backends: {list}");

    // Session affinity: one client keeps its backend.
    let sticky = cluster_ips(&lab, "sticky")[0].clone();
    let names: BTreeSet<String> = (0..8).map(|_| replied(&probe(&lab, Some("client"), &target(&sticky, 81), false)).0).collect();
    assert_eq!(names.len(), 1, "sessionAffinity ClientIP keeps one backend: {names:?}");

    // No backends: refused at once, from a pod (socket LB) and from outside (tc, ICMP).
    for ip in cluster_ips(&lab, "empty") {
        let v = probe(&lab, Some("client"), &target(&ip, 82), false);
        assert_eq!(v["error"], "refused", "{ip}: a service without backends refuses: {v}");
        assert!(v["millis"].as_u64().unwrap() < 500, "{ip}: refused fast, not after a timeout: {v}");
    }
    let v = probe(&lab, None, &target(&cluster_ips(&lab, "empty")[0], 82), false);
    assert_eq!(v["error"], "refused", "from outside, the datapath answers ICMP port unreachable: {v}");
}

#[test]
fn nodeport_and_external_ips_from_outside_the_cluster() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = setup("svn");
    let ext4 = "198.18.0.250";
    // NodePort on node0 over both families: the local backend sees the client, the remote one
    // (on node1) sees node0 (SNAT), and both answer.
    for (node, ext) in [("198.18.0.10", ext4), ("2001:2:0:ff::a", "2001:2:0:ff::fa")] {
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let v = probe(&lab, None, &target(node, 30080), false);
            let (name, source) = replied(&v);
            let expected = if name == "web-1" { ext } else { node };
            assert_eq!(source, expected, "{node}: {name} sees {source} (local backend: the client; remote: the node, SNAT)");
            seen.insert(name);
        }
        assert_eq!(seen.len(), 2, "{node}: NodePort reaches both backends");
    }
    let v = probe(&lab, None, &target("198.18.0.11", 30053), true);
    assert!(v["reply"].is_string(), "UDP NodePort on node1 answers: {v}");

    // externalTrafficPolicy Local: each node sends to its own backend and keeps the client.
    for (node, backend) in [("198.18.0.10", "web-1"), ("198.18.0.11", "web-2")] {
        for _ in 0..4 {
            let (name, source) = replied(&probe(&lab, None, &target(node, 30083), false));
            assert_eq!(
                (name.as_str(), source.as_str()),
                (backend, ext4),
                "{node}:30083 (Local) goes to the node's own backend and keeps the client source"
            );
        }
    }
    let (name, source) = replied(&probe(&lab, None, "198.51.100.7:83", false));
    assert_eq!(
        (name.as_str(), source.as_str()),
        ("web-1", ext4),
        "the external IP (routed via node0) reaches node0's backend with the client source kept"
    );

    // An established NodePort connection survives an agent restart on the node that translates it.
    let mut hold = spawn_hold(&lab, None, &target("198.18.0.10", 30080));
    let (tx, lines) = watch(&mut hold);
    let first = lines.recv_timeout(Duration::from_secs(5)).expect("greeting");
    assert!(first.contains("reply"), "connected: {first}");
    let out = lab.run(&["restart-agent", "--node", "node0"]);
    assert!(out.status.success(), "restart: {}", text(&out));
    drain(&lines);
    let after = collect(&lines, Duration::from_secs(2));
    assert!(after.iter().filter(|l| l.contains("echo")).count() >= 3, "echoes keep flowing after the restart: {after:?}");
    assert!(!after.iter().any(|l| l.contains("closed")), "the connection was not broken: {after:?}");
    let _ = hold.kill();
    let _ = hold.wait();
    drop(tx);
}

#[test]
fn a_removed_backend_gets_no_new_connections_and_its_connections_close() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = setup("svr");
    let ip = cluster_ips(&lab, "web")[0].clone();
    // Hold connections until one lands on web-2 (random selection).
    let mut held = None;
    for _ in 0..20 {
        let mut child = spawn_hold(&lab, Some("client"), &target(&ip, 80));
        let (tx, lines) = watch(&mut child);
        let first = lines.recv_timeout(Duration::from_secs(5)).expect("greeting");
        if first.contains("web-2") {
            held = Some((child, tx, lines));
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut child, _tx, lines) = held.expect("a connection to web-2 within 20 tries");
    let out = lab.run(&["delete", "pod", "web-2"]);
    assert!(out.status.success(), "delete: {}", text(&out));
    let deleted = Instant::now();
    let closed = loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("closed") => break Some(l),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) if deleted.elapsed() < Duration::from_secs(5) => continue,
            _ => break None,
        }
    };
    let closed = closed.expect("the connection to the removed backend is closed within 5 s, not left hanging");
    assert!(deleted.elapsed() < Duration::from_secs(3), "closed {:?} after the delete: {closed}", deleted.elapsed());
    let _ = child.wait();

    for _ in 0..12 {
        let v = probe(&lab, Some("client"), &target(&ip, 80), false);
        assert_eq!(replied(&v).0, "web-1", "only the remaining backend gets new connections: {v}");
    }
}

#[test]
fn xdp_carries_established_nodeport_flows_to_other_nodes() {
    if !privileged(module_path!()) {
        return;
    }
    let lab = TestLab::up("svx", &["--nodes", "2", "--xdp", "auto"]);
    lab.apply_ok(&manifest());
    ready(&lab, &cluster_ips(&lab, "web")[0]);
    let status = lab.json(&["status", "--node", "node0", "-o", "json"]);
    let attach = status["programs"].as_array().unwrap().iter().find(|p| p["program"] == "xdp_netdev").map(|p| p["attach"].clone());
    assert_eq!(attach, Some(serde_json::json!("xdp/generic")), "auto takes generic XDP on the veth uplink: {status}");
    for node in ["198.18.0.10", "2001:2:0:ff::a"] {
        let mut seen = BTreeSet::new();
        for _ in 0..16 {
            seen.insert(replied(&probe(&lab, None, &target(node, 30080), false)).0);
        }
        assert_eq!(seen.len(), 2, "{node}: NodePort reaches both backends with XDP on");
    }
    let status = lab.json(&["status", "--node", "node0", "-o", "json"]);
    let forwarded = status["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["reason"] == "xdp forward")
        .and_then(|f| f["packets"].as_u64())
        .unwrap_or(0);
    assert!(forwarded > 0, "packets of SNAT'd flows to node1 were forwarded from XDP: {status}");
}
