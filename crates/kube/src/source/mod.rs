//! [`KubeSource`]: the Kubernetes API server as a [`StateSource`]. One watcher per kind (kube's
//! `watcher`: list, then watch from the list's resourceVersion with bookmarks; after a
//! `410 Gone` it lists again), all feeding one task that owns the agent's copy of the cluster
//! and publishes a snapshot per burst of changes. A relist replaces a kind's objects as a
//! whole, but only objects that differ are written, so a reconnect rewrites nothing unchanged.
//!
//! What every node watches, and why:
//! - Namespaces (their labels are part of identities), Pods (this node's whole; other nodes'
//!   reduced to labels, node and addresses), NetworkPolicies and Sluice's two policy kinds:
//!   what policy is computed from.
//! - Services and EndpointSlices (as compact views): the service tables. The cluster's
//!   endpoint-slice controller writes the slices, so the agent derives none from pods.
//! - SluiceNodes (routes to other nodes' pod CIDRs), SluiceEndpoints and SluiceEndpointSlices
//!   (the IP-to-identity cache), SluiceIdentities (identity numbers and their labels).

mod mirror;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use sluice_model::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};
use sluice_state::{ClusterState, SnapshotPublisher, SourceHealth, StateSource, Store};
use tokio::sync::{mpsc, watch};

pub use mirror::{compact_pod, Mirror};

use crate::crds::{SluiceEndpoint, SluiceEndpointSlice, SluiceIdentity, SluiceNode};

/// How often the API server is asked for its version while a watcher reports failures, to
/// tell when it answers again (a resumed watch says nothing until something changes).
const RECHECK: Duration = Duration::from_secs(2);

/// What the source watches: the API group (empty for the core group) and the resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watched {
    pub group: String,
    pub resource: String,
}

/// Something that does one thing per watched kind.
trait KindVisitor {
    fn visit<K: Mirror>(&mut self);
}

/// The one list of watched kinds.
fn for_each_kind(v: &mut impl KindVisitor) {
    v.visit::<Namespace>();
    v.visit::<Pod>();
    v.visit::<Service>();
    v.visit::<EndpointSlice>();
    v.visit::<NetworkPolicy>();
    v.visit::<SluiceNetworkPolicy>();
    v.visit::<SluiceClusterwideNetworkPolicy>();
    v.visit::<SluiceNode>();
    v.visit::<SluiceEndpoint>();
    v.visit::<SluiceEndpointSlice>();
    v.visit::<SluiceIdentity>();
}

/// Every kind the source lists and watches (what the agent's ClusterRole must allow).
pub fn watched() -> Vec<Watched> {
    struct Collect(Vec<Watched>);
    impl KindVisitor for Collect {
        fn visit<K: Mirror>(&mut self) {
            self.0.push(Watched { group: K::group(&()).into_owned(), resource: K::plural(&()).into_owned() });
        }
    }
    let mut c = Collect(Vec::new());
    for_each_kind(&mut c);
    c.0
}

/// A change one watcher hands to the merging task.
struct Change {
    kind: &'static str,
    what: What,
}

type Update = Box<dyn FnOnce(&mut Store, &str) -> Outcome + Send>;

enum What {
    /// The kind's complete list (first sync or relist): replaces what the store has of it.
    Listed(Update),
    /// One object added, modified or deleted.
    Event(Update),
    /// The watcher failed; it retries by itself with backoff.
    Failed(String),
}

/// What applying an update did.
#[derive(Default)]
struct Outcome {
    changed: bool,
    /// Objects left out because they break their kind (`kind/name: why`).
    rejected: Vec<String>,
}

/// A [`StateSource`] over the Kubernetes API; its tasks end when it is dropped.
pub struct KubeSource {
    publisher: Arc<SnapshotPublisher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

// === impl KubeSource ===

impl KubeSource {
    /// Starts watching every kind as `node` (whose pods are kept whole). Must be called within
    /// a tokio runtime; the first snapshot is synced once every kind was listed.
    pub fn spawn(client: Client, node: &str) -> Self {
        let publisher = Arc::new(SnapshotPublisher::new("kubernetes"));
        let (tx, rx) = mpsc::channel(1024);
        struct Spawn<'a> {
            client: &'a Client,
            tx: &'a mpsc::Sender<Change>,
            tasks: Vec<tokio::task::JoinHandle<()>>,
        }
        impl KindVisitor for Spawn<'_> {
            fn visit<K: Mirror>(&mut self) {
                let api: Api<K> = Api::all(self.client.clone());
                self.tasks.push(tokio::spawn(watch_kind(api, self.tx.clone())));
            }
        }
        let mut spawn = Spawn { client: &client, tx: &tx, tasks: Vec::new() };
        for_each_kind(&mut spawn);
        let mut tasks = spawn.tasks;
        let kinds = tasks.len();
        tasks.push(tokio::spawn(merge(rx, publisher.clone(), client, node.to_owned(), kinds)));
        Self { publisher, tasks }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl StateSource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.publisher.subscribe()
    }

    fn health(&self) -> SourceHealth {
        self.publisher.health()
    }
}

