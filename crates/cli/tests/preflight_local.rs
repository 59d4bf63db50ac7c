//! Privileged tests of `sluice preflight --local`: the audit before installing, with no agent
//! anywhere, of the network namespace the command runs in (a fresh one per test).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::process::{Command, Output, Stdio};

use common::{privileged, sluice_bin, text};
use serde_json::Value;

/// A network namespace of the test's own, removed when dropped (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("sluice-t{tag}-{}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("ip netns add");
        assert!(out.status.success(), "creating netns {name}: {}", text(&out));
        Netns(name)
    }

    /// Runs `argv` inside the namespace with no lab and no agent socket in the environment.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .env_remove("SLUICE_LAB")
            .env_remove("SLUICE_SOCKET")
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    fn preflight(&self, args: &[&str]) -> Output {
        let bin = sluice_bin();
        self.run(&[&[bin.to_str().expect("utf-8 path"), "preflight"], args].concat())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "del", &self.0]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("could not remove netns {}", self.0);
        }
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("preflight printed invalid JSON ({e}): {}", text(out)))
}

const RULE: &str = "-A FORWARD -s 198.19.0.0/16 -j DROP";

#[test]
fn preflight_local_audits_this_namespace_without_an_agent() {
    if !privileged("preflight_local_audits_this_namespace_without_an_agent") {
        return;
    }
    let ns = Netns::new("pre");
    let flags = ["--local", "--pod-cidr", "198.19.0.0/24", "--pod-cidr", "2001:2::/64", "--device", "eth0", "-o", "json"];

    let clean = ns.preflight(&flags);
    assert_eq!(clean.status.code(), Some(0), "a namespace without rules is clean: {}", text(&clean));
    let report = json(&clean);
    assert_eq!(report["hostRouting"], "none", "no agent, no host routing in force: {report}");
    assert_eq!(report["report"]["clean"], true, "clean report: {report}");
    assert_eq!(report["report"]["counts"]["bypassed"], 0, "nothing bypassed: {report}");

    let add = ns.run(&["iptables", "-w", "-A", "FORWARD", "-s", "198.19.0.0/16", "-j", "DROP"]);
    assert!(add.status.success(), "adding a FORWARD rule in the test namespace: {}", text(&add));
    let dirty = ns.preflight(&flags);
    assert_eq!(dirty.status.code(), Some(1), "a rule pod traffic would skip fails the audit: {}", text(&dirty));
    let report = json(&dirty);
    assert_eq!(report["report"]["clean"], false, "not clean: {report}");
    let bypassed: Vec<&Value> =
        report["report"]["verdicts"].as_array().expect("verdicts").iter().filter(|v| v["class"] == "bypassed").collect();
    assert_eq!(bypassed.len(), 1, "exactly the added rule is bypassed: {report}");
    assert_eq!(bypassed[0]["rule"]["text"], RULE, "the bypassed rule is named: {report}");

    // The pod CIDRs decide: for a node whose pods are elsewhere the rule does not matter.
    let elsewhere = ns.preflight(&["--local", "--pod-cidr", "10.1.0.0/24", "-o", "json"]);
    assert_eq!(elsewhere.status.code(), Some(0), "the rule does not touch pods of 10.1.0.0/24: {}", text(&elsewhere));

    // The text form names the rule and says no agent was asked.
    let table = ns.preflight(&["--local", "--pod-cidr", "198.19.0.0/24"]);
    assert_eq!(table.status.code(), Some(1), "same verdict in text form: {}", text(&table));
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(stdout.contains("without an agent"), "the header says no agent was asked: {stdout}");
    assert!(stdout.contains(RULE), "the table names the rule: {stdout}");
}

#[test]
fn preflight_local_takes_the_node_from_an_agent_configuration() {
    if !privileged("preflight_local_takes_the_node_from_an_agent_configuration") {
        return;
    }
    let ns = Netns::new("prc");
    // Between addresses of 198.19.0.0/16 only: it matters to a node whose pods are there.
    let add = ns.run(&["iptables", "-w", "-A", "FORWARD", "-s", "198.19.0.0/16", "-d", "198.19.0.0/16", "-j", "DROP"]);
    assert!(add.status.success(), "adding a FORWARD rule in the test namespace: {}", text(&add));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.yaml");
    let yaml = format!(
        "nodeName: pre-node\npodCIDRs: [198.19.0.0/24]\ndevices: [eth0]\nstateDir: {0}/state\nsocket: {0}/agent.sock\nbpffs: {0}/bpffs\n",
        dir.path().display()
    );
    std::fs::write(&config, yaml).expect("write agent.yaml");
    let config = config.to_str().expect("utf-8 path");

    let out = ns.preflight(&["--local", "--config", config, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "the configuration's pod CIDR meets the rule: {}", text(&out));
    let report = json(&out);
    assert_eq!(report["node"], "pre-node", "the node is the configuration's: {report}");
    assert_eq!(report["report"]["counts"]["bypassed"], 1, "the rule is bypassed: {report}");

    // Flags win over the configuration.
    let out = ns.preflight(&["--local", "--config", config, "--pod-cidr", "10.1.0.0/24", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "--pod-cidr replaces the configuration's CIDRs: {}", text(&out));

    // Without pod CIDRs the audit would call everything harmless: refused, and says why.
    let out = ns.preflight(&["--local"]);
    assert!(!out.status.success(), "--local without pod CIDRs fails: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "no report is printed: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pod-cidr"), "the error says what to give: {}", text(&out));

    // Without --local and without an agent, the error points to --local.
    let socket = dir.path().join("nothing.sock");
    let out = ns.preflight(&["--socket", socket.to_str().expect("utf-8 path")]);
    assert!(!out.status.success(), "no agent answers: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("preflight --local"), "the error points to --local: {}", text(&out));
}
