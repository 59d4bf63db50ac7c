//! Support for the privileged lab tests: each test builds its own uniquely named lab through
//! the real `sluice` binary and removes it when dropped, even when the test fails.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect
#![allow(dead_code)]

pub mod runtime;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// Whether this privileged test may run; fails under CI when it cannot.
pub fn privileged(test: &str) -> bool {
    sluice_datapath::testing::require_root(test)
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestLab {
    pub name: String,
}

pub fn text(o: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

impl TestLab {
    /// `tag` names the test (a few letters); `args` go to `sluice up`.
    pub fn up(tag: &str, args: &[&str]) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}-{}{}", tag, std::process::id() % 100_000, n);
        assert!(name.len() <= 20, "lab name {name} too long");
        let lab = TestLab { name };
        let out = lab.run(&[&["up"], args].concat());
        assert!(out.status.success(), "sluice up failed: {}", text(&out));
        lab
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(sluice_bin());
        c.arg("--lab").arg(&self.name).args(args).env_remove("SLUICE_LAB").env_remove("SLUICE_SOCKET");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("run sluice")
    }

    pub fn apply(&self, yaml: &str) -> Output {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("tempfile");
        f.write_all(yaml.as_bytes()).expect("write manifest");
        self.run(&["apply", "-f", f.path().to_str().expect("utf-8 path")])
    }

    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(out.status.success(), "apply failed: {}", text(&out));
    }

    pub fn exec(&self, ns: &str, pod: &str, argv: &[&str]) -> Output {
        self.run(&[&["exec", pod, "-n", ns, "--"], argv].concat())
    }

    /// Runs `argv` in the pod until it succeeds or `within` passes (servers take a moment).
    pub fn exec_until_ok(&self, ns: &str, pod: &str, argv: &[&str], within: Duration) -> Output {
        let deadline = Instant::now() + within;
        loop {
            let out = self.exec(ns, pod, argv);
            if out.status.success() || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(out.status.success(), "sluice {args:?} failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sluice {args:?} printed invalid JSON ({e}): {}", text(&out)))
    }

    /// (IPv4, IPv6) of a pod from `get pods -o json`.
    pub fn pod_ips(&self, ns: &str, pod: &str) -> (String, String) {
        let list = self.json(&["get", "pods", "-n", ns, "-o", "json"]);
        let items = list["items"].as_array().expect("items");
        let p = items.iter().find(|p| p["metadata"]["name"] == pod).unwrap_or_else(|| panic!("pod {pod} not listed: {list}"));
        let ips: Vec<String> =
            p["status"]["podIPs"].as_array().expect("podIPs").iter().map(|i| i["ip"].as_str().expect("ip").to_owned()).collect();
        let v4 = ips.iter().find(|i| !i.contains(':')).expect("an IPv4 address").clone();
        let v6 = ips.iter().find(|i| i.contains(':')).expect("an IPv6 address").clone();
        (v4, v6)
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("sluice-{}-{}", self.name, node)
    }

    /// Runs a command in a node's namespace (test plumbing only; the product never shells out).
    pub fn in_node(&self, node: &str, argv: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.node_netns(node)]).args(argv).output().expect("ip netns exec")
    }

    pub fn lab_dir(&self) -> PathBuf {
        PathBuf::from("/run/sluice/labs").join(&self.name)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.lab_dir().exists() {
            let out = self.run(&["down"]);
            if !out.status.success() {
                eprintln!("sluice down --lab {} failed: {}", self.name, text(&out));
            }
        }
    }
}

// === a held connection ===

/// `sluice svc-client --hold` to `target` from a pod (the external client when `pod` is None):
/// a TCP connection exchanging a line every 200 ms, one JSON line per event.
pub fn spawn_hold(lab: &TestLab, pod: Option<&str>, target: &str) -> Child {
    let bin = sluice_bin();
    let bin = bin.to_str().unwrap();
    let argv = [bin, "svc-client", target, "--hold"];
    let mut cmd = match pod {
        Some(p) => lab.cmd(&[&["exec", p, "--"], &argv[..]].concat()),
        None => lab.cmd(&[&["exec", "--external", "--"], &argv[..]].concat()),
    };
    cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn().expect("spawn svc-client --hold")
}

/// The child's stdout lines on a channel.
pub fn watch(child: &mut Child) -> (mpsc::Sender<String>, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let sender = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (tx, rx)
}

pub fn drain(rx: &mpsc::Receiver<String>) {
    while rx.try_recv().is_ok() {}
}

pub fn collect(rx: &mpsc::Receiver<String>, for_: Duration) -> Vec<String> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => out.push(l),
            Err(_) => break,
        }
    }
    out
}

/// Two pods in namespace `demo`: `server` runs an iperf3 server, `client` sleeps.
pub const TWO_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {team: blue}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: demo
  labels: {app: server}
spec:
  containers:
  - name: iperf
    command: ["iperf3", "-s"]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: demo
  labels: {app: client}
spec:
  containers:
  - name: main
    command: ["sleep", "infinity"]
"#;
