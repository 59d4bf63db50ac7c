//! The pod runtime: a pod is a network namespace whose network comes from the CNI plugin and
//! whose command runs under a shim in the node's cgroup subtree. Start is all or nothing; stop
//! removes everything start made, and tolerates what is already gone.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_datapath::netns;

use crate::cni::{invoke, CniCall};
use crate::names::LabNames;
use crate::process::{alive, enter_on_exec, stop_group};
use crate::shim::ShimStatus;
use crate::state::{NodeState, PodRuntime};
use crate::LabError;

/// What a pod needs to start.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub argv: Vec<String>,
}

/// Binaries the runtime uses.
pub struct Binaries {
    pub sluice: PathBuf,
    pub cni_plugin: PathBuf,
}

/// The addresses CNI ADD gave the pod.
#[derive(Debug, Clone, Default)]
pub struct PodAddresses {
    pub ips: Vec<std::net::IpAddr>,
}

const IFNAME: &str = "eth0";

pub async fn start_pod(
    names: &LabNames,
    node: &NodeState,
    bins: &Binaries,
    spec: &PodSpec<'_>,
    timeout: Duration,
) -> Result<(PodRuntime, PodAddresses), LabError> {
    let pod = format!("{}/{}", spec.namespace, spec.name);
    let netns_name = names.pod_netns(spec.uid);
    let dir = names.pod_dir(spec.uid);
    std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let runtime = PodRuntime {
        uid: spec.uid.to_owned(),
        container_id: container_id(spec.uid),
        node: node.name.clone(),
        netns: netns_name.clone(),
        netns_path: netns::named_netns_path(&netns_name),
        cgroup: node.cgroup.join("pods").join(spec.uid),
        shim_pid: None,
        dir,
        cni_add_micros: None,
    };
    match start(names, node, bins, spec, runtime.clone(), timeout).await {
        Ok(ok) => Ok(ok),
        Err(e) => {
            let _ = stop_pod(names, node, bins, &runtime, spec.namespace, spec.name).await;
            Err(match e {
                LabError::Cni { .. } | LabError::PodStart { .. } => e,
                other => LabError::PodStart { pod, message: other.to_string() },
            })
        }
    }
}

