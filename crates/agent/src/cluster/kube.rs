//! Membership of a cluster run by Kubernetes: the node's pod CIDRs come from its Node (or the
//! configuration), its SluiceNode and endpoints are objects owned by the Node, identities are
//! SluiceIdentities. There are no leases: an identity is in use while a published endpoint
//! names it, and the collector reads that from the cluster view.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use sluice_kube::KubeCluster;
use sluice_model::Batcher;
use sluice_state::{ClusterState, EndpointRecord};

use crate::config::{AgentConfig, EndpointsMode};
use crate::error::AgentError;

pub struct KubeMember {
    cluster: Arc<KubeCluster>,
    /// Identities this node uses now (its endpoints may not be published yet).
    held: Mutex<BTreeSet<u32>>,
    grace: Duration,
}

impl KubeMember {
    pub async fn join(config: &AgentConfig, addresses: Vec<IpAddr>) -> Result<(Self, Vec<IpNet>), AgentError> {
        let access = config.state.kubernetes.clone().unwrap_or_default();
        let client = sluice_kube::connect(&access).await?;
        let batcher = match config.state.endpoints {
            EndpointsMode::Slices => Some(Batcher::new(&config.node_name, config.state.endpoints_per_slice)?),
            EndpointsMode::PerPod => None,
        };
        let cluster = KubeCluster::new(client, &config.node_name, batcher);
        let wait = Duration::from_secs(access.pod_cidr_wait_seconds);
        let pod_cidrs = cluster.join(addresses, &config.pod_cidrs, wait).await?;
        tracing::info!(node = %config.node_name, pod_cidrs = ?pod_cidrs, "joined the Kubernetes cluster");
        let member = Self {
            cluster: Arc::new(cluster),
            held: Mutex::new(BTreeSet::new()),
            grace: Duration::from_secs(config.state.release_grace_seconds),
        };
        Ok((member, pod_cidrs))
    }

    pub fn cluster(&self) -> &Arc<KubeCluster> {
        &self.cluster
    }

    pub async fn set_health(&self, health: &str, host_routing: &str) -> Result<(), AgentError> {
        Ok(self.cluster.set_health(health, host_routing).await?)
    }

    pub async fn publish_endpoints(&self, wanted: BTreeMap<String, EndpointRecord>) -> Result<usize, AgentError> {
        Ok(self.cluster.publish_endpoints(wanted).await?)
    }

    pub fn hold_identities(&self, wanted: BTreeSet<u32>) {
        *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = wanted;
    }

    /// Collects the identities no published endpoint and no identity this node uses names.
    pub async fn collect(&self, state: &ClusterState) -> Result<Vec<u32>, AgentError> {
        let mut in_use: BTreeSet<u32> = state.published_endpoints().map(|e| e.identity).collect();
        in_use.extend(self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().copied());
        Ok(self.cluster.collect_identities(&in_use, self.grace).await?)
    }
}
