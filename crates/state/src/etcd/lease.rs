//! Node registration: a node agent's record, its published endpoints (records or slices) and its
//! holds on identities are bound to one etcd lease that a task keeps alive. When the agent dies
//! the lease expires and all of it vanishes at once; when the lease is lost while the agent lives
//! (etcd was out of reach longer than the TTL) the task grants a new one and publishes everything
//! it remembers. A plan of slice writes is applied in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use sluice_model::{Plan, SliceWrite, SluiceEndpointSlice};

use super::keys::encode;
use super::store::MAX_TXN_OPS;
use super::{EtcdError, EtcdStore};
use crate::cluster::{EndpointRecord, NodeRecord};

/// A node's registration; see the module docs. Dropping it stops the keep-alive without
/// revoking: the keys expire after the TTL. [`NodeLease::revoke`] removes them at once.
pub struct NodeLease {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    store: EtcdStore,
    node: String,
    ttl_secs: i64,
    /// The lease now, for readers that must not wait for the lock (0: none).
    lease_id: AtomicI64,
    held: tokio::sync::Mutex<Held>,
}

/// What the node has published, to publish again under a new lease.
struct Held {
    /// 0 while no lease is granted.
    lease: i64,
    record: NodeRecord,
    /// By `namespace/name`.
    endpoints: BTreeMap<String, EndpointRecord>,
    /// The node's endpoint slices as last written, by `namespace/name`.
    slices: BTreeMap<String, SluiceEndpointSlice>,
    identities: BTreeSet<u32>,
    /// Keys whose deletion did not reach etcd yet.
    stale: BTreeSet<String>,
    /// Slices (`namespace/name`) a failed transaction wrote or deleted: whether it committed is
    /// unknown, so the next plan reads them back from etcd first.
    slices_uncertain: BTreeSet<(String, String)>,
    /// A write failed: the keep-alive task publishes everything again.
    dirty: bool,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Grants a lease of `ttl_secs`, writes `nodes/<name>` bound to it and keeps it alive (a
    /// request every third of the TTL).
    ///
    /// The node's endpoint slices left by an earlier run of its agent (still bound to that
    /// run's lease) are taken over: written again under the new lease in the same transaction,
    /// and remembered as the slices the node's next plan starts from.
    pub async fn register_node(&self, record: &NodeRecord, ttl_secs: i64) -> Result<NodeLease, EtcdError> {
        let slices = self.node_slices(&record.name).await?;
        let lease = grant(self, ttl_secs, &record.name).await?;
        let key = self.keys().node(&record.name);
        let value = encode(&key, record)?;
        let with_lease = Some(PutOptions::new().with_lease(lease));
        let mut ops = vec![TxnOp::put(key.clone(), value, with_lease.clone())];
        for slice in slices.values().take(MAX_TXN_OPS - 1) {
            let key = self.keys().endpoint_slice(&slice.namespace, &slice.name);
            ops.push(TxnOp::put(key.clone(), encode(&key, slice)?, with_lease.clone()));
        }
        let put = Txn::new().and_then(ops);
        if let Err(e) = self.txn(put, &format!("registering node {}", record.name)).await {
            let _ = self.client().lease_revoke(lease).await;
            return Err(e);
        }
        let shared = Arc::new(Shared {
            store: self.clone(),
            node: record.name.clone(),
            ttl_secs,
            lease_id: AtomicI64::new(lease),
            held: tokio::sync::Mutex::new(Held {
                lease,
                record: record.clone(),
                endpoints: BTreeMap::new(),
                // More slices than one transaction holds are all written by the first republish.
                dirty: slices.len() >= MAX_TXN_OPS,
                slices,
                identities: BTreeSet::new(),
                stale: BTreeSet::new(),
                slices_uncertain: BTreeSet::new(),
            }),
        });
        let task = tokio::spawn(keep_alive(shared.clone()));
        Ok(NodeLease { shared, task })
    }

    /// The endpoint slices `node` wrote, by `namespace/name`; slices that do not decode are
    /// skipped.
    async fn node_slices(&self, node: &str) -> Result<BTreeMap<String, SluiceEndpointSlice>, EtcdError> {
        let prefix = self.keys().endpoint_slices();
        let response = self
            .client()
            .kv_client()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error(format!("reading the endpoint slices of node {node}"), e))?;
        let mut out = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let slice: SluiceEndpointSlice = match serde_json::from_slice(kv.value()) {
                Ok(slice) => slice,
                Err(e) => {
                    // Another writer's bad slice must not keep this node out of the cluster.
                    tracing::warn!(key, error = %e, "ignoring an endpoint slice that does not decode");
                    continue;
                }
            };
            if slice.node == node {
                out.insert(format!("{}/{}", slice.namespace, slice.name), slice);
            }
        }
        Ok(out)
    }
}

