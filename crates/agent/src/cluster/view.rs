//! The cluster view the agent's loops read: pods as applied, with the addresses their nodes
//! published. Where no kubelet reports a pod's status (a cluster on etcd alone), the status is
//! taken from the pod's published endpoint (a record of its own or an entry of its node's
//! slice, alike), so services and policy see every pod's addresses and node the same way on
//! every node.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PodIP, PodStatus};
use sluice_state::ClusterState;

/// `state` with the statuses of pods that have none filled from their endpoint records.
/// Copies the objects only when something is to be filled.
pub fn with_published_endpoints(state: ClusterState) -> ClusterState {
    let missing = |key: &String| {
        state.pods.get(key).is_some_and(|p| p.status.as_ref().and_then(|s| s.pod_ips.as_ref()).is_none_or(|ips| ips.is_empty()))
    };
    let published: Vec<(String, sluice_state::EndpointRecord)> =
        state.published_endpoints().map(|r| (sluice_state::Store::key(&r.namespace, &r.name), r)).filter(|(k, _)| missing(k)).collect();
    if published.is_empty() {
        return state;
    }
    let mut objects = (*state.objects).clone();
    for (key, record) in &published {
        let host_ip = state
            .nodes
            .get(&record.node)
            .and_then(|n| n.addresses.iter().find(|a| a.is_ipv4()).or(n.addresses.first()))
            .map(|a| a.to_string());
        let Some(pod) = objects.pods.get_mut(key.as_str()) else { continue };
        let status = pod.status.get_or_insert_with(PodStatus::default);
        if status.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty()) {
            continue;
        }
        status.pod_ips = Some(record.ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
        status.pod_ip = record.ips.first().map(|ip| ip.to_string());
        status.host_ip = host_ip;
        status.phase.get_or_insert_with(|| "Running".into());
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name.get_or_insert_with(|| record.node.clone());
        }
    }
    ClusterState { objects: Arc::new(objects), ..state }
}
