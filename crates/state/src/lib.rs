//! State sources: where the objects a node acts on come from.
//!
//! The [`StateSource`] trait is what the agent reads (pod and namespace labels today; services
//! and policies as they land). [`LocalStore`] is the default source: one JSON file of
//! Kubernetes-shaped objects, written atomically under a lock, so a lab or a single node needs
//! no server. etcd and the Kubernetes API are further implementations of the same trait.
//!
//! ```
//! # fn demo() -> Result<(), sluice_state::StoreError> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = sluice_state::LocalStore::new(dir.path().join("store.json"));
//! store.update(|s| { s.namespaces.clear(); Ok(()) })?;
//! assert!(store.load()?.pods.is_empty());
//! # Ok(()) }
//! # demo().unwrap();
//! ```

mod local;

pub use local::{LocalStore, Store, StoreError, StoreStamp};

use std::collections::BTreeMap;

use sluice_model::labels::namespace_labels;
use sluice_model::LabelSet;

/// What the agent needs to know of the cluster's objects.
pub trait StateSource: Send + Sync {
    /// The label set (pod labels plus namespace labels) of a pod, `None` when the pod is unknown.
    fn pod_label_set(&self, namespace: &str, name: &str) -> Result<Option<LabelSet>, StoreError>;
}

impl StateSource for LocalStore {
    fn pod_label_set(&self, namespace: &str, name: &str) -> Result<Option<LabelSet>, StoreError> {
        let store = self.load()?;
        let Some(pod) = store.pods.get(&Store::pod_key(namespace, name)) else { return Ok(None) };
        let empty = BTreeMap::new();
        let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        // A namespace never applied (or stored before namespaces were labelled) still has its
        // name label, as every namespace in the API server does.
        let ns_labels = namespace_labels(namespace, store.namespaces.get(namespace).and_then(|n| n.metadata.labels.as_ref()));
        Ok(Some(LabelSet::for_pod(pod_labels, namespace, &ns_labels)))
    }
}