/// Follows one kind, turning its watcher's events into store updates.
async fn watch_kind<K: Mirror>(api: Api<K>, tx: mpsc::Sender<Change>) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing: Vec<K> = Vec::new();
    while let Some(item) = stream.next().await {
        let what = match item {
            Ok(Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                listing.push(obj);
                continue;
            }
            Ok(Event::InitDone) => What::Listed(Box::new({
                let objects = std::mem::take(&mut listing);
                move |store: &mut Store, node: &str| replace::<K>(store, objects, node)
            })),
            Ok(Event::Apply(obj)) => What::Event(Box::new(move |store: &mut Store, node: &str| put::<K>(store, obj, node))),
            Ok(Event::Delete(obj)) => What::Event(Box::new(move |store: &mut Store, _: &str| Outcome {
                changed: K::remove(store, &K::key(&obj)),
                rejected: Vec::new(),
            })),
            Err(e) => What::Failed(describe::<K>(&e)),
        };
        if tx.send(Change { kind: K::PLURAL, what }).await.is_err() {
            return;
        }
    }
}

fn put<K: Mirror>(store: &mut Store, obj: K, node: &str) -> Outcome {
    let key = K::key(&obj);
    match K::put(store, obj, node) {
        Ok(changed) => Outcome { changed, rejected: Vec::new() },
        Err(e) => Outcome { changed: K::remove(store, &key), rejected: vec![e.to_string()] },
    }
}

/// Replaces the kind's objects by `objects`, writing only what differs.
fn replace<K: Mirror>(store: &mut Store, objects: Vec<K>, node: &str) -> Outcome {
    let listed: BTreeSet<String> = objects.iter().map(K::key).collect();
    let mut outcome = Outcome::default();
    for key in K::keys(store) {
        if !listed.contains(&key) {
            outcome.changed |= K::remove(store, &key);
        }
    }
    for obj in objects {
        let one = put(store, obj, node);
        outcome.changed |= one.changed;
        outcome.rejected.extend(one.rejected);
    }
    outcome
}

/// A watcher error as an operator reads it: which kind, what failed, and for a missing
/// resource that the CRDs are probably not installed.
fn describe<K: Mirror>(error: &watcher::Error) -> String {
    let text = error.to_string();
    let missing = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(r)) | watcher::Error::WatchStartFailed(kube::Error::Api(r)) => r.code == 404,
        watcher::Error::WatchError(r) => r.code == 404,
        _ => false,
    };
    let group = K::group(&());
    if missing && group == sluice_model::policy::GROUP {
        format!("{}: {text} (are Sluice's CRDs installed? kubectl apply -f deploy/crds)", K::PLURAL)
    } else {
        format!("{}: {text}", K::PLURAL)
    }
}

/// Owns the store: applies each burst of changes and publishes once per burst.
async fn merge(mut rx: mpsc::Receiver<Change>, publisher: Arc<SnapshotPublisher>, client: Client, node: String, kinds: usize) {
    let mut store = Store::compacting();
    store.slices_from_api = true;
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    let mut failing: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut revision = 0u64;
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            change = rx.recv() => match change {
                Some(change) => change,
                None => return,
            },
            _ = recheck.tick(), if !failing.is_empty() => {
                if client.apiserver_version().await.is_ok() {
                    tracing::info!("the API server answers again");
                    failing.clear();
                    publisher.set_connected(true, None);
                }
                continue;
            }
        };
        let was_synced = listed.len() == kinds;
        let mut changed = false;
        let mut next = Some(first);
        while let Some(change) = next.take() {
            let outcome = match change.what {
                What::Listed(update) => {
                    listed.insert(change.kind);
                    failing.remove(change.kind);
                    update(&mut store, &node)
                }
                What::Event(update) => {
                    failing.remove(change.kind);
                    update(&mut store, &node)
                }
                What::Failed(error) => {
                    tracing::warn!(%error, "kubernetes watcher");
                    failing.insert(change.kind, error);
                    Outcome::default()
                }
            };
            for rejected in &outcome.rejected {
                tracing::warn!(object = %rejected, "leaving out an object that breaks its kind");
            }
            changed |= outcome.changed;
            next = rx.try_recv().ok();
        }
        let synced = listed.len() == kinds;
        // Health first: a reader woken by the snapshot sees the health that goes with it.
        if failing.is_empty() {
            publisher.set_connected(true, None);
        } else {
            publisher.set_connected(false, Some(failing.values().cloned().collect::<Vec<_>>().join("; ")));
        }
        if synced && !was_synced {
            publisher.count_full_sync();
        }
        if changed || synced != was_synced {
            revision += 1;
            store.generation = revision;
            publisher.publish(ClusterState { revision, synced, objects: Arc::new(store.clone()) });
        }
    }
}
