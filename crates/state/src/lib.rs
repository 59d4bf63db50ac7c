//! State sources: where the objects a node acts on come from.
//!
//! One seam, several sources. A source publishes [`ClusterState`] snapshots (cheap to clone,
//! each with a monotonic revision) that the agent reads, waits on and wakes with
//! ([`StateSource`]). [`LocalSource`] watches the local store — one JSON file of
//! Kubernetes-shaped objects written atomically under a lock, so a lab or a single node needs
//! no server. [`etcd::EtcdSource`] watches an etcd cluster, the datastore of clusters that run
//! without Kubernetes. Writers (the CLI, the lab) go through [`Datastore`], which is either.
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

pub mod cluster;
mod datastore;
pub mod etcd;
mod local;
mod local_source;
mod snapshot;

pub use cluster::{EndpointRecord, IdentityRecord, NodeRecord};
pub use datastore::{Datastore, EtcdAccess};
pub use local::{LocalStore, ObjectMap, ObjectMapExt, ServiceViews, Store, StoreError, StoreStamp};
pub use local_source::{LocalSource, DEFAULT_POLL};
pub use snapshot::{wait_for, wait_synced, ClusterState, SnapshotPublisher, SourceHealth, StateSource};
