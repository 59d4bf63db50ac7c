//! The local store: a JSON file of objects, read whole and replaced whole (write to a temporary
//! file, then rename) under an exclusive lock, so readers never see half a write and two
//! writers never interleave.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sluice_model::labels::namespace_labels;
use sluice_model::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};
use sluice_model::{LabelSet, SluiceEndpointSlice};
use sluice_services::view::{ServiceView, SliceView};

use crate::cluster::{EndpointRecord, IdentityRecord, NodeRecord};

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its lock could not be opened, read or written.
    #[error("state store {path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a store this version understands.
    #[error("state store {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An update was refused by its caller; nothing was written.
    #[error("{0}")]
    Rejected(String),
    /// A source did not finish its first full read in time.
    #[error("the {kind} state source did not sync within {waited:?}: {last_error}")]
    NotSynced { kind: String, waited: std::time::Duration, last_error: String },
    /// The etcd datastore failed.
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
}

/// A version of the store file as `stat` sees it; see [`LocalStore::stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStamp {
    modified: Option<std::time::SystemTime>,
    inode: u64,
    len: u64,
}

/// Every object, keyed for lookup: namespaces by name, the namespaced kinds by
/// `namespace/name`. Each map defaults to empty, so store files written before a kind was
/// added still load. The maps are persistent (structure-sharing) ordered maps: a copy costs
/// nothing, a change to a copy costs its path, and two versions compare (`diff`, `==`) at the
/// cost of what differs — so a source can publish a new snapshot per change however large the
/// cluster, and consumers can find what changed between two snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Counts the writes: one more on every update, so a reader can say which version it acted on.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub namespaces: ObjectMap<Namespace>,
    #[serde(default)]
    pub pods: ObjectMap<Pod>,
    /// Services as applied, with their cluster IPs, families and node ports allocated.
    #[serde(default)]
    pub services: ObjectMap<Service>,
    /// Endpoint slices applied by hand (for services without a selector). Slices derived
    /// from pods are not stored: they are computed from `pods` when read.
    #[serde(default)]
    pub endpoint_slices: ObjectMap<EndpointSlice>,
    /// Kubernetes NetworkPolicies, by `namespace/name`.
    #[serde(default)]
    pub network_policies: ObjectMap<NetworkPolicy>,
    /// SluiceNetworkPolicies, by `namespace/name`.
    #[serde(default)]
    pub sluice_policies: ObjectMap<SluiceNetworkPolicy>,
    /// SluiceClusterwideNetworkPolicies, by name.
    #[serde(default)]
    pub clusterwide_policies: ObjectMap<SluiceClusterwideNetworkPolicy>,
    /// Nodes as their agents registered them, by name (cluster datastores; a lab may write them).
    #[serde(default)]
    pub nodes: ObjectMap<NodeRecord>,
    /// Endpoints as the agents published them, by `namespace/name` (cluster datastores).
    #[serde(default)]
    pub endpoints: ObjectMap<EndpointRecord>,
    /// Endpoints as the agents published them in slices, by `namespace/name` of the slice
    /// (cluster datastores). Read both through [`Store::published_endpoints`].
    #[serde(default)]
    pub published_slices: ObjectMap<SluiceEndpointSlice>,
    /// Cluster-wide security identities by number (cluster datastores).
    #[serde(default)]
    pub identities: imbl::OrdMap<u32, IdentityRecord>,
    /// Services and endpoint slices as compact views, kept in place of `services` and
    /// `endpoint_slices` in an agent's snapshots ([`Store::compact`]); `None` in a writer's
    /// store, which keeps the objects whole. Never written.
    #[serde(skip)]
    pub views: Option<ServiceViews>,
    /// True when the cluster's endpoint-slice controller writes the slices of selector
    /// services (the Kubernetes source): none is derived from pods then. Never written.
    #[serde(skip)]
    pub slices_from_api: bool,
}

/// What the service tables are computed from, by the same keys as the objects.
#[derive(Debug, Clone, Default)]
pub struct ServiceViews {
    pub services: ObjectMap<Arc<ServiceView>>,
    pub endpoint_slices: ObjectMap<Arc<SliceView>>,
}

/// A kind's objects by key.
pub type ObjectMap<T> = imbl::OrdMap<String, T>;

