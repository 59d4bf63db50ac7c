//! `sluice-bpf` and `sluice-legacy`: a Sluice lab of its own, in the host routing mode asked
//! for, with the two pods applied as a user would on node0 and, in a two-node lab, the
//! cross-node server on node1. The benchmark's tools then run in the
//! pods' network namespaces. Services for TCP_CRR to a ClusterIP are written straight into the
//! lab's store in one update, as a controller's sync would, and timed until the agent reports
//! every frontend programmed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_datapath::netns;
use sluice_lab::{Lab, UpOptions};
use sluice_state::{ObjectMapExt, Store, StoreError};

use super::guard::{Guard, Teardown};
use super::services::{BenchService, NAMESPACE, SERVICE_CIDR};
use super::{BuildEnv, Pods};
use crate::BenchError;

/// The label marking the benchmark's own services and slices in the store, so a new count
/// replaces them and nothing else.
const BENCH_LABEL: &str = "sluice.dev/bench";

/// How long the agent may take to program the services before the run fails.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);

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

/// The server of the cross-node workload, in a two-node lab.
const REMOTE_MANIFEST: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: bench, labels: {app: remote}}
spec:
  nodeName: node1
  containers: [{name: main, command: [sleep, infinity]}]
";

/// sluice-bpf-policy: both pods selected in both directions (default deny), the client allowed
/// to the server's unprivileged TCP ports, and (as in most clusters) DNS-style egress to a
/// CIDR outside the cluster that the workloads never use.
const POLICY_MANIFEST: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: 1024, endPort: 65535}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client, namespace: bench}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: TCP, port: 1024, endPort: 65535}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
    ports: [{protocol: UDP, port: 53}]
";