async fn grant(store: &EtcdStore, ttl_secs: i64, node: &str) -> Result<i64, EtcdError> {
    let response =
        store.client().lease_grant(ttl_secs, None).await.map_err(|e| store.error(format!("granting a lease for node {node}"), e))?;
    Ok(response.id())
}

// === impl NodeLease ===

impl NodeLease {
    /// The lease the node's keys are bound to now (0 while it is being granted anew).
    pub fn lease_id(&self) -> i64 {
        self.shared.lease_id.load(Ordering::Relaxed)
    }

    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Replaces the node's record.
    pub async fn update_node(&self, record: &NodeRecord) -> Result<(), EtcdError> {
        let mut held = self.shared.held.lock().await;
        held.record = record.clone();
        let key = self.shared.store.keys().node(&self.shared.node);
        let value = encode(&key, record)?;
        self.shared.put(&mut held, key, value).await
    }

    /// Publishes (or replaces) an endpoint of this node.
    pub async fn publish_endpoint(&self, endpoint: &EndpointRecord) -> Result<(), EtcdError> {
        let mut held = self.shared.held.lock().await;
        let key = self.shared.store.keys().endpoint(&endpoint.namespace, &endpoint.name);
        held.endpoints.insert(format!("{}/{}", endpoint.namespace, endpoint.name), endpoint.clone());
        held.stale.remove(&key);
        let value = encode(&key, endpoint)?;
        self.shared.put(&mut held, key, value).await
    }

    /// Withdraws an endpoint of this node.
    pub async fn withdraw_endpoint(&self, namespace: &str, name: &str) -> Result<(), EtcdError> {
        let mut held = self.shared.held.lock().await;
        held.endpoints.remove(&format!("{namespace}/{name}"));
        let key = self.shared.store.keys().endpoint(namespace, name);
        self.shared.delete(&mut held, key).await
    }

    /// The node's endpoint slices as last written (or taken over at registration): what the
    /// next [`Plan`] starts from.
    ///
    /// After a slice transaction failed, its outcome is unknown (a reply lost on the way may
    /// hide a commit): the slices it touched are then read back from etcd (one transaction of
    /// reads, only those keys: a thousand nodes failing at once must not each read every slice),
    /// so a slice the failed write created is planned away and one it deleted is planned anew,
    /// rather than left behind or forgotten.
    pub async fn slices(&self) -> Result<Vec<SluiceEndpointSlice>, EtcdError> {
        let mut held = self.shared.held.lock().await;
        if !held.slices_uncertain.is_empty() {
            let uncertain = std::mem::take(&mut held.slices_uncertain);
            if let Err(e) = self.read_back(&mut held, &uncertain).await {
                held.slices_uncertain = uncertain;
                return Err(e);
            }
            tracing::info!(node = %self.shared.node, slices = uncertain.len(), "read slices back after a failed write");
        }
        Ok(held.slices.values().cloned().collect())
    }

