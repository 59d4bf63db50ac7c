//! What the service tables are computed from, kept between rounds: each service's applied
//! slices (an index by the service-name label), the slices derived from pods for selector
//! services, and — between two snapshots of the cluster — which services changed, found by
//! diffing the snapshots' persistent maps (their shared structure is skipped, so a change
//! costs what it touched, not the cluster's size).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_services::desired::SERVICE_NAME_LABEL;
use sluice_services::incremental::{ServiceId, ServiceInput};
use sluice_state::Store;

/// The inputs as of the last snapshot seen.
#[derive(Default)]
pub struct Inputs {
    /// The snapshot the index and the derived slices are of.
    seen: Option<Arc<Store>>,
    /// Applied slice keys by the service they name.
    slices_of: BTreeMap<ServiceId, BTreeSet<String>>,
    /// Slices derived from pods, per selector service.
    derived: BTreeMap<ServiceId, Vec<EndpointSlice>>,
}

// === impl Inputs ===

impl Inputs {
    /// Moves to `objects` and returns the services whose inputs changed since the last
    /// snapshot, or `None` when everything must be looked at (the first snapshot).
    pub fn advance(&mut self, objects: &Arc<Store>) -> Option<BTreeSet<ServiceId>> {
        let Some(prev) = self.seen.replace(objects.clone()) else {
            self.rebuild(objects);
            return None;
        };
        let mut changed = BTreeSet::new();
        for item in prev.services.diff(&objects.services) {
            let svc = match item {
                DiffItem::Add(_, s) | DiffItem::Update { new: (_, s), .. } | DiffItem::Remove(_, s) => s,
            };
            changed.insert(service_id(svc));
        }
        for item in prev.endpoint_slices.diff(&objects.endpoint_slices) {
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
        let candidates: Vec<&Service> = if namespaces.is_empty() {
            changed.iter().filter_map(|id| objects.services.get(&Store::key(&id.0, &id.1))).collect()
        } else {
            objects
                .services
                .values()
                .filter(|s| namespaces.contains(s.metadata.namespace.as_deref().unwrap_or("default")) || changed.contains(&service_id(s)))
                .collect()
        };
        let rederive: Vec<&Service> = candidates.into_iter().filter(|s| is_selector(s)).collect();
        if !rederive.is_empty() {
            let pods = pods_by_namespace(objects);
            for svc in rederive {
                let id = service_id(svc);
                self.derived
                    .insert(id.clone(), sluice_model::derive_endpoint_slices(svc, pods.get(id.0.as_str()).into_iter().flatten().copied()));
                changed.insert(id);
            }
        }
        Some(changed)
    }

    /// The inputs of the services in `ids` (`None` for those gone), from `objects`.
    pub fn of<'a>(&'a self, objects: &'a Store, ids: &BTreeSet<ServiceId>) -> BTreeMap<ServiceId, Option<ServiceInput<'a>>> {
        ids.iter().map(|id| (id.clone(), objects.services.get(&Store::key(&id.0, &id.1)).map(|svc| self.input(objects, svc)))).collect()
    }

    /// The inputs of every service in `objects`.
    pub fn all<'a>(&'a self, objects: &'a Store) -> BTreeMap<ServiceId, ServiceInput<'a>> {
        objects.services.values().map(|svc| (service_id(svc), self.input(objects, svc))).collect()
    }

    fn input<'a>(&'a self, objects: &'a Store, svc: &'a Service) -> ServiceInput<'a> {
        let id = service_id(svc);
        let mut slices: Vec<Cow<'a, EndpointSlice>> =
            self.slices_of.get(&id).into_iter().flatten().filter_map(|key| objects.endpoint_slices.get(key)).map(Cow::Borrowed).collect();
        slices.extend(self.derived.get(&id).into_iter().flatten().map(Cow::Borrowed));
        ServiceInput { service: svc, slices }
    }

    fn rebuild(&mut self, objects: &Store) {
        self.slices_of.clear();
        self.derived.clear();
        let mut ignored = BTreeSet::new();
        for (key, slice) in objects.endpoint_slices.iter() {
            self.index(key, slice, &mut ignored);
        }
        let pods = pods_by_namespace(objects);
        for svc in objects.services.values().filter(|s| is_selector(s)) {
            let id = service_id(svc);
            let slices = sluice_model::derive_endpoint_slices(svc, pods.get(id.0.as_str()).into_iter().flatten().copied());
            self.derived.insert(id, slices);
        }
    }

    fn index(&mut self, key: &str, slice: &EndpointSlice, changed: &mut BTreeSet<ServiceId>) {
        if let Some(id) = slice_service(slice) {
            self.slices_of.entry(id.clone()).or_default().insert(key.to_owned());
            changed.insert(id);
        }
    }

    fn unindex(&mut self, key: &str, slice: &EndpointSlice, changed: &mut BTreeSet<ServiceId>) {
        if let Some(id) = slice_service(slice) {
            if let Some(keys) = self.slices_of.get_mut(&id) {
                keys.remove(key);
                if keys.is_empty() {
                    self.slices_of.remove(&id);
                }
            }
            changed.insert(id);
        }
    }
}

fn pods_by_namespace(objects: &Store) -> BTreeMap<&str, Vec<&Pod>> {
    let mut m: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in objects.pods.values() {
        m.entry(pod.metadata.namespace.as_deref().unwrap_or("default")).or_default().push(pod);
    }
    m
}

fn is_selector(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty())
}

/// The service a slice belongs to, by its service-name label.
fn slice_service(slice: &EndpointSlice) -> Option<ServiceId> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((slice.metadata.namespace.clone().unwrap_or_else(|| "default".into()), name.clone()))
}

pub fn service_id(svc: &Service) -> ServiceId {
    (svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()), svc.metadata.name.clone().unwrap_or_default())
}
