//! The pod's network namespace reaches the agent as an open descriptor, not as a path: a
//! runtime whose namespaces live in a mount namespace of its own (as the agent in a DaemonSet
//! pod sees another `/run/netns` than containerd) still gets its pods attached. The test plays
//! such a runtime: a private mount namespace with a tmpfs the agent cannot see, the pod's
//! network namespace bound to a file on it, and the real `sluice-cni` called from there.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::process::Command;

use common::{privileged, sluice_bin, text, TestLab};
use sluice_lab::state::LabState;

#[test]
fn a_namespace_only_the_runtime_can_see_is_attached_checked_and_deleted() {
    if !privileged("a_namespace_only_the_runtime_can_see_is_attached_checked_and_deleted") {
        return;
    }
    let lab = TestLab::up("nsfd", &[]);
    let state = LabState::load(&lab.lab_dir()).unwrap().unwrap();
    let node = state.node("node0").unwrap().clone();
    let plugin = sluice_bin().with_file_name("sluice-cni");
    let dir = tempfile::tempdir().unwrap();
    let hidden = dir.path().join("netns");
    std::fs::create_dir(&hidden).unwrap();
    let config =
        serde_json::json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": node.socket, "mtu": 1500});
    let cid = format!("{}-hidden-ns", lab.name);

    // Everything below runs in the runtime's own mount namespace; when the script ends, its
    // tmpfs, the namespace's binding and with it the namespace go away.
    let script = r#"
set -u
mount -t tmpfs tmpfs "$HIDDEN"
touch "$HIDDEN/pod"
unshare --net="$HIDDEN/pod" true
call() {
    printf '%s' "$CONFIG" | ip netns exec "$NODE_NETNS" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        CNI_COMMAND="$1" CNI_CONTAINERID="$CID" CNI_NETNS="$HIDDEN/pod" CNI_IFNAME=eth0 CNI_PATH="$(dirname "$PLUGIN")" "$PLUGIN"
}
echo "ADD>>"; call ADD; echo "<<ADD $?"
echo "ADDR>>"; nsenter --net="$HIDDEN/pod" ip -o addr show dev eth0 scope global; echo "<<ADDR"
echo "CHECK>>"; call CHECK; echo "<<CHECK $?"
echo "DEL>>"; call DEL; echo "<<DEL $?"
echo "LINKS>>"; nsenter --net="$HIDDEN/pod" ip -o link show; echo "<<LINKS"
"#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("HIDDEN", &hidden)
        .env("CONFIG", config.to_string())
        .env("NODE_NETNS", &node.netns)
        .env("CID", &cid)
        .env("PLUGIN", &plugin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let section = |name: &str| -> String {
        let start = stdout.find(&format!("{name}>>\n")).unwrap_or_else(|| panic!("no {name} section: {}", text(&out)));
        let rest = &stdout[start + name.len() + 3..];
        rest[..rest.find(&format!("<<{name}")).unwrap()].to_string()
    };
    assert!(stdout.contains("<<ADD 0"), "ADD succeeds although the agent cannot see {}: {}", hidden.display(), text(&out));
    let added: serde_json::Value = serde_json::from_str(section("ADD").trim()).unwrap();
    let ip = added["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert!(section("ADDR").contains(&format!("inet {ip}/")), "eth0 in the hidden namespace has {ip}: {}", text(&out));
    assert_eq!(added["interfaces"][1]["sandbox"], hidden.join("pod").to_str().unwrap(), "the result names the runtime's path");
    assert!(stdout.contains("<<CHECK 0"), "CHECK succeeds through the descriptor too: {}", text(&out));
    assert!(stdout.contains("<<DEL 0"), "DEL succeeds: {}", text(&out));
    assert!(!section("LINKS").contains("eth0"), "DEL removed eth0: {}", text(&out));
    let endpoints = lab.json(&["endpoint", "list", "-o", "json"]);
    assert!(!endpoints.to_string().contains(&cid), "no endpoint left: {endpoints}");
}
