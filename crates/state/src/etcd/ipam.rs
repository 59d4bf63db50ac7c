//! Cluster-pool IPAM: nodes take their pod CIDRs from cluster-wide pools, one key per
//! allocation, created only if absent, so two nodes never get the same subnet. Allocations of
//! nodes that are gone are marked orphaned and released after a grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::keys::{encode, Family, Key};
use super::{EtcdError, EtcdStore};

/// How many times an allocation retries after losing a race for a subnet.
const ALLOCATE_ATTEMPTS: u32 = 64;

/// The value of an `ipam/` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Allocation {
    node: String,
    /// When the node was first seen gone, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    orphaned_since: Option<u64>,
}

/// One allocation as read, with the revision that guards changing it.
struct Held {
    key: String,
    cidr: IpNet,
    allocation: Allocation,
    mod_revision: i64,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// The node's pod CIDRs, one from each pool (an IPv4 and/or an IPv6 one): its existing
    /// allocation when it has one, else the first free subnet of `/node_prefix_v4` or
    /// `/node_prefix_v6`.
    pub async fn allocate_pod_cidrs(
        &self,
        node: &str,
        pools: &[IpNet],
        node_prefix_v4: u8,
        node_prefix_v6: u8,
    ) -> Result<Vec<IpNet>, EtcdError> {
        let mut out = Vec::new();
        for pool in pools {
            let pool = pool.trunc();
            let prefix_len = match pool {
                IpNet::V4(_) => node_prefix_v4,
                IpNet::V6(_) => node_prefix_v6,
            };
            if prefix_len < pool.prefix_len() || prefix_len > pool.max_prefix_len() {
                return Err(EtcdError::BadPool { pool, prefix_len });
            }
            out.push(self.allocate_from(node, pool, prefix_len).await?);
        }
        Ok(out)
    }

    async fn allocate_from(&self, node: &str, pool: IpNet, prefix_len: u8) -> Result<IpNet, EtcdError> {
        let action = format!("allocating a pod CIDR for node {node} from {pool}");
        for _ in 0..ALLOCATE_ATTEMPTS {
            let held = self.read_allocations(Family::of(&pool), &action).await?;
            if let Some(mine) =
                held.iter().find(|h| h.allocation.node == node && pool.contains(&h.cidr) && h.cidr.prefix_len() == prefix_len)
            {
                if mine.allocation.orphaned_since.is_none() {
                    return Ok(mine.cidr);
                }
                // Back before its allocation was released: it is the node's again.
                let value = Allocation { node: node.to_string(), orphaned_since: None };
                let txn = Txn::new()
                    .when([Compare::mod_revision(mine.key.clone(), CompareOp::Equal, mine.mod_revision)])
                    .and_then([TxnOp::put(mine.key.clone(), encode(&mine.key, &value)?, None)]);
                if self.txn(txn, &action).await?.succeeded() {
                    return Ok(mine.cidr);
                }
                continue;
            }
            let taken: BTreeSet<IpNet> = held.iter().map(|h| h.cidr).collect();
            let subnets = pool.subnets(prefix_len).map_err(|_| EtcdError::BadPool { pool, prefix_len })?;
            // Overlap, not equality: allocations of another size may share the pool.
            let Some(free) = subnets.into_iter().find(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t))) else {
                return Err(EtcdError::PoolExhausted { pool, prefix_len });
            };
            let key = self.keys().ipam_cidr(&free);
            let value = Allocation { node: node.to_string(), orphaned_since: None };
            let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
                key.clone(),
                encode(&key, &value)?,
                None,
            )]);
            if self.txn(txn, &action).await?.succeeded() {
                return Ok(free);
            }
        }
        Err(EtcdError::Contention { endpoints: self.endpoints().to_string(), action, attempts: ALLOCATE_ATTEMPTS })
    }

    /// Looks at every pod-CIDR allocation: one whose node has no `nodes/` record is marked
    /// orphaned on first sight and released once it has been orphaned for `grace`; one whose
    /// node is back loses its mark. Returns the CIDRs released now.
    pub async fn release_orphaned_pod_cidrs(&self, grace: Duration) -> Result<Vec<IpNet>, EtcdError> {
        let action = "releasing orphaned pod CIDRs";
        let nodes: BTreeSet<String> = {
            let response = self.get_prefix(&self.keys().nodes(), action).await?;
            response
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok().and_then(|k| k.strip_prefix(self.keys().nodes().as_str())).map(str::to_string))
                .collect()
        };
        let now = unix_now();
        // Whole seconds, rounded up: the mark has a resolution of one second.
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let mut released = Vec::new();
        let mut held = self.read_allocations(Family::V4, action).await?;
        held.extend(self.read_allocations(Family::V6, action).await?);
        for h in held {
            let node_key = self.keys().node(&h.allocation.node);
            let unchanged = Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision);
            if nodes.contains(&h.allocation.node) {
                if h.allocation.orphaned_since.is_some() {
                    let value = Allocation { node: h.allocation.node.clone(), orphaned_since: None };
                    let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(h.key.clone(), encode(&h.key, &value)?, None)]);
                    self.txn(txn, action).await?;
                }
                continue;
            }
            let node_absent = Compare::create_revision(node_key, CompareOp::Equal, 0);
            match h.allocation.orphaned_since {
                None => {
                    let value = Allocation { node: h.allocation.node.clone(), orphaned_since: Some(now) };
                    let txn =
                        Txn::new().when([unchanged, node_absent]).and_then([TxnOp::put(h.key.clone(), encode(&h.key, &value)?, None)]);
                    self.txn(txn, action).await?;
                }
                Some(since) if now.saturating_sub(since) >= grace_secs => {
                    let txn = Txn::new().when([unchanged, node_absent]).and_then([TxnOp::delete(h.key.clone(), None)]);
                    if self.txn(txn, action).await?.succeeded() {
                        tracing::info!(cidr = %h.cidr, node = %h.allocation.node, "released an orphaned pod CIDR");
                        released.push(h.cidr);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(released)
    }

    /// Every pod-CIDR allocation, by CIDR: which node has it.
    pub async fn pod_cidr_allocations(&self) -> Result<BTreeMap<IpNet, String>, EtcdError> {
        let mut held = self.read_allocations(Family::V4, "reading pod CIDR allocations").await?;
        held.extend(self.read_allocations(Family::V6, "reading pod CIDR allocations").await?);
        Ok(held.into_iter().map(|h| (h.cidr, h.allocation.node)).collect())
    }

    async fn read_allocations(&self, family: Family, action: &str) -> Result<Vec<Held>, EtcdError> {
        let response = self.get_prefix(&self.keys().ipam_family(family), action).await?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            let Some(Key::Ipam(_, cidr)) = self.keys().parse(key) else {
                tracing::debug!(key, "ignoring an IPAM key of no known shape");
                continue;
            };
            let allocation: Allocation =
                serde_json::from_slice(kv.value()).map_err(|source| EtcdError::Decode { key: key.to_string(), source })?;
            out.push(Held { key: key.to_string(), cidr, allocation, mod_revision: kv.mod_revision() });
        }
        Ok(out)
    }
}

/// Seconds since the epoch (0 for a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
