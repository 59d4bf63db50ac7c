//! Membership of an etcd cluster: the node's pod CIDRs come from the cluster pools, its record
//! lives as long as its lease, its endpoints are records or slices bound to that lease, and it
//! holds a reference on each identity it uses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use sluice_model::{Batcher, DesiredEndpoint};
use sluice_state::etcd::{EtcdStore, NodeLease};
use sluice_state::{EndpointRecord, NodeRecord};

use crate::config::{AgentConfig, EndpointsMode};
use crate::error::AgentError;

/// This node's membership of an etcd cluster.
pub struct EtcdMember {
    store: EtcdStore,
    lease: NodeLease,
    /// `Some` when endpoints are published in slices.
    batcher: Option<Batcher>,
    record: Mutex<NodeRecord>,
    /// Endpoints published, by `namespace/name`.
    published: Mutex<BTreeMap<String, EndpointRecord>>,
    /// Identities this node holds a reference on in the cluster.
    held: Mutex<BTreeSet<u32>>,
    grace: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl EtcdMember ===

impl EtcdMember {
    /// Connects to the cluster's datastore, takes the node's pod CIDRs (from the configuration,
    /// or from the cluster pools: the node's earlier allocation when it has one) and registers
    /// the node under a lease. Returns the membership and the pod CIDRs in force.
    pub async fn join(config: &AgentConfig, addresses: Vec<IpAddr>) -> Result<(Self, Vec<IpNet>), AgentError> {
        let Some(etcd) = &config.state.etcd else {
            return Err(AgentError::Startup {
                action: "joining the cluster".into(),
                source: std::io::Error::other("state.etcd is not set"),
            });
        };
        let batcher = match config.state.endpoints {
            EndpointsMode::Slices => Some(Batcher::new(&config.node_name, config.state.endpoints_per_slice)?),
            EndpointsMode::PerPod => None,
        };
        let store = EtcdStore::connect(etcd).await.map_err(sluice_state::StoreError::from)?;
        let pod_cidrs = if config.pod_cidrs.is_empty() {
            store
                .allocate_pod_cidrs(
                    &config.node_name,
                    &config.state.cluster_pool_cidrs,
                    config.state.node_mask_v4,
                    config.state.node_mask_v6,
                )
                .await
                .map_err(sluice_state::StoreError::from)?
        } else {
            config.pod_cidrs.clone()
        };
        let record = NodeRecord {
            name: config.node_name.clone(),
            addresses,
            pod_cidrs: pod_cidrs.clone(),
            host_routing: String::new(),
            health: "starting".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            registered: chrono::Utc::now().to_rfc3339(),
        };
        let lease = store.register_node(&record, config.state.lease_seconds).await.map_err(sluice_state::StoreError::from)?;
        tracing::info!(node = %record.name, pod_cidrs = ?pod_cidrs, lease = lease.lease_id(), "joined the cluster");
        let cluster = Self {
            store,
            lease,
            batcher,
            record: Mutex::new(record),
            published: Mutex::new(BTreeMap::new()),
            held: Mutex::new(BTreeSet::new()),
            grace: Duration::from_secs(config.state.release_grace_seconds),
        };
        Ok((cluster, pod_cidrs))
    }

    pub fn store(&self) -> &EtcdStore {
        &self.store
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.lease.node()
    }

    /// Updates the node's record: health and host routing as the agent now has them.
    pub async fn set_health(&self, health: &str, host_routing: &str) -> Result<(), AgentError> {
        let record = {
            let mut r = lock(&self.record);
            if r.health == health && r.host_routing == host_routing {
                return Ok(());
            }
            r.health = health.into();
            r.host_routing = host_routing.into();
            r.clone()
        };
        self.lease.update_node(&record).await.map_err(sluice_state::StoreError::from)?;
        Ok(())
    }

    /// Publishes `wanted` (this node's endpoints) and withdraws what it no longer has: in
    /// slice mode as one plan over the node's slices as last written, applied in one
    /// transaction; per pod, record by record. Returns how many keys were written or deleted.
    pub async fn publish_endpoints(&self, wanted: BTreeMap<String, EndpointRecord>) -> Result<usize, AgentError> {
        if let Some(batcher) = &self.batcher {
            let desired: Vec<DesiredEndpoint> = wanted
                .into_values()
                .map(|r| DesiredEndpoint { namespace: r.namespace, name: r.name, identity: r.identity, addresses: r.ips })
                .collect();
            let existing = self.lease.slices().await.map_err(sluice_state::StoreError::from)?;
            let plan = batcher.plan(&existing, &desired)?;
            if !plan.writes.is_empty() {
                tracing::debug!(writes = plan.writes.len(), endpoints = desired.len(), "writing the node's endpoint slices");
            }
            self.lease.apply_slices(&plan).await.map_err(sluice_state::StoreError::from)?;
            return Ok(plan.writes.len());
        }
        let published = lock(&self.published).clone();
        let mut writes = 0;
        for (key, record) in &wanted {
            if published.get(key) != Some(record) {
                self.lease.publish_endpoint(record).await.map_err(sluice_state::StoreError::from)?;
                lock(&self.published).insert(key.clone(), record.clone());
                writes += 1;
            }
        }
        for (key, record) in published.iter().filter(|(k, _)| !wanted.contains_key(*k)) {
            self.lease.withdraw_endpoint(&record.namespace, &record.name).await.map_err(sluice_state::StoreError::from)?;
            lock(&self.published).remove(key);
            writes += 1;
        }
        Ok(writes)
    }

    /// Holds a reference on each of `wanted` (the identities the node uses) and lets go of the
    /// rest, so the cluster collects only identities no node uses.
    pub async fn hold_identities(&self, wanted: BTreeSet<u32>) -> Result<(), AgentError> {
        let held = lock(&self.held).clone();
        for id in wanted.difference(&held) {
            self.lease.hold_identity(*id).await.map_err(sluice_state::StoreError::from)?;
            lock(&self.held).insert(*id);
        }
        for id in held.difference(&wanted) {
            self.lease.release_identity(*id).await.map_err(sluice_state::StoreError::from)?;
            lock(&self.held).remove(id);
        }
        Ok(())
    }

    /// Releases the pod CIDRs of nodes gone longer than the grace period and the identities
    /// no node has held as long. Any node may run it: etcd transactions settle races.
    pub async fn collect(&self) -> Result<(Vec<IpNet>, Vec<u32>), AgentError> {
        let cidrs = self.store.release_orphaned_pod_cidrs(self.grace).await.map_err(sluice_state::StoreError::from)?;
        let ids = self.store.collect_identities(self.grace).await.map_err(sluice_state::StoreError::from)?;
        Ok((cidrs, ids))
    }
}
