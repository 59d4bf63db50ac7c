//! The node agents of a lab: each runs `sluice agent` inside its node's namespace and cgroup,
//! with its own state directory, socket and bpffs, and outlives the command that started it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::names::{self, LabNames};
use crate::process::{alive, enter_on_exec, stop_group};
use crate::state::NodeState;
use crate::LabError;

/// Seconds a lab node's registration outlives its agent on etcd: short, so a lab sees a
/// killed agent's node withdrawn quickly.
pub const LAB_LEASE_SECONDS: i64 = 5;

/// The agent configuration of a lab node.
pub fn agent_config(node: &NodeState, lab_dir: &Path, opts: &crate::UpOptions) -> String {
    let (pod_cidrs, state) = if opts.datastore == "etcd" {
        let etcd = crate::etcd::agent_etcd_config(lab_dir, &node.name);
        let file = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        (
            "[]".to_string(),
            format!(
                "state:\n  source: etcd\n  etcd:\n    endpoints: [\"{endpoint}\"]\n    caFile: {ca}\n    certFile: {cert}\n    keyFile: {key}\n  \
                 clusterPoolCIDRs: [\"{pool4}\", \"{pool6}\"]\n  nodeMaskIPv4: 24\n  nodeMaskIPv6: 64\n  leaseSeconds: {lease}\n  endpoints: {endpoints}\n",
                endpoint = etcd.endpoints.first().cloned().unwrap_or_default(),
                ca = file(&etcd.ca_file),
                cert = file(&etcd.cert_file),
                key = file(&etcd.key_file),
                pool4 = names::POD_POOL_V4,
                pool6 = names::POD_POOL_V6,
                lease = LAB_LEASE_SECONDS,
                endpoints = opts.endpoints,
            ),
        )
    } else {
        (
            format!("[\"{}\", \"{}\"]", names::pod_cidr_v4(node.index), names::pod_cidr_v6(node.index)),
            format!("state:\n  source: local\n  path: {}\n", lab_dir.join("store.json").display()),
        )
    };
    format!(
        "# Written by `sluice up`.\n\
         nodeName: {name}\n\
         stateDir: {dir}/state\n\
         socket: {socket}\n\
         bpffs: {bpffs}\n\
         podCIDRs: {pod_cidrs}\n\
         hostRouting: {host_routing}\n\
         guard: {guard}\n\
         guardCgroup: {cgroup}\n\
         monitorAggregation: {monitor}\n\
         devices: [eth0]\n\
         metricsAddress: \"127.0.0.1:9962\"\n\
         mtu: 1500\n\
         {state}\
         services:\n  xdp: {xdp}\n  nodePortRange: \"{np_lo}-{np_hi}\"\n",
        name = node.name,
        dir = node.dir.display(),
        socket = node.socket.display(),
        bpffs = node.bpffs.display(),
        host_routing = opts.host_routing,
        guard = opts.guard,
        cgroup = node.cgroup.display(),
        monitor = opts.monitor,
        xdp = opts.xdp,
        np_lo = opts.service_ranges.node_ports.start(),
        np_hi = opts.service_ranges.node_ports.end(),
    )
}

/// The CNI network configuration a runtime on this node hands the plugin.
pub fn cni_config(node: &NodeState) -> String {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "sluice",
        "type": "sluice-cni",
        "agentSocket": node.socket,
        "mtu": 1500,
    })
    .to_string()
}

/// Starts the agent of `node` from binary `sluice` and returns its pid.
pub fn start_agent(sluice: &Path, node: &NodeState, names: &LabNames) -> Result<i32, LabError> {
    start_node_process(sluice, node, names, "agent")
}

/// Starts the layer-7 proxy of `node` (`sluice proxy`, on the agent's configuration) and
/// returns its pid. A process of its own, as in a cluster: restarting the agent leaves it and
/// its connections alone.
pub fn start_proxy(sluice: &Path, node: &NodeState, names: &LabNames) -> Result<i32, LabError> {
    start_node_process(sluice, node, names, "proxy")
}

/// `sluice <command> --config agent.yaml` in the node's namespace and in the cgroup
/// `<node>/<command>`, logging to `<command>.log`, in a session of its own.
fn start_node_process(sluice: &Path, node: &NodeState, names: &LabNames, command: &str) -> Result<i32, LabError> {
    let config = node.dir.join("agent.yaml");
    let log_name = format!("{command}.log");
    // Appended to: a proxy starts while the one it replaces still writes its last lines.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join(&log_name))
        .map_err(|e| LabError::io(format!("opening {log_name}"), e))?;
    let log2 = log.try_clone().map_err(|e| LabError::io(format!("opening {log_name}"), e))?;
    let cgroup = node.cgroup.join(command);
    crate::cgroup::create(&cgroup)?;
    let mut cmd = Command::new(sluice);
    cmd.arg(command).arg("--config").arg(&config).stdin(Stdio::null()).stdout(log).stderr(log2);
    cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    enter_on_exec(&mut cmd, &sluice_datapath::netns::named_netns_path(&names.node_netns(&node.name)), Some(&cgroup), true)?;
    let child = cmd.spawn().map_err(|e| LabError::io(format!("starting {} {command}", sluice.display()), e))?;
    Ok(child.id() as i32)
}

/// Waits until the agent answers on its socket.
pub async fn wait_ready(node: &NodeState, pid: i32, timeout: Duration) -> Result<sluice_api::Status, LabError> {
    let client = sluice_api::Client::new(&node.socket);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = client.get::<sluice_api::Status>(sluice_api::paths::STATUS).await {
            return Ok(status);
        }
        if !alive(pid) || Instant::now() > deadline {
            let log = node.dir.join("agent.log");
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(LabError::AgentNotReady {
                node: node.name.clone(),
                seconds: timeout.as_secs(),
                log: format!("{}; last lines: {}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join(" | ")),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops an agent or a proxy (its process group).
pub fn stop_agent(pid: i32) {
    stop_group(pid, Duration::from_secs(5));
}
