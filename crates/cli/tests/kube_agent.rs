//! The agent and the CLI on the Kubernetes side, as far as they go without an API server (none
//! can run in CI): an agent told to use one that does not answer, or a kubeconfig that is not
//! there, stops with an error that names what is wrong and has made nothing; `sluice crds`
//! writes exactly the definitions. The source and the writer are tested against kube's mock
//! client in the sluice-kube crate; a real control plane is for the tests that read
//! `SLUICE_KUBE_BIN`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{sluice_bin, text};

/// Runs `sluice agent` with `config` and waits at most 60 s for it to stop.
fn agent(config: &Path) -> Output {
    let mut child = Command::new(sluice_bin())
        .args(["agent", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice agent starts");
    let started = Instant::now();
    while child.try_wait().expect("waiting for the agent").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the agent did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("the agent's output")
}

fn agent_yaml(dir: &Path, kubeconfig: &Path) -> std::path::PathBuf {
    let config = dir.join("agent.yaml");
    let yaml = format!(
        "nodeName: node0\nstateDir: {}\nbpffs: {}\nsocket: {}\nstate:\n  source: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    podCidrWaitSeconds: 1\n",
        dir.join("state").display(),
        dir.join("bpffs").display(),
        dir.join("agent.sock").display(),
        kubeconfig.display()
    );
    std::fs::write(&config, yaml).unwrap();
    config
}

#[test]
fn an_agent_whose_api_server_does_not_answer_names_it_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: agent\n  user: {{token: test}}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: agent}}\ncurrent-context: lab\n"
        ),
    )
    .unwrap();
    let out = agent(&agent_yaml(dir.path(), &kubeconfig));
    let stderr = text(&out);
    assert!(!out.status.success(), "the agent ran without its API server: {stderr}");
    assert!(stderr.contains("reading Node node0"), "the error says what it was doing: {stderr}");
    assert!(!dir.path().join("state").exists(), "nothing was made before the cluster answered");
    assert!(!dir.path().join("agent.sock").exists());
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("no-such-kubeconfig");
    let out = agent(&agent_yaml(dir.path(), &kubeconfig));
    let stderr = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains(&kubeconfig.display().to_string()), "the error names the file: {stderr}");
    assert!(!dir.path().join("state").exists());
}

#[test]
fn sluice_crds_writes_every_definition_and_removes_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.dev_retired.yaml"), "stale").unwrap();
    std::fs::write(dir.path().join("README"), "kept").unwrap();
    let out = Command::new(sluice_bin()).args(["crds", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README",
            "sluice.dev_sluiceclusterwidenetworkpolicies.yaml",
            "sluice.dev_sluiceendpoints.yaml",
            "sluice.dev_sluiceendpointslices.yaml",
            "sluice.dev_sluiceidentities.yaml",
            "sluice.dev_sluicenetworkpolicies.yaml",
            "sluice.dev_sluicenodes.yaml",
        ]
    );
    // Printed, the same definitions as one stream.
    let printed = Command::new(sluice_bin()).arg("crds").output().unwrap();
    let stream = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(stream.matches("kind: CustomResourceDefinition").count(), 6);
    assert_eq!(stream.matches("\n---\n").count(), 5);
}