/// What the standard map has and the persistent one lacks.
pub trait ObjectMapExt<T> {
    /// Keeps the objects for which `keep` is true.
    fn retain(&mut self, keep: impl FnMut(&String, &T) -> bool);
    /// The objects, in key order.
    fn into_values(self) -> impl Iterator<Item = T>;
}

impl<T: Clone> ObjectMapExt<T> for ObjectMap<T> {
    fn retain(&mut self, mut keep: impl FnMut(&String, &T) -> bool) {
        let gone: Vec<String> = self.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn into_values(self) -> impl Iterator<Item = T> {
        self.into_iter().map(|(_, v)| v)
    }
}

impl Store {
    /// Every endpoint the agents published, whether as a record of its own (`endpoints:
    /// per-pod`) or in a slice (`endpoints: slices`), as records: what every reader of published
    /// endpoints reads, so both modes look the same to them.
    pub fn published_endpoints(&self) -> impl Iterator<Item = EndpointRecord> + '_ {
        let from_slices = self.published_slices.values().flat_map(|slice| {
            slice.endpoints.iter().map(move |e| EndpointRecord {
                namespace: slice.namespace.clone(),
                name: e.name.clone(),
                node: slice.node.clone(),
                ips: e.addresses.clone(),
                identity: slice.identity,
            })
        });
        self.endpoints.values().cloned().chain(from_slices)
    }

    /// An empty store that keeps services and endpoint slices as views from the start, so a
    /// source filling it never holds the whole objects.
    pub fn compacting() -> Self {
        Self { views: Some(ServiceViews::default()), ..Self::default() }
    }

    /// Replaces the services and endpoint slices by their views: an agent never reads the rest
    /// of them, and at 10,000 services the whole objects are most of its memory. Idempotent;
    /// objects put in later still go to the views (see [`Store::put_service`]).
    pub fn compact(&mut self) {
        let views = self.views.get_or_insert_with(ServiceViews::default);
        for (key, service) in std::mem::take(&mut self.services) {
            views.services.insert(key, Arc::new(ServiceView::of(&service)));
        }
        for (key, slice) in std::mem::take(&mut self.endpoint_slices) {
            views.endpoint_slices.insert(key, Arc::new(SliceView::of(&slice)));
        }
    }

    /// Whether the services and endpoint slices are views only.
    pub fn is_compact(&self) -> bool {
        self.views.is_some() && self.services.is_empty() && self.endpoint_slices.is_empty()
    }

    /// Puts a service, as a view in a compact store.
    pub fn put_service(&mut self, key: String, service: Service) {
        match &mut self.views {
            Some(views) => {
                views.services.insert(key, Arc::new(ServiceView::of(&service)));
            }
            None => {
                self.services.insert(key, service);
            }
        }
    }

    /// Puts an endpoint slice, as a view in a compact store.
    pub fn put_endpoint_slice(&mut self, key: String, slice: EndpointSlice) {
        match &mut self.views {
            Some(views) => {
                views.endpoint_slices.insert(key, Arc::new(SliceView::of(&slice)));
            }
            None => {
                self.endpoint_slices.insert(key, slice);
            }
        }
    }

    /// Removes a service, whichever form it is kept in.
    pub fn remove_service(&mut self, key: &str) {
        self.services.remove(key);
        if let Some(views) = &mut self.views {
            views.services.remove(key);
        }
    }

    /// Removes an endpoint slice, whichever form it is kept in.
    pub fn remove_endpoint_slice(&mut self, key: &str) {
        self.endpoint_slices.remove(key);
        if let Some(views) = &mut self.views {
            views.endpoint_slices.remove(key);
        }
    }

    /// The key of a namespaced object (pod, service, endpoint slice): `namespace/name`.
    pub fn pod_key(namespace: &str, name: &str) -> String {
        Self::key(namespace, name)
    }

