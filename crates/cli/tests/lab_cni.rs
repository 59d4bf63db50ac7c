//! Privileged lab tests of the CNI contract through the real `sluice-cni` binary, called as a
//! runtime calls it (in the node's namespace, CNI_* variables, configuration on stdin) against a
//! lab node's agent and a pod the lab made.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{privileged, sluice_bin, text, TestLab, TWO_PODS};
use serde_json::Value;

/// The lab's record of a pod: its container ID and namespace, and its node's namespace and socket.
struct PodRecord {
    container_id: String,
    netns: String,
    netns_path: String,
    node_netns: String,
    socket: String,
}

fn pod_record(lab: &TestLab, key: &str) -> PodRecord {
    let state: Value = serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).expect("lab.json")).expect("lab state");
    let pod = &state["pods"][key];
    let node = state["nodes"].as_array().expect("nodes").iter().find(|n| n["name"] == pod["node"]).expect("the pod's node");
    let field = |v: &Value, name: &str| v[name].as_str().unwrap_or_else(|| panic!("{name} in {v}")).to_owned();
    PodRecord {
        container_id: field(pod, "containerId"),
        netns: field(pod, "netns"),
        netns_path: field(pod, "netnsPath"),
        node_netns: field(node, "netns"),
        socket: field(node, "socket"),
    }
}

/// Runs `sluice-cni` (beside `sluice`) in the pod's node namespace, as the lab's runtime does.
fn cni(pod: &PodRecord, command: &str, pod_name: &str) -> Output {
    let plugin = sluice_bin().with_file_name("sluice-cni");
    let config = serde_json::json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": pod.socket, "mtu": 1500});
    let mut child = Command::new("ip")
        .args(["netns", "exec", &pod.node_netns])
        .arg(&plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().expect("plugin directory"))
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod_name}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice-cni");
    child.stdin.take().expect("stdin").write_all(config.to_string().as_bytes()).expect("write the configuration");
    child.wait_with_output().expect("wait for sluice-cni")
}

/// The pod's eth0 as the kernel has it: (MAC, ifindex, addresses other than link-local).
fn pod_interface(pod: &PodRecord) -> (String, u64, Vec<String>) {
    let out = Command::new("ip").args(["-n", &pod.netns, "-j", "addr", "show", "dev", "eth0"]).output().expect("ip addr");
    assert!(out.status.success(), "ip addr in the pod: {}", text(&out));
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
    let link = &links[0];
    let mut addresses: Vec<String> = link["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().expect("local"), a["prefixlen"]))
        .collect();
    addresses.sort();
    (link["address"].as_str().expect("MAC").to_owned(), link["ifindex"].as_u64().expect("ifindex"), addresses)
}

fn endpoint_of(lab: &TestLab, container_id: &str) -> Value {
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    let found =
        endpoints.as_array().expect("endpoint list").iter().filter(|e| e["containerId"] == container_id).cloned().collect::<Vec<_>>();
    assert_eq!(found.len(), 1, "one endpoint for {container_id}: {endpoints}");
    found[0].clone()
}

#[test]
fn a_repeated_add_is_refused_and_the_pod_keeps_its_interface() {
    if !privileged("a_repeated_add_is_refused_and_the_pod_keeps_its_interface") {
        return;
    }
    let lab = TestLab::up("radd", &[]);
    lab.apply_ok(TWO_PODS);
    let (server_v4, server_v6) = lab.pod_ips("demo", "server");
    let (client_v4, client_v6) = lab.pod_ips("demo", "client");
    let client = pod_record(&lab, "demo/client");
    let (mac, ifindex, addresses) = pod_interface(&client);
    let mut want = vec![format!("{client_v4}/32"), format!("{client_v6}/128")];
    want.sort();
    assert_eq!(addresses, want, "the pod's eth0 has the addresses the lab recorded");
    let endpoint = endpoint_of(&lab, &client.container_id);
    assert_eq!(endpoint["mac"], mac.as_str(), "the agent's record has the pod's MAC");

    let again = cni(&client, "ADD", "client");
    assert_eq!(again.status.code(), Some(1), "the second ADD fails: {}", text(&again));
    let error: Value =
        serde_json::from_slice(&again.stdout).unwrap_or_else(|e| panic!("an error object on stdout ({e}): {}", text(&again)));
    assert_eq!(error["cniVersion"], "1.1.0", "the error is in the configuration's version: {error}");
    assert_eq!(error["code"], 100, "the error's code says the attachment exists: {error}");
    assert!(error["msg"].as_str().unwrap_or("").contains("exists"), "the message says the attachment exists: {error}");

    assert_eq!(pod_interface(&client), (mac, ifindex, addresses), "the pod's eth0 is the same interface: MAC, ifindex, addresses");
    assert_eq!(endpoint_of(&lab, &client.container_id), endpoint, "the agent's record is unchanged");
    let check = cni(&client, "CHECK", "client");
    assert!(check.status.success(), "CHECK finds the attachment as programmed: {}", text(&check));
    for target in [&server_v4, &server_v6] {
        let out = lab.exec("demo", "client", &["ping", "-c", "2", "-W", "2", target]);
        assert!(out.status.success(), "the pod still reaches its peer {target}: {}", text(&out));
    }
}
