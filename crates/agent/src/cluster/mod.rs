//! Cluster mode: the node joins the cluster — its pod CIDRs come from the cluster (the etcd
//! pools, or its Kubernetes Node) — and then keeps, level-triggered, what it shares with the
//! other nodes in step: its published endpoints (one object per pod, or batched into the
//! node's endpoint slices: each agent writes its own node's slices), the identities it uses,
//! and its routes to the other nodes' pod CIDRs. [`Cluster`] is the one face of both
//! datastores; [`etcd`] and [`kube`] are each membership.

pub mod etcd;
pub mod kube;
pub mod numbering;
pub mod routes;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sluice_state::{ClusterState, EndpointRecord, StateSource};

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::identity::Numbering;

/// This node's membership of the cluster, in whichever datastore runs it.
pub enum Cluster {
    Etcd(Box<etcd::EtcdMember>),
    Kubernetes(kube::KubeMember),
}

// === impl Cluster ===

impl Cluster {
    /// Joins the cluster the configuration names; returns the membership and the pod CIDRs
    /// in force.
    pub async fn join(config: &AgentConfig, addresses: Vec<IpAddr>) -> Result<(Self, Vec<IpNet>), AgentError> {
        if config.state.is_kubernetes() {
            let (member, cidrs) = kube::KubeMember::join(config, addresses).await?;
            return Ok((Self::Kubernetes(member), cidrs));
        }
        let (member, cidrs) = etcd::EtcdMember::join(config, addresses).await?;
        Ok((Self::Etcd(Box::new(member)), cidrs))
    }

    /// The cluster's view as a state source.
    pub fn state_source(&self, config: &AgentConfig) -> Option<Arc<dyn StateSource>> {
        match self {
            Self::Etcd(_) => {
                config.state.etcd.clone().map(|etcd| Arc::new(sluice_state::etcd::EtcdSource::spawn(etcd)) as Arc<dyn StateSource>)
            }
            Self::Kubernetes(m) => Some(Arc::new(sluice_kube::KubeSource::spawn(m.cluster().client().clone(), &config.node_name))),
        }
    }

    /// Numbers label sets through the cluster's allocator.
    pub fn numbering(&self, runtime: tokio::runtime::Handle) -> Arc<dyn Numbering> {
        let allocator = match self {
            Self::Etcd(m) => numbering::Allocator::Etcd(Box::new(m.store().clone())),
            Self::Kubernetes(m) => numbering::Allocator::Kubernetes(m.cluster().clone()),
        };
        Arc::new(numbering::ClusterNumbering::new(allocator, runtime))
    }

    /// Updates the node's record: health and host routing as the agent now has them.
    pub async fn set_health(&self, health: &str, host_routing: &str) -> Result<(), AgentError> {
        match self {
            Self::Etcd(m) => m.set_health(health, host_routing).await,
            Self::Kubernetes(m) => m.set_health(health, host_routing).await,
        }
    }

    /// Publishes `wanted` (this node's endpoints) and withdraws what it no longer has. Returns
    /// how many objects were written or deleted.
    pub async fn publish_endpoints(&self, wanted: BTreeMap<String, EndpointRecord>) -> Result<usize, AgentError> {
        match self {
            Self::Etcd(m) => m.publish_endpoints(wanted).await,
            Self::Kubernetes(m) => m.publish_endpoints(wanted).await,
        }
    }

    /// Declares the identities the node uses, so the cluster collects only identities no node
    /// uses.
    pub async fn hold_identities(&self, wanted: BTreeSet<u32>) -> Result<(), AgentError> {
        match self {
            Self::Etcd(m) => m.hold_identities(wanted).await,
            Self::Kubernetes(m) => {
                m.hold_identities(wanted);
                Ok(())
            }
        }
    }

    /// Releases what vanished nodes left (pod CIDRs, with etcd) and identities nobody used
    /// for the grace period; `state` is the cluster view. Any node may run it.
    pub async fn collect(&self, state: &ClusterState) -> Result<(Vec<IpNet>, Vec<u32>), AgentError> {
        match self {
            Self::Etcd(m) => m.collect().await,
            Self::Kubernetes(m) => Ok((Vec::new(), m.collect(state).await?)),
        }
    }
}
