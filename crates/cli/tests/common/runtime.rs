//! The container runtime's side of CNI, played by the fault tests: pod sandboxes whose network
//! namespaces the test makes (and removes when dropped, with any interface end left in them),
//! and calls of the real `sluice-cni` in a node's namespace, retried as a runtime retries: a
//! failed ADD is followed by DELs until one succeeds, then by a new ADD.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_lab::state::NodeState;

use super::{sluice_bin, text};

/// A pod sandbox as the runtime holds it: the attachment's container ID and the network
/// namespace it made for the pod.
pub struct Sandbox {
    pub container_id: String,
    pub netns: String,
    pub netns_path: PathBuf,
}

impl Sandbox {
    /// Makes the named network namespace `sluice-<lab>-sb<index>`.
    pub fn create(lab: &str, index: usize) -> Self {
        let netns = format!("sluice-{lab}-sb{index}");
        let netns_path = sluice_datapath::netns::create_named_netns(&netns).unwrap_or_else(|e| panic!("creating netns {netns}: {e}"));
        Self { container_id: format!("{lab}-sandbox-{index:03}"), netns, netns_path }
    }

    /// The host-side interface name the agent gives this attachment.
    pub fn host_ifname(&self) -> String {
        sluice_agent::agent::host_ifname(&sluice_agent::ipam::Owner::new(self.container_id.clone(), "eth0"))
    }

    /// The sandbox's interfaces other than `lo`, with their addresses other than link-local.
    pub fn interfaces(&self) -> Vec<(String, Vec<String>)> {
        let out = Command::new("ip").args(["-n", &self.netns, "-j", "addr", "show"]).output().expect("ip addr");
        assert!(out.status.success(), "ip addr in sandbox {}: {}", self.netns, text(&out));
        let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
        let mut found = Vec::new();
        for link in links.as_array().expect("links") {
            let name = link["ifname"].as_str().expect("ifname").to_owned();
            if name == "lo" {
                continue;
            }
            let mut addresses: Vec<String> = link["addr_info"]
                .as_array()
                .map(|a| a.iter().filter(|a| a["scope"] != "link").map(|a| a["local"].as_str().expect("local").to_owned()).collect())
                .unwrap_or_default();
            addresses.sort();
            found.push((name, addresses));
        }
        found
    }

    /// Pings `target` once from the sandbox.
    pub fn ping(&self, target: &str) -> Output {
        Command::new("ip").args(["netns", "exec", &self.netns, "ping", "-c", "1", "-W", "2", target]).output().expect("ping")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = sluice_datapath::netns::delete_named_netns(&self.netns) {
            eprintln!("removing sandbox netns {}: {e}", self.netns);
        }
    }
}

/// The CNI plugin of one lab node, called as the runtime calls it: in the node's namespace,
/// with the node's network configuration on stdin.
#[derive(Clone)]
pub struct NodeCni {
    pub node_netns: String,
    pub socket: PathBuf,
}

/// One failed call: the CNI error code (none when the plugin printed no error object) and
/// what it printed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub command: &'static str,
    pub code: Option<u64>,
    pub output: String,
}

impl NodeCni {
    pub fn of(node: &NodeState) -> Self {
        Self { node_netns: node.netns.clone(), socket: node.socket.clone() }
    }

    fn config(&self) -> Value {
        serde_json::json!({"cniVersion": "1.1.0", "name": "sluice", "type": "sluice-cni", "agentSocket": self.socket, "mtu": 1500})
    }

