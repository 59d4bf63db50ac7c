//! `sluice-bpf` and `sluice-legacy`: a one-node Sluice lab of its own, in the host routing mode
//! asked for, with the two pods applied as a user would. The benchmark's tools then run in the
//! pods' network namespaces.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use sluice_datapath::netns;
use sluice_lab::{Lab, UpOptions};

use super::guard::{Guard, Teardown};
use super::{BuildEnv, Pods};
use crate::BenchError;

const MANIFEST: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec:
  nodeName: node0
  containers: [{name: main, command: [sleep, infinity]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec:
  nodeName: node0
  containers: [{name: main, command: [sleep, infinity]}]
";

/// What the checks of a Sluice configuration need: the node, and its agent.
#[derive(Debug, Clone)]
pub struct Node {
    pub netns: PathBuf,
    pub socket: PathBuf,
    pub agent_pid: Option<i32>,
}

/// Builds a lab whose agent runs host routing `mode` (`bpf` or `legacy`) with monitor
/// aggregation `monitor` (`off`, `medium`, `all`).
pub async fn build(env: &BuildEnv, mode: &str, monitor: &str) -> Result<(Pods, Node, Guard), BenchError> {
    let name = env.lab_name(&if monitor == "medium" { mode.to_owned() } else { format!("{mode}-{monitor}") });
    let guard = Guard::new(Teardown::Lab(name.clone()));
    let opts = UpOptions { host_routing: mode.into(), monitor: monitor.into(), ..UpOptions::new(&name, env.sluice.clone()) };
    let mut lab = Lab::up(opts, &mut |_| {}).await?;
    let socket = lab.node_socket(None)?;
    let status: sluice_api::Status = sluice_api::Client::new(&socket).get(sluice_api::paths::STATUS).await?;
    if status.host_routing.mode != mode {
        return Err(BenchError::Check(format!(
            "lab {name} asked for host routing {mode} and runs {} ({})",
            status.host_routing.mode, status.host_routing.reason
        )));
    }
    lab.apply("bench-pods.yaml", MANIFEST, Duration::from_secs(60), &mut |_| {}).await?;
    let client = pod_netns(&lab, "client")?;
    let server = pod_netns(&lab, "server")?;
    let server_ip = pod_ipv4(&lab, "server")?;
    let node = Node {
        netns: netns::named_netns_path(&lab.names().node_netns("node0")),
        socket,
        agent_pid: lab.state().nodes.first().and_then(|n| n.agent_pid),
    };
    // Release the lab's lock: `Lab::down` takes it again at teardown.
    drop(lab);
    Ok((Pods { client, server, server_ip }, node, guard))
}

fn pod_netns(lab: &Lab, pod: &str) -> Result<PathBuf, BenchError> {
    lab.state()
        .pods
        .get(&format!("bench/{pod}"))
        .map(|rt| rt.netns_path.clone())
        .ok_or_else(|| BenchError::Check(format!("pod bench/{pod} has no runtime record")))
}

fn pod_ipv4(lab: &Lab, pod: &str) -> Result<Ipv4Addr, BenchError> {
    let pods = lab.pods(Some("bench"))?;
    pods.iter()
        .filter(|p| p.metadata.name.as_deref() == Some(pod))
        .filter_map(|p| p.status.as_ref()?.pod_ips.clone())
        .flatten()
        .find_map(|ip| match ip.ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        })
        .ok_or_else(|| BenchError::Check(format!("pod bench/{pod} has no IPv4 address")))
}
