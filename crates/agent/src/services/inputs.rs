//! What the service tables are computed from, kept between rounds: each service's applied
//! slices (an index by the service-name label), the slices derived from pods for selector
//! services, and — between two snapshots of the cluster — which services changed, found by
//! diffing the snapshots' persistent maps (their shared structure is skipped, so a change
//! costs what it touched, not the cluster's size).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use k8s_openapi::api::core::v1::Pod;
use sluice_services::incremental::{ServiceId, ServiceInput};
use sluice_services::small_set::SmallSet;
use sluice_services::view::{ServiceView, SliceView};
use sluice_state::{ServiceViews, Store};

/// The inputs as of the last snapshot seen.
#[derive(Default)]
pub struct Inputs {
    /// The snapshot the index and the derived slices are of (compact).
    seen: Option<Arc<Store>>,
    /// Applied slice keys by the service they name.
    slices_of: BTreeMap<ServiceId, SmallSet<String>>,
    /// Slices derived from pods, per selector service.
    derived: BTreeMap<ServiceId, Vec<SliceView>>,
}

/// `objects` with services and endpoint slices as views: the snapshot itself when it is (a
/// source's always are), else a compacted copy.
pub fn compact(objects: &Arc<Store>) -> Arc<Store> {
    if objects.is_compact() {
        return objects.clone();
    }
    let mut copy = Store::clone(objects);
    copy.compact();
    Arc::new(copy)
}

fn views(objects: &Store) -> &ServiceViews {
    static EMPTY: std::sync::LazyLock<ServiceViews> = std::sync::LazyLock::new(ServiceViews::default);
    objects.views.as_ref().unwrap_or(&EMPTY)
}

// === impl Inputs ===