async fn start(
    names: &LabNames,
    node: &NodeState,
    bins: &Binaries,
    spec: &PodSpec<'_>,
    mut runtime: PodRuntime,
    timeout: Duration,
) -> Result<(PodRuntime, PodAddresses), LabError> {
    let pod = format!("{}/{}", spec.namespace, spec.name);
    let deadline = Instant::now() + timeout;
    netns::create_named_netns(&runtime.netns)?;
    crate::cgroup::create(&runtime.cgroup)?;

    let add_started = Instant::now();
    let result = cni(names, node, bins, &runtime, spec.namespace, spec.name, "ADD", timeout).await?;
    runtime.cni_add_micros = Some(add_started.elapsed().as_micros() as u64);
    let ips = result["ips"]
        .as_array()
        .map(|ips| ips.iter().filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok()).collect())
        .unwrap_or_default();

    let status = runtime.dir.join("status.json");
    let log = std::fs::File::create(runtime.dir.join("log")).map_err(|e| LabError::io("creating the pod log", e))?;
    let log2 = log.try_clone().map_err(|e| LabError::io("opening the pod log", e))?;
    let mut cmd = Command::new(&bins.sluice);
    cmd.arg("lab-shim").arg("--status").arg(&status).arg("--").args(&spec.argv);
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2).current_dir("/");
    enter_on_exec(&mut cmd, &runtime.netns_path, Some(&runtime.cgroup), true)?;
    let child = cmd.spawn().map_err(|e| LabError::io(format!("starting the shim of {pod}"), e))?;
    runtime.shim_pid = Some(child.id() as i32);
    // The shim is the pod's parent from now on; the CLI may exit.
    drop(child);
    loop {
        match ShimStatus::read(&status) {
            Some(ShimStatus::Failed { error }) => return Err(LabError::PodStart { pod, message: error }),
            Some(_) => break,
            None if Instant::now() > deadline => {
                return Err(LabError::PodStart { pod, message: format!("no word from its shim after {} s", timeout.as_secs()) })
            }
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    Ok((runtime, PodAddresses { ips }))
}

/// Stops the pod's processes, releases its network through CNI DEL and removes its namespace,
/// cgroup and directory.
pub async fn stop_pod(
    names: &LabNames,
    node: &NodeState,
    bins: &Binaries,
    runtime: &PodRuntime,
    namespace: &str,
    name: &str,
) -> Result<(), LabError> {
    if let Some(pid) = runtime.shim_pid {
        stop_group(pid, Duration::from_secs(3));
    }
    // Processes started by `sluice exec` are in the pod's cgroup but not the shim's group.
    for pid in crate::cgroup::procs(&runtime.cgroup) {
        stop_group(pid, Duration::from_millis(500));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let del = if runtime.netns_path.exists() || node_netns_exists(names, node) {
        cni(names, node, bins, runtime, namespace, name, "DEL", Duration::from_secs(30)).await.map(|_| ())
    } else {
        Ok(())
    };
    netns::delete_named_netns(&runtime.netns)?;
    crate::cgroup::remove_tree(&runtime.cgroup)?;
    let _ = std::fs::remove_dir_all(&runtime.dir);
    del
}

fn node_netns_exists(names: &LabNames, node: &NodeState) -> bool {
    netns::named_netns_path(&names.node_netns(&node.name)).exists()
}

#[allow(clippy::too_many_arguments)]
async fn cni(
    names: &LabNames,
    node: &NodeState,
    bins: &Binaries,
    runtime: &PodRuntime,
    namespace: &str,
    name: &str,
    command: &'static str,
    timeout: Duration,
) -> Result<serde_json::Value, LabError> {
    let config = crate::agents::cni_config(node);
    let node_netns = netns::named_netns_path(&names.node_netns(&node.name));
    let plugin = bins.cni_plugin.clone();
    let container_id = runtime.container_id.clone();
    let netns_path = runtime.netns_path.clone();
    let (ns, pod) = (namespace.to_owned(), name.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        invoke(&CniCall {
            plugin: &plugin,
            command,
            container_id: &container_id,
            netns: &netns_path,
            ifname: IFNAME,
            pod_namespace: &ns,
            pod_name: &pod,
            config: &config,
            node_netns: &node_netns,
            timeout,
        })
    })
    .await
    .map_err(|e| LabError::Cni { command, pod: format!("{namespace}/{name}"), message: e.to_string() })?;
    result.map_err(|message| LabError::Cni { command, pod: format!("{namespace}/{name}"), message })
}

/// A container ID as runtimes make them: 64 hex digits, derived from the pod UID.
fn container_id(uid: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("sandbox/{uid}").as_bytes()))
}

/// Kubernetes pod phase from the shim's record.
pub fn phase(runtime: &PodRuntime) -> (&'static str, Option<String>) {
    match ShimStatus::read(&runtime.dir.join("status.json")) {
        Some(ShimStatus::Running { .. }) if runtime.shim_pid.is_some_and(alive) => ("Running", None),
        Some(ShimStatus::Running { .. }) => ("Failed", Some("the pod's shim is gone".into())),
        Some(ShimStatus::Exited { code: 0 }) => ("Succeeded", None),
        Some(ShimStatus::Exited { code }) => ("Failed", Some(format!("exit code {code}"))),
        Some(ShimStatus::Failed { error }) => ("Failed", Some(error)),
        None => ("Pending", None),
    }
}

/// Runs a command in a pod's network namespace and cgroup with the caller's stdio; returns
/// its exit code.
/// Runs `argv` in the pod and returns its exit code and what it wrote to stdout.
pub fn exec_output(runtime: &PodRuntime, argv: &[String]) -> Result<(i32, String), LabError> {
    let Some((program, args)) = argv.split_first() else { return Err(LabError::Invalid("exec needs a command".into())) };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null());
    enter_on_exec(&mut cmd, &runtime.netns_path, Some(&runtime.cgroup), false)?;
    let out = cmd.output().map_err(|e| LabError::io(format!("running {program} in the pod"), e))?;
    let code = out.status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0));
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub fn exec(runtime: &PodRuntime, argv: &[String]) -> Result<i32, LabError> {
    let Some((program, args)) = argv.split_first() else { return Err(LabError::Invalid("exec needs a command".into())) };
    let mut cmd = Command::new(program);
    cmd.args(args);
    enter_on_exec(&mut cmd, &runtime.netns_path, Some(&runtime.cgroup), false)?;
    let status = cmd.status().map_err(|e| LabError::io(format!("running {program} in the pod"), e))?;
    Ok(status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