    /// Runs `sluice-cni` with `command` for `sandbox`'s eth0.
    pub fn call(&self, command: &str, sandbox: &Sandbox) -> Output {
        self.run(&[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &sandbox.container_id),
            ("CNI_NETNS", sandbox.netns_path.to_str().expect("utf-8 netns path")),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1"),
        ])
    }

    /// CNI GC with the runtime's list of valid attachments (eth0 of each container ID).
    pub fn gc(&self, valid: &[&str]) -> Output {
        let mut config = self.config();
        config["cni.dev/valid-attachments"] = valid.iter().map(|c| serde_json::json!({"containerID": c, "ifname": "eth0"})).collect();
        self.run_with(&[("CNI_COMMAND", "GC")], &config)
    }

    fn run(&self, vars: &[(&str, &str)]) -> Output {
        self.run_with(vars, &self.config())
    }

    fn run_with(&self, vars: &[(&str, &str)], config: &Value) -> Output {
        let plugin = sluice_bin().with_file_name("sluice-cni");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns]).arg(&plugin).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.env("CNI_PATH", plugin.parent().expect("plugin directory"));
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run sluice-cni");
        child.stdin.take().expect("stdin").write_all(config.to_string().as_bytes()).expect("write the configuration");
        child.wait_with_output().expect("wait for sluice-cni")
    }

    /// ADD as a runtime does it until `deadline`: a failed ADD is followed by DEL until the DEL
    /// succeeds, then ADD again. Returns the result of the ADD that succeeded and every failure
    /// on the way.
    pub fn add_retrying(&self, sandbox: &Sandbox, deadline: Instant) -> (Result<Value, String>, Vec<Failure>) {
        let mut failures = Vec::new();
        loop {
            let out = self.call("ADD", sandbox);
            if out.status.success() {
                let result = serde_json::from_slice(&out.stdout).map_err(|e| format!("ADD printed no result ({e}): {}", text(&out)));
                return (result, failures);
            }
            failures.push(failure("ADD", &out));
            if let Err(e) = self.del_until(sandbox, deadline, &mut failures) {
                return (Err(e), failures);
            }
            if Instant::now() > deadline {
                return (Err(format!("ADD of {} still failing at the deadline: {}", sandbox.container_id, text(&out))), failures);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// DEL until it succeeds or `deadline` passes; every failure on the way.
    pub fn del_retrying(&self, sandbox: &Sandbox, deadline: Instant) -> (Result<(), String>, Vec<Failure>) {
        let mut failures = Vec::new();
        let result = self.del_until(sandbox, deadline, &mut failures);
        (result, failures)
    }

    fn del_until(&self, sandbox: &Sandbox, deadline: Instant, failures: &mut Vec<Failure>) -> Result<(), String> {
        loop {
            let out = self.call("DEL", sandbox);
            if out.status.success() {
                return Ok(());
            }
            failures.push(failure("DEL", &out));
            if Instant::now() > deadline {
                return Err(format!("DEL of {} still failing at the deadline: {}", sandbox.container_id, text(&out)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn failure(command: &'static str, out: &Output) -> Failure {
    Failure { command, code: error_code(out), output: text(out) }
}

/// The code of the CNI error object a failed call printed.
pub fn error_code(out: &Output) -> Option<u64> {
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v["code"].as_u64())
}

/// The addresses of an ADD result's `ips`, without prefix length, sorted.
pub fn result_addresses(result: &Value) -> Vec<String> {
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .expect("ips in the ADD result")
        .iter()
        .map(|ip| ip["address"].as_str().expect("address").split('/').next().expect("address part").to_owned())
        .collect();
    ips.sort();
    ips
}

/// The names of the veths in a namespace.
pub fn veths(netns: &str) -> Vec<String> {
    let out = Command::new("ip").args(["-n", netns, "-j", "link", "show", "type", "veth"]).output().expect("ip link");
    assert!(out.status.success(), "ip link in {netns}: {}", text(&out));
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
    links.as_array().expect("links").iter().map(|l| l["ifname"].as_str().expect("ifname").to_owned()).collect()
}

/// The routes of a namespace (both families) as (destination, device).
pub fn routes(netns: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for family in ["-4", "-6"] {
        let out = Command::new("ip").args([family, "-n", netns, "-j", "route", "show"]).output().expect("ip route");
        assert!(out.status.success(), "ip route in {netns}: {}", text(&out));
        let list: Value = serde_json::from_slice(&out.stdout).expect("ip -j JSON");
        for r in list.as_array().expect("routes") {
            found.push((r["dst"].as_str().unwrap_or_default().to_owned(), r["dev"].as_str().unwrap_or_default().to_owned()));
        }
    }
    found
}

/// The names under `dir`, recursively, relative to it and sorted (pin directories, state
/// directories).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(base).expect("under base").display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// Sends `signal` to the process and waits until it is gone.
pub fn stop(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} did not stop within 20 s of {signal}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