    /// The key of a namespaced object: `namespace/name`.
    pub fn key(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// The label set (pod labels plus namespace labels) of a pod, `None` when the pod is unknown.
    pub fn pod_label_set(&self, namespace: &str, name: &str) -> Option<LabelSet> {
        let pod = self.pods.get(&Self::pod_key(namespace, name))?;
        let empty = BTreeMap::new();
        let pod_labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        // A namespace never applied (or stored before namespaces were labelled) still has its
        // name label, as every namespace in the API server does.
        let ns_labels = namespace_labels(namespace, self.namespaces.get(namespace).and_then(|n| n.metadata.labels.as_ref()));
        Some(LabelSet::for_pod(pod_labels, namespace, &ns_labels))
    }
}

/// The store file as [`LocalStore::load_compact`] reads it: [`Store`]'s fields, services and
/// endpoint slices parsed one at a time into their views.
#[derive(Deserialize)]
struct CompactFile {
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    namespaces: ObjectMap<Namespace>,
    #[serde(default)]
    pods: ObjectMap<Pod>,
    #[serde(default, deserialize_with = "views_of::<Service, ServiceView, _>")]
    services: ObjectMap<Arc<ServiceView>>,
    #[serde(default, deserialize_with = "views_of::<EndpointSlice, SliceView, _>")]
    endpoint_slices: ObjectMap<Arc<SliceView>>,
    #[serde(default)]
    network_policies: ObjectMap<NetworkPolicy>,
    #[serde(default)]
    sluice_policies: ObjectMap<SluiceNetworkPolicy>,
    #[serde(default)]
    clusterwide_policies: ObjectMap<SluiceClusterwideNetworkPolicy>,
    #[serde(default)]
    nodes: ObjectMap<NodeRecord>,
    #[serde(default)]
    endpoints: ObjectMap<EndpointRecord>,
    #[serde(default)]
    published_slices: ObjectMap<SluiceEndpointSlice>,
    #[serde(default)]
    identities: imbl::OrdMap<u32, IdentityRecord>,
}

impl CompactFile {
    /// Every field named, so a field added to [`Store`] does not compile until it is read here.
    fn into_store(self) -> Store {
        let Self {
            generation,
            namespaces,
            pods,
            services,
            endpoint_slices,
            network_policies,
            sluice_policies,
            clusterwide_policies,
            nodes,
            endpoints,
            published_slices,
            identities,
        } = self;
        Store {
            generation,
            namespaces,
            pods,
            services: ObjectMap::new(),
            endpoint_slices: ObjectMap::new(),
            network_policies,
            sluice_policies,
            clusterwide_policies,
            nodes,
            endpoints,
            published_slices,
            identities,
            views: Some(ServiceViews { services, endpoint_slices }),
            slices_from_api: false,
        }
    }
}

/// A JSON object of `O`s read as the views of each, one object at a time.
fn views_of<'de, O, V, D>(deserializer: D) -> Result<ObjectMap<Arc<V>>, D::Error>
where
    O: Deserialize<'de>,
    V: for<'a> From<&'a O> + Clone,
    D: serde::Deserializer<'de>,
{
    struct Visit<O, V>(std::marker::PhantomData<(O, V)>);
    impl<'de, O: Deserialize<'de>, V: for<'a> From<&'a O> + Clone> serde::de::Visitor<'de> for Visit<O, V> {
        type Value = ObjectMap<Arc<V>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of objects by key")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = ObjectMap::new();
            while let Some((key, object)) = map.next_entry::<String, O>()? {
                out.insert(key, Arc::new(V::from(&object)));
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Visit(std::marker::PhantomData))
}

/// A store file and its lock file beside it.
#[derive(Debug, Clone)]
pub struct LocalStore {
    path: PathBuf,
}

// === impl LocalStore ===

impl LocalStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What identifies the file's current version without reading it: every write replaces the
    /// file and sets its mtime strictly after the previous one's. `None` when there is no file.
    pub fn stamp(&self) -> Option<StoreStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(StoreStamp { modified: m.modified().ok(), inode: m.ino(), len: m.len() })
    }

    /// The current objects; an absent file is an empty store.
    pub fn load(&self) -> Result<Store, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path: self.path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
            Err(source) => Err(self.io("reading", source)),
        }
    }

    /// The current objects with services and endpoint slices as views ([`Store::compact`]),
    /// each object converted as it is parsed, so the whole objects never all exist at once:
    /// what a source publishing for an agent reads.
    pub fn load_compact(&self) -> Result<Store, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<CompactFile>(&bytes)
                .map(CompactFile::into_store)
                .map_err(|source| StoreError::Corrupt { path: self.path.clone(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::compacting()),
            Err(source) => Err(self.io("reading", source)),
        }
    }

    /// Runs `f` on the current objects under the lock and writes the result if `f` succeeds.
    /// When `f` fails nothing is written: the previous state stays.
    pub fn update<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut store = self.load()?;
        let out = f(&mut store)?;
        store.generation += 1;
        self.write(&store)?;
        Ok(out)
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io("creating its directory", e))?;
        }
        let lock_path = self.path.with_extension("lock");
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| self.io("opening the lock", e))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| self.io("locking", e.into()))
    }

    fn write(&self, store: &Store) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(store).map_err(|source| StoreError::Corrupt { path: self.path.clone(), source })?;
        let mut file = File::create(&tmp).map_err(|e| self.io("creating a temporary file", e))?;
        // The mtime is set strictly after the previous version's: clocks and coarse file
        // timestamps could otherwise give two writes the same stamp.
        let previous = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let now = std::time::SystemTime::now();
        let modified = match previous {
            Some(p) if p >= now => p + std::time::Duration::from_micros(1),
            _ => now,
        };
        file.write_all(&bytes)
            .and_then(|_| file.set_modified(modified))
            .and_then(|_| file.sync_all())
            .map_err(|e| self.io("writing", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io("replacing", e))
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io { path: self.path.clone(), action, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn update_persists_and_failed_update_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        store
            .update(|s| {
                s.namespaces.insert(
                    "x".into(),
                    Namespace { metadata: ObjectMeta { name: Some("x".into()), ..Default::default() }, ..Default::default() },
                );
                Ok(())
            })
            .unwrap();
        let err = store.update(|s| {
            s.namespaces.clear();
            Err::<(), _>(StoreError::Rejected("no".into()))
        });
        assert!(err.is_err(), "a refused update must report the refusal");
        assert_eq!(store.load().unwrap().namespaces.len(), 1, "a refused update must not write");
    }

    #[test]
    fn every_write_has_a_new_generation_and_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        assert!(store.stamp().is_none(), "no file, no stamp");
        let mut stamps = Vec::new();
        for expected in 1..=3 {
            // Identical content written back to back: only the generation and inode differ.
            store.update(|_| Ok(())).unwrap();
            assert_eq!(store.load().unwrap().generation, expected);
            stamps.push(store.stamp().expect("a file now"));
        }
        assert!(stamps[0] != stamps[1] && stamps[1] != stamps[2] && stamps[0] != stamps[2], "each write is seen as a change: {stamps:?}");
        let _ = store.update(|_| Err::<(), _>(StoreError::Rejected("no".into())));
        assert_eq!(store.load().unwrap().generation, 3, "a refused update does not count");
    }

    #[test]
    fn pod_label_set_includes_namespace_labels() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        store
            .update(|s| {
                s.namespaces.insert(
                    "x".into(),
                    Namespace {
                        metadata: ObjectMeta { name: Some("x".into()), labels: labels(&[("team", "a")]), ..Default::default() },
                        ..Default::default()
                    },
                );
                s.pods.insert(
                    Store::pod_key("x", "p"),
                    Pod {
                        metadata: ObjectMeta {
                            name: Some("p".into()),
                            namespace: Some("x".into()),
                            labels: labels(&[("app", "web")]),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                );
                Ok(())
            })
            .unwrap();
        let set = store.load().unwrap().pod_label_set("x", "p").expect("pod is known");
        assert_eq!(set.get("app"), Some("web"));
        assert!(set.canonical_string().contains("team"), "namespace labels must be part of the set: {set}");
        assert!(store.load().unwrap().pod_label_set("x", "missing").is_none());
    }

    #[test]
    fn pods_of_an_implicit_namespace_get_its_name_label() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        store
            .update(|s| {
                s.pods.insert(
                    Store::pod_key("implicit", "p"),
                    Pod {
                        metadata: ObjectMeta { name: Some("p".into()), namespace: Some("implicit".into()), ..Default::default() },
                        ..Default::default()
                    },
                );
                Ok(())
            })
            .unwrap();
        let set = store.load().unwrap().pod_label_set("implicit", "p").expect("pod is known");
        assert_eq!(
            set.get("k8s:io.kubernetes.pod.namespace.labels.kubernetes.io/metadata.name"),
            Some("implicit"),
            "the namespace's name label, though the namespace was never stored: {set}"
        );
    }

    #[test]
    fn store_files_without_services_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, br#"{"namespaces": {}, "pods": {}}"#).unwrap();
        let store = LocalStore::new(&path).load().unwrap();
        assert!(store.services.is_empty(), "services default to empty");
        assert!(store.endpoint_slices.is_empty(), "endpoint slices default to empty");
        assert!(store.network_policies.is_empty(), "network policies default to empty");
        assert!(store.sluice_policies.is_empty(), "Sluice policies default to empty");
        assert!(store.clusterwide_policies.is_empty(), "cluster-wide policies default to empty");
    }

    #[test]
    fn policies_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}
