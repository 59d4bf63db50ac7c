//! Runs the built `sluice-cni` binary the way a container runtime does: CNI_* variables in a
//! clean environment, the configuration on stdin, the answer on stdout and the exit status.

// The helper below is test code too; a panic with the cause is the clearest failure.
#![allow(clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Runs the plugin with only `vars` in its environment; returns (exit code, stdout).
fn run_plugin(vars: &[(&str, &str)], stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-cni"))
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice-cni");
    child.stdin.take().expect("stdin is piped").write_all(stdin.as_bytes()).expect("write stdin");
    let output = child.wait_with_output().expect("wait for sluice-cni");
    (output.status.code(), String::from_utf8(output.stdout).expect("stdout is UTF-8"))
}

const ATTACHMENT: [(&str, &str); 4] =
    [("CNI_CONTAINERID", "0123abcd"), ("CNI_NETNS", "/var/run/netns/pod"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/opt/cni/bin")];

#[test]
fn version_answers_in_the_version_it_was_asked_with() {
    // (stdin as a runtime writes it, the answer's cniVersion): libcni asks with its own
    // version; a version this plugin does not speak, or none, is answered in the current one.
    let cases = [
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
        (r#"{"cniVersion":"1.1.0"}"#, "1.1.0"),
        (r#"{"cniVersion":"0.3.1"}"#, "1.1.0"),
        ("", "1.1.0"),
    ];
    for (stdin, version) in cases {
        let (code, stdout) = run_plugin(&[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!(code, Some(0), "VERSION exit code with stdin {stdin:?}");
        let out: Value = serde_json::from_str(&stdout).expect("VERSION prints JSON");
        let want = json!({"cniVersion": version, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]});
        assert_eq!(out, want, "VERSION answer with stdin {stdin:?}");
    }
}

#[test]
fn bad_calls_exit_1_with_an_error_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let good = json!({"cniVersion": "1.0.0", "name": "sluice", "type": "sluice-cni", "agentSocket": socket}).to_string();
    // (what, command, drop variable, stdin, expected code, expected cniVersion)
    let cases = [
        ("malformed JSON", "ADD", None, "{\"cniVersion\":", 6, "1.1.0"),
        ("missing type", "ADD", None, r#"{"cniVersion":"0.4.0","name":"sluice"}"#, 7, "0.4.0"),
        ("unsupported version", "ADD", None, r#"{"cniVersion":"0.2.0","name":"s","type":"t"}"#, 1, "1.1.0"),
        ("unknown command", "FROB", None, good.as_str(), 4, "1.0.0"),
        ("missing container id", "ADD", Some("CNI_CONTAINERID"), good.as_str(), 4, "1.0.0"),
        ("missing ifname", "DEL", Some("CNI_IFNAME"), good.as_str(), 4, "1.0.0"),
        ("agent unreachable", "ADD", None, good.as_str(), 11, "1.0.0"),
        ("agent unreachable on DEL", "DEL", None, good.as_str(), 11, "1.0.0"),
    ];
    for (what, command, dropped, stdin, want_code, want_version) in cases {
        let mut vars: Vec<(&str, &str)> = ATTACHMENT.iter().copied().filter(|&(k, _)| Some(k) != dropped).collect();
        vars.push(("CNI_COMMAND", command));
        let (code, stdout) = run_plugin(&vars, stdin);
        assert_eq!(code, Some(1), "{what}: exit code");
        let error: Value = serde_json::from_str(&stdout).expect("the error is JSON on stdout");
        assert_eq!(error["code"], want_code, "{what}: CNI error code in {stdout}");
        assert_eq!(error["cniVersion"], want_version, "{what}: cniVersion in {stdout}");
        assert!(error["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: msg in {stdout}");
        if let Some(var) = dropped {
            assert!(error["msg"].as_str().is_some_and(|m| m.contains(var)), "{what}: msg names {var}");
        }
    }
}

#[test]
fn status_without_agent_is_plugin_not_available() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni",
        "agentSocket": dir.path().join("agent.sock")});
    let (code, stdout) = run_plugin(&[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert_eq!(code, Some(1), "STATUS exit code");
    let error: Value = serde_json::from_str(&stdout).expect("the error is JSON on stdout");
    assert_eq!(error["code"], 50, "STATUS without an agent: {stdout}");
}

#[test]
fn install_puts_this_binary_and_its_configuration_in_place_and_uninstall_takes_them_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (bin_dir, conf_dir) = (dir.path().join("bin"), dir.path().join("net.d"));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice-cni"))
            .args(args)
            .args(["--bin-dir", bin_dir.to_str().expect("utf-8"), "--conf-dir", conf_dir.to_str().expect("utf-8")])
            .output()
            .expect("run sluice-cni")
    };
    let out = run(&["install", "--agent-socket", "/run/sluice/agent.sock"]);
    assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    let built = std::fs::read(env!("CARGO_BIN_EXE_sluice-cni")).expect("read the built plugin");
    assert!(std::fs::read(bin_dir.join("sluice-cni")).expect("installed plugin") == built, "the installed plugin is this binary");
    let conf: Value = serde_json::from_slice(&std::fs::read(conf_dir.join("05-sluice.conflist")).expect("conflist")).expect("JSON");
    assert_eq!(conf["plugins"][0], json!({"type": "sluice-cni", "agentSocket": "/run/sluice/agent.sock"}));

    let out = run(&["uninstall"]);
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!bin_dir.join("sluice-cni").exists() && !conf_dir.join("05-sluice.conflist").exists(), "both removed");

    let out = run(&["reinstall"]);
    assert_eq!(out.status.code(), Some(2), "an unknown command is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("install|uninstall"), "with the usage");
}
