//! Privileged lab tests: pods talk over TCP and UDP, IPv4 and IPv6; the Kubernetes-shaped
//! views (get -o json, endpoint list) say what is true; exec passes stdio and exit codes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::{privileged, text, TestLab, TWO_PODS};

fn iperf(lab: &TestLab, target: &str, udp: bool) -> serde_json::Value {
    let mut argv = vec!["iperf3", "-c", target, "-t", "1", "-J"];
    if udp {
        argv.extend(["-u", "-b", "20M"]);
    }
    let out = lab.exec_until_ok("demo", "client", &argv, Duration::from_secs(10));
    assert!(out.status.success(), "iperf3 to {target} (udp: {udp}) failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

#[test]
fn pods_talk_tcp_and_udp_over_ipv4_and_ipv6() {
    if !privileged("pods_talk_tcp_and_udp_over_ipv4_and_ipv6") {
        return;
    }
    let lab = TestLab::up("conn", &[]);
    lab.apply_ok(TWO_PODS);
    let (v4, v6) = lab.pod_ips("demo", "server");
    for target in [&v4, &v6] {
        let tcp = iperf(&lab, target, false);
        let bytes = tcp["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(bytes > 1e6, "TCP to {target}: expected megabytes received, got {bytes}");
        let udp = iperf(&lab, target, true);
        let packets = udp["end"]["sum"]["packets"].as_f64().unwrap_or(0.0);
        let lost = udp["end"]["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
        assert!(packets > 100.0, "UDP to {target}: expected packets, got {packets}");
        assert!(lost < 5.0, "UDP to {target}: {lost}% lost");
    }
    for target in [&v4, &v6] {
        let out = lab.exec("demo", "client", &["ping", "-c", "2", "-W", "1", target]);
        assert!(out.status.success(), "ping {target}: {}", text(&out));
    }
}

#[test]
fn get_pods_json_is_a_pod_list_with_dual_stack_addresses() {
    if !privileged("get_pods_json_is_a_pod_list_with_dual_stack_addresses") {
        return;
    }
    let lab = TestLab::up("json", &[]);
    lab.apply_ok(TWO_PODS);
    let list = lab.json(&["get", "pods", "-n", "demo", "-o", "json"]);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "two pods: {list}");
    for pod in items {
        assert_eq!(pod["status"]["phase"], "Running", "{pod}");
        assert_eq!(pod["spec"]["nodeName"], "node0", "{pod}");
        let ips = pod["status"]["podIPs"].as_array().expect("podIPs");
        assert_eq!(ips.len(), 2, "an IPv4 and an IPv6 address: {pod}");
        assert_eq!(pod["status"]["podIP"], ips[0]["ip"]);
    }
    let all = lab.json(&["get", "pods", "-A", "-o", "json"]);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    let endpoints = endpoints.as_array().expect("endpoint array");
    assert_eq!(endpoints.len(), 2);
    let (v4, _) = lab.pod_ips("demo", "server");
    let server = endpoints.iter().find(|e| e["podName"] == "server").expect("server endpoint");
    assert_eq!(server["ipv4"], v4.as_str(), "endpoint and pod agree on the address");
    assert!(server["identity"].as_u64().unwrap_or(0) >= 256, "a dynamic identity: {server}");
    assert!(server["hostIfname"].as_str().unwrap_or("").starts_with("lxc"));
    let status = lab.json(&["status", "-o", "json"]);
    assert_eq!(status["endpointCount"], 2);
    use std::os::unix::fs::PermissionsExt;
    let socket = lab.lab_dir().join("nodes/node0/agent.sock");
    let mode = std::fs::metadata(&socket).expect("agent socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the agent socket is root-only");
    assert_eq!(status["hostRouting"]["mode"], "bpf");
    let from_pod = status["programs"].as_array().expect("programs").iter().find(|p| p["program"] == "from_pod").cloned().expect("from_pod");
    assert_eq!(from_pod["count"], 2, "from_pod attached on both pods");
}

#[test]
fn exec_passes_stdio_and_exit_code_and_runs_in_the_pod() {
    if !privileged("exec_passes_stdio_and_exit_code_and_runs_in_the_pod") {
        return;
    }
    let lab = TestLab::up("exec", &[]);
    lab.apply_ok(TWO_PODS);
    let out = lab.exec("demo", "client", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "exit code passes through: {}", text(&out));
    let mut child =
        lab.cmd(&["exec", "client", "-n", "demo", "--", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(b"hello pod\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello pod\n", "stdin and stdout pass through");
    let (v4, _) = lab.pod_ips("demo", "client");
    let out = lab.exec("demo", "client", &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&v4), "exec runs in the pod's netns: {}", text(&out));
    let missing = lab.exec("demo", "nosuch", &["true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nosuch"), "error names the pod: {}", text(&missing));
}

#[test]
fn delete_pod_releases_its_endpoint_and_address() {
    if !privileged("delete_pod_releases_its_endpoint_and_address") {
        return;
    }
    let lab = TestLab::up("del", &[]);
    lab.apply_ok(TWO_PODS);
    let out = lab.run(&["delete", "pod", "client", "-n", "demo"]);
    assert!(out.status.success(), "{}", text(&out));
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "one endpoint left: {endpoints}");
    let pods = lab.json(&["get", "pods", "-n", "demo", "-o", "json"]);
    assert_eq!(pods["items"].as_array().map(Vec::len), Some(1));
    let again = lab.run(&["delete", "pod", "client", "-n", "demo"]);
    assert!(!again.status.success(), "deleting a missing pod by name is an error");
    let out = lab.run(&["delete", "-f", "/dev/null"]);
    assert!(out.status.success(), "deleting an empty manifest is fine: {}", text(&out));
}