---
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: web, namespace: x}
spec: {endpointSelector: {matchLabels: {app: web}}, ingressDeny: [{fromEntities: [world]}]}
---
apiVersion: sluice.dev/v1
kind: SluiceClusterwideNetworkPolicy
metadata: {name: audit-all}
spec: {endpointSelector: {}, enforcementMode: audit, egress: [{toPorts: [{ports: [{port: '53', protocol: UDP}]}]}]}
";
        let objects = sluice_model::parse_manifests("p.yaml", text).unwrap();
        let mut wanted = Store::default();
        for object in objects {
            match object {
                sluice_model::Object::NetworkPolicy(p) => wanted.network_policies.insert(Store::key("x", "web"), p).is_none(),
                sluice_model::Object::SluiceNetworkPolicy(p) => wanted.sluice_policies.insert(Store::key("x", "web"), p).is_none(),
                sluice_model::Object::SluiceClusterwideNetworkPolicy(p) => {
                    wanted.clusterwide_policies.insert("audit-all".into(), p).is_none()
                }
                other => panic!("unexpected {other:?}"),
            };
        }
        store
            .update(|s| {
                *s = wanted.clone();
                Ok(())
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.network_policies, wanted.network_policies, "network policies round trip");
        assert_eq!(loaded.sluice_policies, wanted.sluice_policies, "Sluice policies round trip");
        assert_eq!(loaded.clusterwide_policies, wanted.clusterwide_policies, "cluster-wide policies round trip");
    }

    #[test]
    fn services_and_slices_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        let meta = |name: &str| ObjectMeta { name: Some(name.into()), namespace: Some("x".into()), ..Default::default() };
        store
            .update(|s| {
                s.services.insert(Store::key("x", "web"), Service { metadata: meta("web"), ..Default::default() });
                s.endpoint_slices.insert(
                    Store::key("x", "web-1"),
                    EndpointSlice { metadata: meta("web-1"), address_type: "IPv4".into(), endpoints: vec![], ports: None },
                );
                Ok(())
            })
            .unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.services.contains_key("x/web"), "service stored under namespace/name");
        assert_eq!(loaded.endpoint_slices.get("x/web-1").map(|s| s.address_type.as_str()), Some("IPv4"), "slice stored");
    }

    #[test]
    fn a_compact_load_reads_what_a_whole_load_compacted_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("s.json"));
        assert!(store.load_compact().unwrap().is_compact(), "no file: an empty compact store");
        let meta = |name: &str| ObjectMeta { name: Some(name.into()), namespace: Some("x".into()), ..Default::default() };
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}},
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["198.19.0.5"], "nodeName": "node0"}],
        }))
        .unwrap();
        store
            .update(|s| {
                s.namespaces.insert("x".into(), Namespace { metadata: meta("x"), ..Default::default() });
                s.pods.insert(Store::key("x", "a"), Pod { metadata: meta("a"), ..Default::default() });
                s.services.insert(Store::key("x", "web"), service.clone());
                s.endpoint_slices.insert(Store::key("x", "web-1"), slice.clone());
                s.network_policies.insert(Store::key("x", "p"), NetworkPolicy { metadata: meta("p"), ..Default::default() });
                Ok(())
            })
            .unwrap();
        let compact = store.load_compact().unwrap();
        let mut whole = store.load().unwrap();
        whole.compact();
        assert!(compact.is_compact(), "services and slices as views only");
        assert_eq!(compact.generation, whole.generation);
        assert_eq!(compact.namespaces, whole.namespaces);
        assert_eq!(compact.pods, whole.pods);
        assert_eq!(compact.network_policies, whole.network_policies);
        let (c, w) = (compact.views.unwrap(), whole.views.unwrap());
        assert_eq!(c.services, w.services, "the same service views");
        assert_eq!(c.endpoint_slices, w.endpoint_slices, "the same slice views");
        assert_eq!(c.services.get("x/web").map(|v| (**v).clone()), Some(ServiceView::of(&service)));
        assert_eq!(c.endpoint_slices.get("x/web-1").map(|v| v.endpoints.len()), Some(1));
    }

    #[test]
    fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = LocalStore::new(&path).load().unwrap_err().to_string();
        assert!(err.contains("s.json") && err.contains("corrupt"), "{err}");
    }
}
