//! Publishing the node's endpoints: in slices (the default; the batcher plans the fewest
//! writes against the node's slices as the API server has them) or one `SluiceEndpoint` per pod.
//! Every object carries the node label and is owned by the node's SluiceNode.
//!
//! A plan is applied in order, creates and updates before deletes: without transactions a
//! reader may briefly see a pod that moved between slices in both (the same addresses under
//! the old and the new identity), never in neither.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource as _};
use sluice_model::{DesiredEndpoint, SliceWrite};
use sluice_state::EndpointRecord;

use super::{failed, status, KubeCluster, KubeError, FIELD_MANAGER, NODE_LABEL};
use crate::crds::{SluiceEndpoint, SluiceEndpointSlice, SluiceNode};

impl KubeCluster {
    /// Publishes `wanted` (this node's endpoints, by `namespace/name`) and withdraws what the
    /// node no longer has. Returns how many objects were written or deleted.
    pub async fn publish_endpoints(&self, wanted: BTreeMap<String, EndpointRecord>) -> Result<usize, KubeError> {
        let owner = self.owner().await?;
        match &self.batcher {
            Some(batcher) => {
                let desired: Vec<DesiredEndpoint> = wanted
                    .into_values()
                    .map(|r| DesiredEndpoint { namespace: r.namespace, name: r.name, identity: r.identity, addresses: r.ips })
                    .collect();
                let existing = self.node_slices().await?;
                let plan = batcher.plan(&existing, &desired)?;
                let (deletes, writes): (Vec<_>, Vec<_>) = plan.writes.into_iter().partition(|w| matches!(w, SliceWrite::Delete { .. }));
                let count = deletes.len() + writes.len();
                for write in writes.into_iter().chain(deletes) {
                    match write {
                        SliceWrite::Create(slice) | SliceWrite::Update(slice) => {
                            let mut object = SluiceEndpointSlice::from_record(&slice);
                            self.stamp(&mut object.metadata, &owner);
                            let api: Api<SluiceEndpointSlice> = Api::namespaced(self.client.clone(), &slice.namespace);
                            api.patch(&slice.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
                                .await
                                .map_err(failed(format!("writing SluiceEndpointSlice {}/{}", slice.namespace, slice.name)))?;
                        }
                        SliceWrite::Delete { namespace, name } => {
                            let api: Api<SluiceEndpointSlice> = Api::namespaced(self.client.clone(), &namespace);
                            delete(&api, &name, format!("deleting SluiceEndpointSlice {namespace}/{name}")).await?;
                        }
                    }
                }
                Ok(count)
            }
            None => {
                let mut published = self.published.lock().await;
                let mut count = 0;
                for (key, record) in &wanted {
                    if published.get(key) == Some(record) {
                        continue;
                    }
                    let mut object = SluiceEndpoint::from_record(record);
                    self.stamp(&mut object.metadata, &owner);
                    let api: Api<SluiceEndpoint> = Api::namespaced(self.client.clone(), &record.namespace);
                    api.patch(&record.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
                        .await
                        .map_err(failed(format!("writing SluiceEndpoint {key}")))?;
                    published.insert(key.clone(), record.clone());
                    count += 1;
                }
                let gone: Vec<(String, EndpointRecord)> =
                    published.iter().filter(|(k, _)| !wanted.contains_key(*k)).map(|(k, r)| (k.clone(), r.clone())).collect();
                for (key, record) in gone {
                    let api: Api<SluiceEndpoint> = Api::namespaced(self.client.clone(), &record.namespace);
                    delete(&api, &record.name, format!("deleting SluiceEndpoint {key}")).await?;
                    published.remove(&key);
                    count += 1;
                }
                Ok(count)
            }
        }
    }

    /// The node's slices as the API server has them.
    async fn node_slices(&self) -> Result<Vec<sluice_model::SluiceEndpointSlice>, KubeError> {
        let api: Api<SluiceEndpointSlice> = Api::all(self.client.clone());
        let params = ListParams::default().labels(&format!("{NODE_LABEL}={}", self.node));
        let list = api.list(&params).await.map_err(failed("listing the node's endpoint slices"))?;
        list.items
            .iter()
            .map(|s| {
                s.to_record().map_err(|e| KubeError::Invalid { action: "reading the node's endpoint slices".into(), what: e.to_string() })
            })
            .collect()
    }

    /// The owner reference every endpoint object carries: the node's SluiceNode.
    async fn owner(&self) -> Result<OwnerReference, KubeError> {
        let uid = self.owner_uid.lock().await.clone().ok_or_else(|| KubeError::Invalid {
            action: "publishing endpoints".into(),
            what: "the node has not joined (no SluiceNode written yet)".into(),
        })?;
        Ok(OwnerReference {
            api_version: SluiceNode::api_version(&()).into_owned(),
            kind: SluiceNode::kind(&()).into_owned(),
            name: self.node.clone(),
            uid,
            ..Default::default()
        })
    }

    fn stamp(&self, meta: &mut ObjectMeta, owner: &OwnerReference) {
        meta.labels = Some([(NODE_LABEL.to_owned(), self.node.clone())].into());
        meta.owner_references = Some(vec![owner.clone()]);
    }
}

/// Deletes `name`; one already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str, action: String) -> Result<(), KubeError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if status(&e) == Some(404) => Ok(()),
        Err(e) => Err(failed(action)(e)),
    }
}
