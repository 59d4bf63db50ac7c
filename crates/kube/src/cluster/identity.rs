//! Cluster-wide identity numbers as `SluiceIdentity` objects named by their number.
//!
//! A label set's first candidate number is derived from a hash of its canonical form, and
//! collisions probe the next number: every agent tries the same numbers in the same order for
//! the same labels. Two agents numbering the same new label set at once both try to create the
//! same name; the API server lets one create win and the other reads the winner's object,
//! finds its own labels and uses that number. Two different label sets on one number: the
//! loser moves on to the next. Nothing but the API server's create conflict is needed.
//!
//! Collection: an identity no published endpoint uses is marked `sluice.dev/unused-since`;
//! one marked longer than the grace period is deleted with its resourceVersion as a
//! precondition, and numbering a label set clears the mark, so a collector that saw an identity
//! unused cannot delete it once it is used again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use sluice_state::etcd::{FIRST_CLUSTER_IDENTITY, LAST_CLUSTER_IDENTITY};

use super::{failed, status, KubeCluster, KubeError, UNUSED_SINCE};
use crate::crds::{SluiceIdentity, SluiceIdentitySpec};

/// How many numbers are tried before giving up (collisions are rare in a 24-bit space).
const PROBES: u32 = 64;

/// The first number tried for a label set: the same on every node.
pub fn identity_candidate(canonical: &str) -> u32 {
    let digest = Sha256::digest(canonical.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let span = u64::from(LAST_CLUSTER_IDENTITY - FIRST_CLUSTER_IDENTITY + 1);
    FIRST_CLUSTER_IDENTITY + u32::try_from(u64::from_be_bytes(first) % span).unwrap_or(0)
}

fn next(id: u32) -> u32 {
    if id >= LAST_CLUSTER_IDENTITY {
        FIRST_CLUSTER_IDENTITY
    } else {
        id + 1
    }
}

impl KubeCluster {
    /// The cluster-wide number of `labels` (`canonical` is their canonical form).
    pub async fn allocate_identity(&self, canonical: &str, labels: &BTreeMap<String, String>) -> Result<u32, KubeError> {
        let action = format!("numbering the label set {canonical:?}");
        let api: Api<SluiceIdentity> = Api::all(self.client.clone());
        let mut id = identity_candidate(canonical);
        let mut probes = 0;
        while probes < PROBES {
            match api.get_opt(&id.to_string()).await.map_err(failed(&action))? {
                Some(existing) if existing.spec.labels == *labels => {
                    if existing.annotations().contains_key(UNUSED_SINCE) {
                        self.mark_used(&api, &existing).await?;
                    }
                    return Ok(id);
                }
                Some(_) => {
                    id = next(id);
                    probes += 1;
                }
                None => {
                    let object = SluiceIdentity::new(&id.to_string(), SluiceIdentitySpec { labels: labels.clone() });
                    match api.create(&PostParams::default(), &object).await {
                        Ok(_) => return Ok(id),
                        // Someone created this number first: read it again.
                        Err(e) if status(&e) == Some(409) => {}
                        Err(e) => return Err(failed(action)(e)),
                    }
                }
            }
        }
        Err(KubeError::Contention { action, attempts: PROBES })
    }

    /// Clears the unused mark, guarded by the version read: a concurrent delete or change
    /// makes it fail, and the caller reads again.
    pub(super) async fn mark_used(&self, api: &Api<SluiceIdentity>, existing: &SluiceIdentity) -> Result<(), KubeError> {
        let patch = json!({"metadata": {"resourceVersion": existing.resource_version(), "annotations": {UNUSED_SINCE: null}}});
        match api.patch(&existing.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(status(&e), Some(404 | 409)) => {
                Err(KubeError::Invalid { action: "reusing an identity".into(), what: "it changed while being reused; try again".into() })
            }
            Err(e) => Err(failed("clearing an identity's unused mark")(e)),
        }
    }

    /// Marks the identities none of `in_use` names, deletes those marked longer than `grace`
    /// and unmarks those used again. Any node may run it. Returns the numbers deleted.
    pub async fn collect_identities(&self, in_use: &BTreeSet<u32>, grace: Duration) -> Result<Vec<u32>, KubeError> {
        let api: Api<SluiceIdentity> = Api::all(self.client.clone());
        let all = api.list(&Default::default()).await.map_err(failed("listing identities"))?;
        let now = chrono::Utc::now();
        let mut deleted = Vec::new();
        for identity in all.items {
            let name = identity.name_any();
            let Ok(id) = name.parse::<u32>() else { continue };
            let mark = identity.annotations().get(UNUSED_SINCE).cloned();
            let version = identity.resource_version();
            let result = match (in_use.contains(&id), mark) {
                (true, Some(_)) => self.mark_used(&api, &identity).await,
                (true, None) => Ok(()),
                (false, None) => {
                    let patch = json!({"metadata": {"resourceVersion": version, "annotations": {UNUSED_SINCE: now.to_rfc3339()}}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(drop)
                        .map_err(failed("marking an identity unused"))
                }
                (false, Some(since)) => {
                    let expired = chrono::DateTime::parse_from_rfc3339(&since)
                        .map(|t| now.signed_duration_since(t).to_std().unwrap_or_default() >= grace)
                        .unwrap_or(true);
                    if !expired {
                        continue;
                    }
                    let params =
                        DeleteParams { preconditions: Some(Preconditions { resource_version: version, uid: None }), ..Default::default() };
                    match api.delete(&name, &params).await {
                        Ok(_) => {
                            deleted.push(id);
                            Ok(())
                        }
                        Err(e) => Err(failed("deleting an unused identity")(e)),
                    }
                }
            };
            match result {
                Ok(()) => {}
                // Changed or gone meanwhile: the next round looks again.
                Err(KubeError::Api { source, .. }) if matches!(status(&source), Some(404 | 409)) => {}
                Err(KubeError::Invalid { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}
