//! Calling the CNI plugin exactly as containerd does: the real `sluice-cni` binary, the CNI_*
//! variables, the network configuration on stdin, in the node's network namespace, and the
//! result or error JSON on stdout.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::enter_on_exec;

/// One plugin call.
pub struct CniCall<'a> {
    pub plugin: &'a Path,
    pub command: &'static str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub config: &'a str,
    /// Where the runtime runs: the node's namespace.
    pub node_netns: &'a Path,
    pub timeout: Duration,
}

/// Runs the plugin; on success returns its stdout parsed as JSON (or `null` when it printed
/// nothing), on failure the error message it printed.
pub fn invoke(call: &CniCall<'_>) -> Result<serde_json::Value, String> {
    let plugin_dir = call.plugin.parent().unwrap_or(Path::new("/"));
    let mut cmd = Command::new(call.plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", plugin_dir)
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                call.pod_namespace, call.pod_name, call.container_id
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    enter_on_exec(&mut cmd, call.node_netns, None, false).map_err(|e| e.to_string())?;
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", call.plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(call.config.as_bytes());
    }
    // Wait in a thread so the result is seen the moment the plugin exits (a polling loop
    // would add its period to every measured CNI call).
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(call.timeout) {
        Ok(out) => out.map_err(|e| format!("reading the plugin's output: {e}"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            return Err(format!("timed out after {} s", call.timeout.as_secs()));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if stdout.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        return serde_json::from_str(&stdout).map_err(|e| format!("plugin printed invalid JSON ({e}): {stdout}"));
    }
    match serde_json::from_str::<serde_json::Value>(&stdout) {
        Ok(err) => Err(format!(
            "code {}: {}{}",
            err["code"],
            err["msg"].as_str().unwrap_or("?"),
            err["details"].as_str().filter(|d| !d.is_empty()).map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        Err(_) => Err(format!("{} {}", stdout.trim(), String::from_utf8_lossy(&out.stderr).trim())),
    }
}
