//! Joining: the node's pod CIDRs (configured, or the Node's `spec.podCIDRs` that the
//! controller manager allocates: the `kubernetes` IPAM mode), its `SluiceNode` (owned by the
//! Node, so deleting the Node takes it and everything it owns) and its health, with the Node's
//! `NetworkUnavailable` condition set to false once the agent is ready.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::Resource as _;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sluice_state::NodeRecord;

use super::{failed, KubeCluster, KubeError, FIELD_MANAGER, NODE_LABEL};
use crate::crds::SluiceNode;

/// Where a node's pod CIDRs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipam {
    /// The Node's `spec.podCIDRs`, allocated by the controller manager (`--allocate-node-cidrs`).
    Kubernetes,
}

/// How often the Node is read again while its pod CIDRs are not allocated yet.
const POD_CIDR_POLL: Duration = Duration::from_millis(500);

impl KubeCluster {
    /// Reads the node's pod CIDRs (`configured` when not empty, else the Node's, waited for
    /// at most `wait`) and registers the node's SluiceNode as starting. Returns the pod CIDRs.
    pub async fn join(&self, addresses: Vec<IpAddr>, configured: &[IpNet], wait: Duration) -> Result<Vec<IpNet>, KubeError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let action = format!("reading Node {}", self.node);
        let started = tokio::time::Instant::now();
        let (node, pod_cidrs) = loop {
            let Some(node) = nodes.get_opt(&self.node).await.map_err(failed(&action))? else {
                return Err(KubeError::Invalid {
                    action,
                    what: "no such Node: nodeName must be the node's name in Kubernetes (as kubectl get nodes shows it)".into(),
                });
            };
            let pod_cidrs = if configured.is_empty() { node_pod_cidrs(&node, &action)? } else { configured.to_vec() };
            if !pod_cidrs.is_empty() {
                break (node, pod_cidrs);
            }
            if started.elapsed() >= wait {
                return Err(KubeError::Timeout {
                    action,
                    waited: wait,
                    last: "spec.podCIDRs is empty: run the controller manager with --allocate-node-cidrs, or set podCIDRs in the agent's configuration".into(),
                });
            }
            tokio::time::sleep(POD_CIDR_POLL).await;
        };
        let record = NodeRecord {
            name: self.node.clone(),
            addresses,
            pod_cidrs: pod_cidrs.clone(),
            host_routing: String::new(),
            health: "starting".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            registered: String::new(),
        };
        let owner = OwnerReference {
            api_version: Node::API_VERSION.into(),
            kind: Node::KIND.into(),
            name: self.node.clone(),
            uid: node.uid().unwrap_or_default(),
            ..Default::default()
        };
        *self.node_owner.lock().await = Some(owner);
        self.write_node(&record).await?;
        Ok(pod_cidrs)
    }

    /// Writes the node's SluiceNode as `record` says (health, host routing, addresses, pod
    /// CIDRs), and on `ready` the Node's `NetworkUnavailable` condition.
    pub async fn set_health(&self, health: &str, host_routing: &str) -> Result<(), KubeError> {
        let record = {
            let mut current = self.record.lock().await;
            let Some(record) = current.as_mut() else {
                return Err(KubeError::Invalid { action: "reporting health".into(), what: "the node has not joined".into() });
            };
            if record.health == health && record.host_routing == host_routing {
                return Ok(());
            }
            record.health = health.into();
            record.host_routing = host_routing.into();
            record.clone()
        };
        self.write_node(&record).await?;
        if health == "ready" {
            self.network_available().await?;
        }
        Ok(())
    }

    /// Applies the SluiceNode (server-side apply of the whole object: the agent owns it all).
    async fn write_node(&self, record: &NodeRecord) -> Result<(), KubeError> {
        let mut object = SluiceNode::from_record(record);
        object.metadata.labels = Some([(NODE_LABEL.to_owned(), self.node.clone())].into());
        object.metadata.owner_references = self.node_owner.lock().await.clone().map(|o| vec![o]);
        let api: Api<SluiceNode> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let written =
            api.patch(&self.node, &params, &Patch::Apply(&object)).await.map_err(failed(format!("writing SluiceNode {}", self.node)))?;
        *self.owner_uid.lock().await = written.uid();
        *self.record.lock().await = Some(record.clone());
        Ok(())
    }

    /// Sets the Node's `NetworkUnavailable` condition to false, as network plugins do.
    async fn network_available(&self) -> Result<(), KubeError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "SluiceIsUp",
            "message": "Sluice's agent is ready on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch_status(&self.node, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(failed(format!("setting Node {}'s NetworkUnavailable condition", self.node)))?;
        Ok(())
    }
}

/// The Node's pod CIDRs (`spec.podCIDRs`, or the older single `spec.podCIDR`).
fn node_pod_cidrs(node: &Node, action: &str) -> Result<Vec<IpNet>, KubeError> {
    let spec = node.spec.clone().unwrap_or_default();
    let listed = spec.pod_cidrs.filter(|l| !l.is_empty()).or_else(|| spec.pod_cidr.map(|c| vec![c])).unwrap_or_default();
    listed
        .iter()
        .map(|c| c.parse().map_err(|_| KubeError::Invalid { action: action.into(), what: format!("spec.podCIDRs: {c:?} is not a CIDR") }))
        .collect()
}
