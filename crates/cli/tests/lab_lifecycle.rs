//! Privileged lab tests of the lab's own contract: invalid manifests are rejected whole with
//! errors that name the file, document and field; `sluice down` leaves nothing behind.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::path::Path;

use common::{privileged, text, TestLab, TWO_PODS};

#[test]
fn invalid_manifests_are_rejected_whole_and_name_what_is_wrong() {
    if !privileged("invalid_manifests_are_rejected_whole_and_name_what_is_wrong") {
        return;
    }
    let lab = TestLab::up("bad", &[]);
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: fresh\n---\n";
    let pod = |labels: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: fresh\n  labels: {labels}\n{extra}spec:\n  containers:\n  - name: c\n")
    };
    let cases = [
        (format!("{ns}{}", pod("{\"-bad\": x}", "")), vec!["document 2", "metadata.labels"]),
        (format!("{ns}apiVersion: v1\nkind: Gadget\nmetadata:\n  name: g\n"), vec!["document 2", "Gadget"]),
        (
            format!("{ns}apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: fresh\nspec:\n  containers:\n  - name: c\n"),
            vec!["document 2", "metadata.name"],
        ),
        (format!("{ns}apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n"), vec!["document 2"]),
        (pod("{app: x}", "").replace("namespace: fresh", "namespace: nowhere"), vec!["document 1", "namespace", "nowhere"]),
        (
            format!("{ns}{}", pod("{app: x}", "").replace("  containers:", "  nodeName: node9\n  containers:")),
            vec!["document 2", "nodeName", "node9"],
        ),
    ];
    for (yaml, expected) in cases {
        let out = lab.apply(&yaml);
        assert!(!out.status.success(), "apply of an invalid manifest must fail:\n{yaml}");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains(".yaml"), "error names the file: {err}");
        for word in expected {
            assert!(err.contains(word), "error for\n{yaml}\nmust mention {word:?}: {err}");
        }
        let namespaces = lab.json(&["get", "namespaces", "-o", "json"]);
        let names: Vec<&str> =
            namespaces["items"].as_array().expect("items").iter().filter_map(|n| n["metadata"]["name"].as_str()).collect();
        assert!(!names.contains(&"fresh"), "nothing of a rejected manifest is applied, yet found {names:?}");
        let pods = lab.json(&["get", "pods", "-A", "-o", "json"]);
        assert_eq!(pods["items"].as_array().map(Vec::len), Some(0), "no pod applied");
    }
}

#[test]
fn down_leaves_nothing_behind() {
    if !privileged("down_leaves_nothing_behind") {
        return;
    }
    let lab = TestLab::up("down", &[]);
    lab.apply_ok(TWO_PODS);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).expect("lab.json")).expect("lab state");
    let out = lab.run(&["down"]);
    assert!(out.status.success(), "down: {}", text(&out));

    assert!(!lab.lab_dir().exists(), "lab directory removed");
    let mut netns: Vec<String> =
        state["nodes"].as_array().expect("nodes").iter().map(|n| n["netns"].as_str().expect("netns").to_owned()).collect();
    netns.extend(state["pods"].as_object().expect("pods").values().map(|p| p["netns"].as_str().expect("netns").to_owned()));
    assert_eq!(netns.len(), 3, "one node and two pods were recorded");
    for ns in &netns {
        assert!(!Path::new("/run/netns").join(ns).exists(), "netns {ns} removed");
    }
    let mut links = vec![state["bridge"].as_str().expect("bridge").to_owned()];
    links.extend(state["nodes"].as_array().expect("nodes").iter().map(|n| n["uplinkRootSide"].as_str().expect("uplink").to_owned()));
    for link in &links {
        assert!(!Path::new("/sys/class/net").join(link).exists(), "link {link} removed");
    }
    let cgroup = state["cgroup"].as_str().expect("cgroup");
    assert!(!Path::new(cgroup).exists(), "cgroup {cgroup} removed");
    let mut pids: Vec<i64> = state["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["agentPid"].as_i64()).collect();
    pids.extend(state["pods"].as_object().expect("pods").values().filter_map(|p| p["shimPid"].as_i64()));
    assert_eq!(pids.len(), 3, "an agent and two shims were recorded");
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = stat.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')).unwrap_or(false);
        assert!(!running, "process {pid} stopped");
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(!mounts.contains(lab.lab_dir().to_str().expect("utf-8")), "no bpffs (pinned maps and links) left mounted");
    let again = lab.run(&["status"]);
    assert!(!again.status.success(), "a removed lab answers no status");
}
