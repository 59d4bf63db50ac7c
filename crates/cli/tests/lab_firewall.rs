//! Privileged lab tests of safe host-routing activation: the audit keeps a node with a user
//! FORWARD rule in legacy mode and names the rule; a clean node activates bpf; rules added
//! afterwards are reported within 2 s; the enforcing guard refuses iptables-legacy installs in
//! its cgroup; events survive an agent restart.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::time::{Duration, Instant};

use common::{privileged, text, TestLab};

fn events(lab: &TestLab) -> Vec<serde_json::Value> {
    let out = lab.run(&["events", "-o", "json"]);
    assert!(out.status.success(), "events: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("an event is JSON")).collect()
}

/// Waits up to `within` for an event with `reason` whose message contains `needle`.
fn wait_event(lab: &TestLab, reason: &str, needle: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = events(lab).into_iter().find(|e| e["reason"] == reason && e["message"].as_str().unwrap_or("").contains(needle)) {
            return e;
        }
        assert!(Instant::now() < deadline, "no {reason} event mentioning {needle:?} within {within:?}: {:#?}", events(lab));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_routing(lab: &TestLab) -> serde_json::Value {
    lab.json(&["status", "-o", "json"])["hostRouting"].clone()
}

fn node_rule(lab: &TestLab, argv: &[&str]) {
    let out = lab.in_node("node0", argv);
    assert!(out.status.success(), "{argv:?}: {}", text(&out));
}

#[test]
fn a_clean_node_activates_bpf_and_says_so() {
    if !privileged("a_clean_node_activates_bpf_and_says_so") {
        return;
    }
    let lab = TestLab::up("fwc", &[]);
    assert_eq!(host_routing(&lab)["mode"], "bpf");
    let pre = lab.run(&["preflight"]);
    assert_eq!(pre.status.code(), Some(0), "a clean node passes preflight: {}", text(&pre));
    wait_event(&lab, "HostRoutingEnabled", "audit clean", Duration::from_secs(1));
}

#[test]
fn a_user_forward_rule_keeps_the_node_in_legacy_and_is_named() {
    if !privileged("a_user_forward_rule_keeps_the_node_in_legacy_and_is_named") {
        return;
    }
    let lab = TestLab::up("fwu", &[]);
    node_rule(&lab, &["iptables", "-w", "-A", "FORWARD", "-s", "198.19.0.0/16", "-j", "DROP"]);
    let pre = lab.run(&["preflight", "-o", "json"]);
    assert_eq!(pre.status.code(), Some(1), "preflight fails when a rule would be bypassed: {}", text(&pre));
    let report: serde_json::Value = serde_json::from_slice(&pre.stdout).expect("preflight JSON");
    assert_eq!(report["report"]["clean"], false);
    let restart = lab.run(&["restart-agent"]);
    assert!(restart.status.success(), "{}", text(&restart));
    let hr = host_routing(&lab);
    assert_eq!(hr["mode"], "legacy", "the agent refuses bpf: {hr}");
    assert!(hr["reason"].as_str().unwrap_or("").contains("-A FORWARD -s 198.19.0.0/16 -j DROP"), "status names the rule: {hr}");
    wait_event(&lab, "HostRoutingRefused", "-A FORWARD -s 198.19.0.0/16 -j DROP", Duration::from_secs(1));
}

#[test]
fn rules_added_after_activation_are_reported_within_two_seconds() {
    if !privileged("rules_added_after_activation_are_reported_within_two_seconds") {
        return;
    }
    let lab = TestLab::up("fwa", &[]);
    assert_eq!(host_routing(&lab)["mode"], "bpf");
    node_rule(&lab, &["iptables", "-w", "-A", "FORWARD", "-d", "198.19.0.0/24", "-j", "DROP"]);
    wait_event(&lab, "BypassedRuleDetected", "-A FORWARD -d 198.19.0.0/24 -j DROP", Duration::from_secs(2));
    node_rule(&lab, &["iptables-legacy", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "198.19.0.0/24", "-j", "MASQUERADE"]);
    wait_event(&lab, "BypassedRuleDetected", "MASQUERADE", Duration::from_secs(2));
    node_rule(&lab, &["nft", "add", "table", "inet", "custom"]);
    node_rule(&lab, &["nft", "add", "chain", "inet", "custom", "filterfwd", "{ type filter hook forward priority 0; }"]);
    node_rule(&lab, &["nft", "add", "rule", "inet", "custom", "filterfwd", "ip", "saddr", "198.19.0.0/24", "drop"]);
    wait_event(&lab, "BypassedRuleDetected", "198.19.0.0/24 drop", Duration::from_secs(2));
}

#[test]
fn the_enforcing_guard_refuses_iptables_legacy_installs_in_its_cgroup() {
    if !privileged("the_enforcing_guard_refuses_iptables_legacy_installs_in_its_cgroup") {
        return;
    }
    let lab = TestLab::up("fwg", &["--guard", "enforce"]);
    wait_event(&lab, "GuardEnabled", "iptables-legacy", Duration::from_secs(1));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(lab.lab_dir().join("lab.json")).unwrap()).unwrap();
    let node_cgroup = std::path::PathBuf::from(state["nodes"][0]["cgroup"].as_str().expect("node cgroup"));
    let scope = node_cgroup.join("guard-test");
    std::fs::create_dir_all(&scope).expect("a cgroup inside the guarded scope");
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            for _ in 0..50 {
                if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let _remove = Remove(scope.clone());
    let script = format!(
        "echo 0 > {}/cgroup.procs && exec ip netns exec {} iptables-legacy -w -A FORWARD -s 198.19.0.0/16 -j DROP",
        scope.display(),
        lab.node_netns("node0")
    );
    let out = std::process::Command::new("sh").args(["-c", &script]).output().expect("sh");
    assert!(!out.status.success(), "the install must be refused inside the guarded cgroup: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not permitted"), "iptables says why: {}", text(&out));
    let saved = lab.in_node("node0", &["iptables-legacy-save"]);
    assert!(!String::from_utf8_lossy(&saved.stdout).contains("198.19.0.0/16"), "no rule was installed");
    wait_event(&lab, "GuardBlocked", "iptables-legacy", Duration::from_secs(2));
    // Outside the guarded scope the same tool works (the guard is scoped, not global).
    let outside = lab.in_node("node0", &["iptables-legacy", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"]);
    assert!(outside.status.success(), "outside the guarded cgroup installs work: {}", text(&outside));
}

#[test]
fn events_survive_an_agent_restart() {
    if !privileged("events_survive_an_agent_restart") {
        return;
    }
    let lab = TestLab::up("fwe", &[]);
    let before = events(&lab);
    assert!(before.iter().any(|e| e["reason"] == "AgentStarted"), "{before:#?}");
    let restart = lab.run(&["restart-agent"]);
    assert!(restart.status.success(), "{}", text(&restart));
    let after = events(&lab);
    assert!(after.len() > before.len(), "the new agent adds to the history");
    assert_eq!(&after[..before.len()], &before[..], "the earlier events are still there, unchanged");
    assert_eq!(after.iter().filter(|e| e["reason"] == "AgentStarted").count(), 2, "one AgentStarted per start");
    let e = &after[0];
    assert_eq!(e["kind"], "Event", "Kubernetes Event shape: {e}");
    assert_eq!(e["involvedObject"]["kind"], "Node");
    assert_eq!(e["source"]["component"], "sluice-agent");
}