/// Until the agent reports each pod enforced in both directions.
async fn wait_enforced(socket: &std::path::Path, pods: &[&str]) -> Result<(), BenchError> {
    let client = sluice_api::Client::new(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pod in pods {
        loop {
            let answer: serde_json::Value = client.get(&format!("{}?pod={pod}", sluice_api::paths::POLICY_ENDPOINT)).await?;
            let enforced = |d: &str| answer[d]["mode"].as_str().is_some_and(|m| m.starts_with("enforce"));
            if enforced("ingress") && enforced("egress") {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Check(format!("policy for {pod} not enforced within 10 s: {answer}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// What the checks of a Sluice configuration need: the node, and its agent.
#[derive(Debug, Clone)]
pub struct Node {
    pub netns: PathBuf,
    pub socket: PathBuf,
    pub agent_pid: Option<i32>,
    /// The lab's store, where services are written.
    pub store: sluice_state::Datastore,
    /// node1 of a two-node lab: its namespace and agent socket.
    pub node1: Option<(PathBuf, PathBuf)>,
}

/// Builds a lab of `nodes` (1 or 2) whose agents run host routing `mode` (`bpf` or `legacy`)
/// with monitor aggregation `monitor` (`off`, `medium`, `all`).
pub async fn build(env: &BuildEnv, mode: &str, monitor: &str, policy: bool, nodes: usize) -> Result<(Pods, Node, Guard), BenchError> {
    let name = env.lab_name(&match (monitor, policy) {
        (_, true) => format!("{mode}-pol"),
        ("medium", false) => mode.to_owned(),
        _ => format!("{mode}-{monitor}"),
    });
    let guard = Guard::new(Teardown::Lab(name.clone()));
    // A /17 of cluster IPs: the default /20 holds 4,094 services, the benchmark wants 10,000.
    let mut ranges = sluice_model::ServiceRanges::default();
    ranges.cidrs.retain(|c| matches!(c, IpNet::V6(_)));
    ranges.cidrs.insert(0, IpNet::V4(SERVICE_CIDR));
    let opts = UpOptions {
        host_routing: mode.into(),
        monitor: monitor.into(),
        service_ranges: ranges,
        nodes,
        ..UpOptions::new(&name, env.sluice.clone())
    };
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
    let remote = if nodes > 1 {
        lab.apply("bench-remote.yaml", REMOTE_MANIFEST, Duration::from_secs(60), &mut |_| {}).await?;
        Some(super::Remote { netns: pod_netns(&lab, "remote")?, ip: pod_ipv4(&lab, "remote")? })
    } else {
        None
    };
    if policy {
        lab.apply("bench-policy.yaml", POLICY_MANIFEST, Duration::from_secs(60), &mut |_| {}).await?;
        wait_enforced(&socket, &["bench/server", "bench/client"]).await?;
    }
    let client = pod_netns(&lab, "client")?;
    let server = pod_netns(&lab, "server")?;
    let server_ip = pod_ipv4(&lab, "server")?;
    let client_cgroup = lab.state().pods.get("bench/client").map(|rt| rt.cgroup.clone());
    let node = Node {
        netns: netns::named_netns_path(&lab.names().node_netns("node0")),
        socket,
        agent_pid: lab.state().nodes.first().and_then(|n| n.agent_pid),
        store: lab.store().clone(),
        node1: match nodes {
            1 => None,
            _ => Some((netns::named_netns_path(&lab.names().node_netns("node1")), lab.node_socket(Some("node1"))?)),
        },
    };
    // Release the lab's lock: `Lab::down` takes it again at teardown.
    drop(lab);
    Ok((Pods { client, server, server_ip, client_cgroup, remote }, node, guard))
}

/// Replaces the benchmark's services in the store with `services` in one update, then waits
/// until the agent reports exactly that many frontends programmed without error.
pub async fn program_services(node: &Node, services: &[BenchService]) -> Result<(), BenchError> {
    let objects: Vec<(Service, EndpointSlice)> = services.iter().map(objects).collect::<Result<_, _>>()?;
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || {
        store.update(|s: &mut Store| {
            s.services.retain(|_, svc| !is_bench(&svc.metadata.labels));
            s.endpoint_slices.retain(|_, slice| !is_bench(&slice.metadata.labels));
            for (service, slice) in objects.iter().cloned() {
                let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                    Store::key(NAMESPACE, m.name.as_deref().unwrap_or_default())
                };
                s.services.insert(name(&service.metadata), service);
                s.endpoint_slices.insert(name(&slice.metadata), slice);
            }
            Ok::<_, StoreError>(())
        })
    })
    .await
    .map_err(|e| BenchError::Check(format!("writing services to the store panicked: {e}")))?
    .map_err(|e| BenchError::Check(format!("writing services to the store: {e}")))?;

    let client = sluice_api::Client::new(&node.socket);
    let deadline = Instant::now() + PROGRAM_TIMEOUT;
    loop {
        let status: sluice_api::Status = client.get(sluice_api::paths::STATUS).await?;
        let Some(svc) = status.services else {
            return Err(BenchError::Check("the agent does not program services (no services in its status)".into()));
        };
        if svc.frontends == services.len() && svc.last_error.is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Check(format!(
                "the agent programmed {} of {} frontends in {} s (last error: {})",
                svc.frontends,
                services.len(),
                PROGRAM_TIMEOUT.as_secs(),
                svc.last_error.as_deref().unwrap_or("none")
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_bench(labels: &Option<std::collections::BTreeMap<String, String>>) -> bool {
    labels.as_ref().is_some_and(|l| l.contains_key(BENCH_LABEL))
}

/// A selector-less ClusterIP service and its applied slice, as `sluice apply` would store them
/// with the cluster IP allocated.
fn objects(s: &BenchService) -> Result<(Service, EndpointSlice), BenchError> {
    let target_port = s.backends.first().map_or(s.port, |b| b.port());
    let service = serde_json::json!({
        "metadata": {"name": s.name, "namespace": NAMESPACE, "labels": {BENCH_LABEL: "true"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": s.cluster_ip.to_string(),
            "clusterIPs": [s.cluster_ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": s.port, "protocol": "TCP", "targetPort": target_port}],
        },
    });
    let slice = serde_json::json!({
        "metadata": {
            "name": format!("{}-ipv4", s.name),
            "namespace": NAMESPACE,
            "labels": {BENCH_LABEL: "true", "kubernetes.io/service-name": s.name},
        },
        "addressType": "IPv4",
        "ports": [{"port": target_port, "protocol": "TCP"}],
        "endpoints": s.backends.iter().map(|b| serde_json::json!({"addresses": [b.ip().to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    });
    let invalid = |e: serde_json::Error| BenchError::Invalid(format!("service {}: {e}", s.name));
    Ok((serde_json::from_value(service).map_err(invalid)?, serde_json::from_value(slice).map_err(invalid)?))
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