    /// Applies `plan` to the node's endpoint slices in one etcd transaction, so no reader sees
    /// it half applied (an endpoint changing identity leaves one slice and joins another in the
    /// same revision). A plan larger than a transaction holds (more than [`MAX_TXN_OPS`] slices
    /// changed in one round: a node's first publication with that many identity groups) is
    /// written in several, in plan order, rather than never: between them a reader may see an
    /// identity change half applied, which the next revision completes. On failure the slices
    /// held are those of the transactions that succeeded.
    pub async fn apply_slices(&self, plan: &Plan) -> Result<(), EtcdError> {
        if plan.writes.is_empty() {
            return Ok(());
        }
        let mut held = self.shared.held.lock().await;
        let keys = self.shared.store.keys();
        if held.lease == 0 {
            return Err(EtcdError::NoLease { endpoints: self.shared.store.endpoints().to_string(), node: self.shared.node.clone() });
        }
        if plan.writes.len() > MAX_TXN_OPS {
            tracing::warn!(
                node = %self.shared.node,
                writes = plan.writes.len(),
                "an endpoint slice plan larger than one etcd transaction is written in several"
            );
        }
        let lease = Some(PutOptions::new().with_lease(held.lease));
        for chunk in plan.writes.chunks(MAX_TXN_OPS) {
            let mut ops = Vec::with_capacity(chunk.len());
            for write in chunk {
                match write {
                    SliceWrite::Create(slice) | SliceWrite::Update(slice) => {
                        let key = keys.endpoint_slice(&slice.namespace, &slice.name);
                        ops.push(TxnOp::put(key.clone(), encode(&key, slice)?, lease.clone()));
                    }
                    SliceWrite::Delete { namespace, name } => ops.push(TxnOp::delete(keys.endpoint_slice(namespace, name), None)),
                }
            }
            let action = format!("writing the endpoint slices of node {} ({} writes)", self.shared.node, ops.len());
            if let Err(e) = self.shared.store.txn(Txn::new().and_then(ops), &action).await {
                held.slices_uncertain.extend(chunk.iter().map(|w| {
                    let (namespace, name) = w.key();
                    (namespace.to_string(), name.to_string())
                }));
                return Err(e);
            }
            for write in chunk {
                match write {
                    SliceWrite::Create(slice) | SliceWrite::Update(slice) => {
                        held.slices.insert(format!("{}/{}", slice.namespace, slice.name), slice.clone());
                        held.stale.remove(&keys.endpoint_slice(&slice.namespace, &slice.name));
                    }
                    SliceWrite::Delete { namespace, name } => drop(held.slices.remove(&format!("{namespace}/{name}"))),
                }
            }
        }
        Ok(())
    }

    /// Replaces what `held` remembers of `slices` with what etcd holds of them (this node's
    /// only: a slice of that name another node wrote is not ours to plan from).
    async fn read_back(&self, held: &mut Held, slices: &BTreeSet<(String, String)>) -> Result<(), EtcdError> {
        let keys = self.shared.store.keys();
        let slices: Vec<&(String, String)> = slices.iter().collect();
        for chunk in slices.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|(ns, name)| TxnOp::get(keys.endpoint_slice(ns, name), None)).collect();
            let action = format!("reading back {} endpoint slices of node {}", ops.len(), self.shared.node);
            let response = self.shared.store.txn(Txn::new().and_then(ops), &action).await?;
            for ((namespace, name), op) in chunk.iter().zip(response.op_responses()) {
                let id = format!("{namespace}/{name}");
                let found = match op {
                    etcd_client::TxnOpResponse::Get(get) => {
                        get.kvs().first().and_then(|kv| serde_json::from_slice::<SluiceEndpointSlice>(kv.value()).ok())
                    }
                    _ => None,
                };
                match found {
                    Some(slice) if slice.node == self.shared.node => drop(held.slices.insert(id, slice)),
                    _ => drop(held.slices.remove(&id)),
                }
            }
        }
        Ok(())
    }

    /// Records that this node uses identity `id`, so it is not collected.
    pub async fn hold_identity(&self, id: u32) -> Result<(), EtcdError> {
        let mut held = self.shared.held.lock().await;
        held.identities.insert(id);
        let key = self.shared.store.keys().identity_ref(id, &self.shared.node);
        held.stale.remove(&key);
        let value = self.shared.node.clone().into_bytes();
        self.shared.put(&mut held, key, value).await
    }

    /// Drops this node's hold on identity `id`.
    pub async fn release_identity(&self, id: u32) -> Result<(), EtcdError> {
        let mut held = self.shared.held.lock().await;
        held.identities.remove(&id);
        let key = self.shared.store.keys().identity_ref(id, &self.shared.node);
        self.shared.delete(&mut held, key).await
    }

    /// Stops keeping the lease alive and revokes it: the node's record, endpoints and holds
    /// vanish in one revision.
    pub async fn revoke(self) -> Result<(), EtcdError> {
        self.task.abort();
        let lease = self.shared.held.lock().await.lease;
        if lease == 0 {
            return Ok(());
        }
        let store = &self.shared.store;
        store
            .client()
            .lease_revoke(lease)
            .await
            .map(drop)
            .map_err(|e| store.error(format!("revoking the lease of node {}", self.shared.node), e))
    }

    /// Stops keeping the lease alive without revoking it, as if the agent had died: the keys
    /// expire after the TTL.
    pub fn abandon(self) {
        self.task.abort();
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Shared ===

impl Shared {
    async fn put(&self, held: &mut Held, key: String, value: Vec<u8>) -> Result<(), EtcdError> {
        if held.lease == 0 {
            held.dirty = true;
            return Err(EtcdError::NoLease { endpoints: self.store.endpoints().to_string(), node: self.node.clone() });
        }
        let txn = Txn::new().and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(held.lease)))]);
        let result = self.store.txn(txn, &format!("writing {key}")).await;
        if result.is_err() {
            held.dirty = true;
        }
        result.map(drop)
    }

    async fn delete(&self, held: &mut Held, key: String) -> Result<(), EtcdError> {
        let txn = Txn::new().and_then([TxnOp::delete(key.clone(), None)]);
        match self.store.txn(txn, &format!("deleting {key}")).await {
            Ok(_) => Ok(()),
            Err(e) => {
                held.stale.insert(key);
                held.dirty = true;
                Err(e)
            }
        }
    }

    /// Writes everything `held` remembers under its lease and deletes what is stale.
    async fn republish(&self, held: &mut Held) -> Result<(), EtcdError> {
        let keys = self.store.keys();
        let lease = Some(PutOptions::new().with_lease(held.lease));
        let mut ops = Vec::new();
        let node_key = keys.node(&self.node);
        ops.push(TxnOp::put(node_key.clone(), encode(&node_key, &held.record)?, lease.clone()));
        for endpoint in held.endpoints.values() {
            let key = keys.endpoint(&endpoint.namespace, &endpoint.name);
            ops.push(TxnOp::put(key.clone(), encode(&key, endpoint)?, lease.clone()));
        }
        for slice in held.slices.values() {
            let key = keys.endpoint_slice(&slice.namespace, &slice.name);
            ops.push(TxnOp::put(key.clone(), encode(&key, slice)?, lease.clone()));
        }
        for id in &held.identities {
            ops.push(TxnOp::put(keys.identity_ref(*id, &self.node), self.node.clone(), lease.clone()));
        }
        for key in &held.stale {
            ops.push(TxnOp::delete(key.clone(), None));
        }
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<TxnOp> = ops.by_ref().take(MAX_TXN_OPS).collect();
            self.store.txn(Txn::new().and_then(chunk), &format!("publishing node {} again", self.node)).await?;
        }
        held.stale.clear();
        held.dirty = false;
        Ok(())
    }

    fn set_lease(&self, held: &mut Held, lease: i64) {
        held.lease = lease;
        self.lease_id.store(lease, Ordering::Relaxed);
    }
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::LeaseKeepAliveError(_)) || e.to_string().contains("lease not found")
}

