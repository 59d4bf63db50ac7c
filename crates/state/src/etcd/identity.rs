//! Cluster-wide security identities: one number per distinct label set, the same on every node.
//! A number and its label key are created together in one transaction, only if neither exists,
//! so agents racing for the same labels settle on one number. Numbers no node holds are marked
//! and collected after a grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

use super::ipam::unix_now;
use super::keys::{encode, prefix_end, Key};
use super::{EtcdError, EtcdStore};
use crate::cluster::IdentityRecord;

/// The first number handed out; those below are reserved (host, world, remote nodes, ...).
pub const FIRST_CLUSTER_IDENTITY: u32 = 256;
/// Identities are 24-bit numbers in the datapath.
pub const LAST_CLUSTER_IDENTITY: u32 = (1 << 24) - 1;
/// How many times an allocation retries after losing a race for a number.
const ALLOCATE_ATTEMPTS: u32 = 64;

/// The value of an `identities/id/` key: the record and, while no node holds it, since when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredIdentity {
    #[serde(flatten)]
    record: IdentityRecord,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unused_since: Option<u64>,
}

/// The identity keys as read at one revision.
#[derive(Default)]
struct Identities {
    /// By number: the stored value and its mod revision.
    ids: BTreeMap<u32, (StoredIdentity, i64)>,
    /// Label-hash key → number.
    labels: BTreeMap<String, u32>,
    /// Numbers that some node holds.
    held: BTreeSet<u32>,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// The cluster-wide number of a label set (`canonical` is its canonical string, `labels`
    /// the labels themselves): the existing one, or a new one from [`FIRST_CLUSTER_IDENTITY`].
    pub async fn allocate_identity(&self, canonical: &str, labels: &BTreeMap<String, String>) -> Result<u32, EtcdError> {
        let action = "allocating an identity";
        let labels_key = self.keys().identity_labels(canonical);
        let mut candidate = None;
        for _ in 0..ALLOCATE_ATTEMPTS {
            if let Some(id) = self.existing_identity(&labels_key, action).await? {
                return Ok(id);
            }
            let id = match candidate {
                Some(id) => id,
                None => self.free_identity(action).await?,
            };
            let id_key = self.keys().identity(id);
            let value = StoredIdentity { record: IdentityRecord { id, labels: labels.clone() }, unused_since: None };
            let txn = Txn::new()
                .when([
                    Compare::create_revision(labels_key.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(id_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(labels_key.clone(), id.to_string(), None),
                    TxnOp::put(id_key.clone(), encode(&id_key, &value)?, None),
                ])
                .or_else([TxnOp::get(labels_key.clone(), None)]);
            let response = self.txn(txn, action).await?;
            if response.succeeded() {
                return Ok(id);
            }
            // Someone else got there first: with these labels (the loop returns theirs) or with
            // this number (try the next free one).
            let labels_taken = response.op_responses().iter().any(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
            candidate = if labels_taken { None } else { self.next_free_identity(id, action).await? };
        }
        Err(EtcdError::Contention { endpoints: self.endpoints().to_string(), action: action.into(), attempts: ALLOCATE_ATTEMPTS })
    }

    /// The number under `labels_key`; an `unusedSince` mark on it is cleared, so a collector
    /// that saw it unused cannot delete it now.
    async fn existing_identity(&self, labels_key: &str, action: &str) -> Result<Option<u32>, EtcdError> {
        loop {
            let response = self.get(labels_key.to_string(), None, action).await?;
            let Some(kv) = response.kvs().first() else {
                return Ok(None);
            };
            let Some(id) = kv.value_str().ok().and_then(|v| v.parse::<u32>().ok()) else {
                return Err(EtcdError::Decode { key: labels_key.to_string(), source: serde::de::Error::custom("not an identity number") });
            };
            let id_key = self.keys().identity(id);
            let response = self.get(id_key.clone(), None, action).await?;
            let Some(kv) = response.kvs().first() else {
                return Ok(Some(id));
            };
            let mut stored: StoredIdentity =
                serde_json::from_slice(kv.value()).map_err(|source| EtcdError::Decode { key: id_key.clone(), source })?;
            if stored.unused_since.take().is_none() {
                return Ok(Some(id));
            }
            let txn = Txn::new().when([Compare::mod_revision(id_key.clone(), CompareOp::Equal, kv.mod_revision())]).and_then([TxnOp::put(
                id_key.clone(),
                encode(&id_key, &stored)?,
                None,
            )]);
            if self.txn(txn, action).await?.succeeded() {
                return Ok(Some(id));
            }
            // Changed meanwhile (collected, or unmarked by another agent): look again.
        }
    }

    /// The number after the highest one in use, or the lowest free one when that runs past
    /// [`LAST_CLUSTER_IDENTITY`].
    async fn free_identity(&self, action: &str) -> Result<u32, EtcdError> {
        let used = self.identity_numbers(action).await?;
        match used.last() {
            None => Ok(FIRST_CLUSTER_IDENTITY),
            Some(&max) if max < LAST_CLUSTER_IDENTITY => Ok((max + 1).max(FIRST_CLUSTER_IDENTITY)),
            Some(_) => lowest_free(&used, FIRST_CLUSTER_IDENTITY),
        }
    }

    /// The first free number after `taken` (wrapping to the lowest free one).
    async fn next_free_identity(&self, taken: u32, action: &str) -> Result<Option<u32>, EtcdError> {
        let used = self.identity_numbers(action).await?;
        let after = taken.saturating_add(1);
        if after <= LAST_CLUSTER_IDENTITY {
            if let Ok(id) = lowest_free(&used, after) {
                return Ok(Some(id));
            }
        }
        lowest_free(&used, FIRST_CLUSTER_IDENTITY).map(Some)
    }

    async fn identity_numbers(&self, action: &str) -> Result<BTreeSet<u32>, EtcdError> {
        let prefix = self.keys().identity_ids();
        let options = etcd_client::GetOptions::new().with_range(prefix_end(&prefix)).with_keys_only();
        let response = self.get(prefix, Some(options), action).await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| match self.keys().parse(kv.key_str().ok()?) {
                Some(Key::Identity(id)) => Some(id),
                _ => None,
            })
            .collect())
    }

    /// Looks at every identity: one no node holds is marked unused on first sight and deleted
    /// (its number and its label key, in one transaction) once unused for `grace`; a held one
    /// loses its mark. Returns the numbers deleted now.
    pub async fn collect_identities(&self, grace: Duration) -> Result<Vec<u32>, EtcdError> {
        let action = "collecting unused identities";
        let all = self.read_identities(action).await?;
        let now = unix_now();
        let grace_secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let mut deleted = Vec::new();
        for (id, (mut stored, mod_revision)) in all.ids {
            let id_key = self.keys().identity(id);
            let unchanged = Compare::mod_revision(id_key.clone(), CompareOp::Equal, mod_revision);
            if all.held.contains(&id) {
                if stored.unused_since.take().is_some() {
                    let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(id_key.clone(), encode(&id_key, &stored)?, None)]);
                    self.txn(txn, action).await?;
                }
                continue;
            }
            let refs = self.keys().identity_refs(id);
            // Over a range, version == 0 holds only when no key is in it.
            let unheld = Compare::version(refs.clone(), CompareOp::Equal, 0).with_range(prefix_end(&refs));
            match stored.unused_since {
                None => {
                    stored.unused_since = Some(now);
                    let txn = Txn::new().when([unchanged, unheld]).and_then([TxnOp::put(id_key.clone(), encode(&id_key, &stored)?, None)]);
                    self.txn(txn, action).await?;
                }
                Some(since) if now.saturating_sub(since) >= grace_secs => {
                    let mut ops = vec![TxnOp::delete(id_key.clone(), None)];
                    let mut compares = vec![unchanged, unheld];
                    for (labels_key, _) in all.labels.iter().filter(|(_, n)| **n == id) {
                        compares.push(Compare::value(labels_key.clone(), CompareOp::Equal, id.to_string()));
                        ops.push(TxnOp::delete(labels_key.clone(), None));
                    }
                    if self.txn(Txn::new().when(compares).and_then(ops), action).await?.succeeded() {
                        tracing::info!(id, "collected an unused identity");
                        deleted.push(id);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(deleted)
    }

    async fn read_identities(&self, action: &str) -> Result<Identities, EtcdError> {
        let response = self.get_prefix(&self.keys().identities(), action).await?;
        let mut out = Identities::default();
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            match self.keys().parse(key) {
                Some(Key::Identity(id)) => {
                    let stored: StoredIdentity =
                        serde_json::from_slice(kv.value()).map_err(|source| EtcdError::Decode { key: key.to_string(), source })?;
                    out.ids.insert(id, (stored, kv.mod_revision()));
                }
                Some(Key::IdentityLabels(_)) => {
                    if let Some(id) = kv.value_str().ok().and_then(|v| v.parse().ok()) {
                        out.labels.insert(key.to_string(), id);
                    }
                }
                Some(Key::IdentityRef(id, _)) => {
                    out.held.insert(id);
                }
                _ => tracing::debug!(key, "ignoring an identity key of no known shape"),
            }
        }
        Ok(out)
    }
}

/// The lowest number at or after `from` that is not in `used`.
fn lowest_free(used: &BTreeSet<u32>, from: u32) -> Result<u32, EtcdError> {
    let mut id = from;
    for &u in used.range(from..) {
        if u != id {
            break;
        }
        id = id.checked_add(1).ok_or(EtcdError::IdentitiesExhausted { first: FIRST_CLUSTER_IDENTITY, last: LAST_CLUSTER_IDENTITY })?;
    }
    if id > LAST_CLUSTER_IDENTITY {
        return Err(EtcdError::IdentitiesExhausted { first: FIRST_CLUSTER_IDENTITY, last: LAST_CLUSTER_IDENTITY });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_skips_the_used_run() {
        let used: BTreeSet<u32> = [256, 257, 259].into_iter().collect();
        assert_eq!(lowest_free(&used, 256).unwrap(), 258);
        assert_eq!(lowest_free(&used, 259).unwrap(), 260);
        let full: BTreeSet<u32> = [LAST_CLUSTER_IDENTITY].into_iter().collect();
        assert!(lowest_free(&full, LAST_CLUSTER_IDENTITY).is_err(), "past the last number there is none");
    }
}