impl Inputs {
    /// Moves to `objects` (compact: see [`compact`]) and returns the services whose inputs
    /// changed since the last snapshot, or `None` when everything must be looked at (the
    /// first snapshot).
    pub fn advance(&mut self, objects: &Arc<Store>) -> Option<BTreeSet<ServiceId>> {
        let Some(prev) = self.seen.replace(objects.clone()) else {
            self.rebuild(objects);
            return None;
        };
        let mut changed = BTreeSet::new();
        let (before, now) = (views(&prev), views(objects));
        for item in before.services.diff(&now.services) {
            let svc = match item {
                DiffItem::Add(_, s) | DiffItem::Update { new: (_, s), .. } | DiffItem::Remove(_, s) => s,
            };
            changed.insert(service_id(svc));
        }
        for item in before.endpoint_slices.diff(&now.endpoint_slices) {
            match item {
                DiffItem::Add(key, slice) => self.index(key, slice, &mut changed),
                DiffItem::Remove(key, slice) => self.unindex(key, slice, &mut changed),
                DiffItem::Update { old: (key, old), new: (_, new) } => {
                    self.unindex(key, old, &mut changed);
                    self.index(key, new, &mut changed);
                }
            }
        }
        // Derived slices follow the pods of their namespace, and their service.
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        for item in prev.pods.diff(&objects.pods) {
            let pod = match item {
                DiffItem::Add(_, p) | DiffItem::Update { new: (_, p), .. } | DiffItem::Remove(_, p) => p,
            };
            namespaces.insert(pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
        }
        let stale: Vec<ServiceId> = self.derived.keys().filter(|id| namespaces.contains(&id.0) || changed.contains(*id)).cloned().collect();
        for id in stale {
            self.derived.remove(&id);
            changed.insert(id);
        }
        // Without pod changes only the changed services need looking at; with them, every
        // selector service of those namespaces.
        let candidates: Vec<&ServiceView> = if namespaces.is_empty() {
            changed.iter().filter_map(|id| now.services.get(&Store::key(&id.0, &id.1))).map(|s| &**s).collect()
        } else {
            now.services
                .values()
                .map(|s| &**s)
                .filter(|s| namespaces.contains(&service_id(s).0) || changed.contains(&service_id(s)))
                .collect()
        };
        let rederive: Vec<&ServiceView> = candidates.into_iter().filter(|s| s.derivable().is_some()).collect();
        if !rederive.is_empty() {
            let pods = pods_by_namespace(objects);
            for svc in rederive {
                let id = service_id(svc);
                self.derived.insert(id.clone(), derive(svc, &pods));
                changed.insert(id);
            }
        }
        Some(changed)
    }

    /// The inputs of the services in `ids` (`None` for those gone), from `objects`.
    pub fn of<'a>(&'a self, objects: &'a Store, ids: &BTreeSet<ServiceId>) -> BTreeMap<ServiceId, Option<ServiceInput<'a>>> {
        let views = views(objects);
        ids.iter().map(|id| (id.clone(), views.services.get(&Store::key(&id.0, &id.1)).map(|svc| self.input(views, svc)))).collect()
    }

    /// The inputs of every service in `objects`.
    pub fn all<'a>(&'a self, objects: &'a Store) -> BTreeMap<ServiceId, ServiceInput<'a>> {
        let views = views(objects);
        views.services.values().map(|svc| (service_id(svc), self.input(views, svc))).collect()
    }

    fn input<'a>(&'a self, views: &'a ServiceViews, svc: &'a ServiceView) -> ServiceInput<'a> {
        let id = service_id(svc);
        let mut slices: Vec<Cow<'a, SliceView>> = self
            .slices_of
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|key| views.endpoint_slices.get(key))
            .map(|s| Cow::Borrowed(&**s))
            .collect();
        slices.extend(self.derived.get(&id).into_iter().flatten().map(Cow::Borrowed));
        ServiceInput { service: svc, slices }
    }

    fn rebuild(&mut self, objects: &Store) {
        self.slices_of.clear();
        self.derived.clear();
        let mut ignored = BTreeSet::new();
        let views = views(objects);
        for (key, slice) in views.endpoint_slices.iter() {
            self.index(key, slice, &mut ignored);
        }
        let pods = pods_by_namespace(objects);
        for svc in views.services.values().filter(|s| s.derivable().is_some()) {
            self.derived.insert(service_id(svc), derive(svc, &pods));
        }
    }

    fn index(&mut self, key: &str, slice: &SliceView, changed: &mut BTreeSet<ServiceId>) {
        if let Some(id) = slice_service(slice) {
            self.slices_of.entry(id.clone()).or_default().insert(key.to_owned());
            changed.insert(id);
        }
    }

    fn unindex(&mut self, key: &str, slice: &SliceView, changed: &mut BTreeSet<ServiceId>) {
        if let Some(id) = slice_service(slice) {
            if let Some(keys) = self.slices_of.get_mut(&id) {
                keys.remove(&key.to_owned());
                if keys.is_empty() {
                    self.slices_of.remove(&id);
                }
            }
            changed.insert(id);
        }
    }
}

/// The pods slices are derived from: none where the cluster's controller writes the slices.
fn pods_by_namespace(objects: &Store) -> BTreeMap<&str, Vec<&Pod>> {
    let mut m: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    if objects.slices_from_api {
        return m;
    }
    for pod in objects.pods.values() {
        m.entry(pod.metadata.namespace.as_deref().unwrap_or("default")).or_default().push(pod);
    }
    m
}

/// The slices the endpoint-slice controller would make for `svc` from its namespace's pods.
fn derive(svc: &ServiceView, pods: &BTreeMap<&str, Vec<&Pod>>) -> Vec<SliceView> {
    let Some(service) = svc.derivable() else { return Vec::new() };
    let namespace = service_id(svc).0;
    let slices = sluice_model::derive_endpoint_slices(&service, pods.get(namespace.as_str()).into_iter().flatten().copied());
    slices.iter().map(SliceView::of).collect()
}

/// The service a slice belongs to, by its service-name label.
fn slice_service(slice: &SliceView) -> Option<ServiceId> {
    let name = slice.service.as_ref()?;
    Some((or_default(&slice.namespace), name.clone()))
}

pub fn service_id(svc: &ServiceView) -> ServiceId {
    (or_default(&svc.namespace), svc.name.clone())
}

/// An object without a namespace is in `default`.
fn or_default(namespace: &str) -> String {
    if namespace.is_empty() { "default" } else { namespace }.to_owned()
}