/// Keeps the lease alive; grants a new one and publishes again when it is lost; publishes
/// again when a write failed.
async fn keep_alive(shared: Arc<Shared>) {
    let interval = Duration::from_millis(u64::try_from(shared.ttl_secs.max(1)).unwrap_or(1) * 1000 / 3);
    let mut leases = shared.store.client().lease_client();
    loop {
        let lease = {
            let mut held = shared.held.lock().await;
            if held.lease == 0 {
                match grant(&shared.store, shared.ttl_secs, &shared.node).await {
                    Ok(lease) => {
                        shared.set_lease(&mut held, lease);
                        held.dirty = true;
                        tracing::info!(node = %shared.node, lease, "granted a new lease");
                    }
                    Err(e) => {
                        drop(held);
                        tracing::warn!(error = %e, "node lease");
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                }
            }
            held.lease
        };
        let (mut keeper, mut responses) = match leases.keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => {
                if lease_not_found(&e) {
                    tracing::warn!(node = %shared.node, lease, "the node's lease expired; granting a new one");
                    shared.set_lease(&mut *shared.held.lock().await, 0);
                } else {
                    tracing::warn!(error = %shared.store.error("keeping the node's lease alive", e), "node lease");
                    tokio::time::sleep(interval).await;
                }
                continue;
            }
        };
        loop {
            {
                let mut held = shared.held.lock().await;
                if held.dirty {
                    if let Err(e) = shared.republish(&mut held).await {
                        tracing::warn!(error = %e, "node lease: publishing again");
                    }
                }
            }
            tokio::time::sleep(interval).await;
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(interval.max(Duration::from_secs(1)), responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                Ok(Ok(Some(_))) => {
                    tracing::warn!(node = %shared.node, lease, "the node's lease expired; granting a new one");
                    shared.set_lease(&mut *shared.held.lock().await, 0);
                    break;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tracing::warn!(node = %shared.node, lease, "lost the keep-alive stream; reconnecting");
                    break;
                }
            }
        }
    }
}
