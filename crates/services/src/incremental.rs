//! The desired tables kept between rounds: a service's frontends and backend sets are computed
//! again only when the caller says its Service or endpoint slices changed, and merged with the others in
//! (namespace, name) order — the first service to claim a frontend keeps it — so the result is
//! always what [`desired_services`](crate::desired::desired_services) computes over everything, at the cost of what changed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::desired::{desired_from_views, BackendSet, DesiredServices, Frontend, FrontendKey, FrontendKind, NodeInfo, Scope, SetKey};
use crate::small_set::SmallSet;
use crate::view::{ServiceView, SliceView};

/// A service by (namespace, name).
pub type ServiceId = (String, String);

/// What a service's tables are computed from: the Service and its endpoint slices (applied
/// ones borrowed, derived ones owned), in a stable order.
pub struct ServiceInput<'a> {
    pub service: &'a ServiceView,
    pub slices: Vec<Cow<'a, SliceView>>,
}

/// What one service's inputs gave, in exact-size vectors (a service has a few frontends and
/// sets; a map per service would cost a node allocation of each). The inputs themselves are
/// not kept: a caller knows what changed from its own snapshots, and a full update computes
/// everything again.
struct Entry {
    partial: Partial,
}

struct Partial {
    frontends: Vec<(FrontendKey, Frontend)>,
    sets: Vec<(SetKey, Arc<BackendSet>)>,
}

impl Partial {
    fn of(desired: DesiredServices) -> Self {
        let mut frontends: Vec<_> = desired.frontends.into_iter().collect();
        let mut sets: Vec<_> = desired.sets.into_iter().collect();
        frontends.shrink_to_fit();
        sets.shrink_to_fit();
        Self { frontends, sets }
    }

    fn frontend_keys(&self) -> impl Iterator<Item = &FrontendKey> {
        self.frontends.iter().map(|(k, _)| k)
    }

    fn set_keys(&self) -> impl Iterator<Item = &SetKey> {
        self.sets.iter().map(|(k, _)| k)
    }

    fn frontend(&self, key: &FrontendKey) -> Option<&Frontend> {
        self.frontends.iter().find(|(k, _)| k == key).map(|(_, f)| f)
    }
}

/// The frontends and sets one update may have changed: what the programmer must look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub frontends: BTreeSet<FrontendKey>,
    pub sets: BTreeSet<SetKey>,
}

/// What one update did.
#[derive(Debug, Clone, Default)]
pub struct CacheUpdate {
    /// Services computed again (changed, new or gone).
    pub recomputed: usize,
    pub touched: Touched,
}

/// The node's desired service tables, kept up to date service by service.
pub struct DesiredCache {
    node: NodeInfo,
    entries: BTreeMap<ServiceId, Entry>,
    /// Every service that claims a frontend; the first in order keeps it.
    claims: BTreeMap<FrontendKey, SmallSet<ServiceId>>,
    merged: DesiredServices,
}

// === impl DesiredCache ===

impl DesiredCache {
    pub fn new(node: NodeInfo) -> Self {
        Self { node, entries: BTreeMap::new(), claims: BTreeMap::new(), merged: DesiredServices::default() }
    }

    /// The tables as of the last [`DesiredCache::update`].
    pub fn desired(&self) -> &DesiredServices {
        &self.merged
    }

    /// Brings the tables to `inputs`, every service there is, computing each again (the
    /// start, and the periodic full round that heals whatever a missed change left).
    pub fn update(&mut self, inputs: BTreeMap<ServiceId, ServiceInput<'_>>) -> CacheUpdate {
        let mut changed: BTreeMap<ServiceId, Option<ServiceInput<'_>>> =
            self.entries.keys().filter(|id| !inputs.contains_key(*id)).map(|id| (id.clone(), None)).collect();
        changed.extend(inputs.into_iter().map(|(id, input)| (id, Some(input))));
        self.update_changed(changed)
    }

    /// Computes again the services in `changed` only — `Some` with its inputs, `None` when it
    /// is gone — and merges them: for a caller that knows what changed (a snapshot diff).
    pub fn update_changed(&mut self, changed: BTreeMap<ServiceId, Option<ServiceInput<'_>>>) -> CacheUpdate {
        let mut affected: BTreeSet<FrontendKey> = BTreeSet::new();
        let mut sets: BTreeSet<SetKey> = BTreeSet::new();
        let recomputed = changed.len();
        let mut touched: BTreeSet<ServiceId> = BTreeSet::new();
        for (id, input) in changed {
            if let Some(old) = self.entries.remove(&id) {
                self.unclaim(&id, &old.partial, &mut affected);
                sets.extend(old.partial.set_keys().cloned());
                self.drop_sets(&old.partial);
            }
            if let Some(input) = input {
                let slices: Vec<&SliceView> = input.slices.iter().map(|s| s.as_ref()).collect();
                let partial = Partial::of(desired_from_views(&[input.service], &slices, &self.node));
                for key in partial.frontend_keys() {
                    self.claims.entry(key.clone()).or_default().insert(id.clone());
                    affected.insert(key.clone());
                }
                sets.extend(partial.set_keys().cloned());
                self.entries.insert(id.clone(), Entry { partial });
            }
            touched.insert(id);
        }
        // Every service that claims a frontend whose owner may have changed has its sets
        // looked at again, with the changed services.
        for key in &affected {
            match self.claims.get(key).and_then(|c| c.first()) {
                Some(winner) => {
                    if let Some(f) = self.entries.get(winner).and_then(|e| e.partial.frontend(key)) {
                        self.merged.frontends.insert(key.clone(), f.clone());
                    }
                    touched.extend(self.claims[key].iter().cloned());
                }
                None => {
                    self.claims.remove(key);
                    self.merged.frontends.remove(key);
                }
            }
        }
        for id in &touched {
            if let Some(e) = self.entries.get(id) {
                sets.extend(e.partial.set_keys().cloned());
            }
            self.refresh_sets(id);
        }
        CacheUpdate { recomputed, touched: Touched { frontends: affected, sets } }
    }

    fn unclaim(&mut self, id: &ServiceId, partial: &Partial, affected: &mut BTreeSet<FrontendKey>) {
        for key in partial.frontend_keys() {
            if let Some(c) = self.claims.get_mut(key) {
                c.remove(id);
            }
            affected.insert(key.clone());
        }
    }

    fn drop_sets(&mut self, partial: &Partial) {
        for set in partial.set_keys() {
            self.merged.sets.remove(set);
        }
    }

    /// A service's sets in the merged tables: those its winning frontends point at, Maglev when
    /// one of them is an External-scope frontend other than a ClusterIP.
    fn refresh_sets(&mut self, id: &ServiceId) {
        let Some(entry) = self.entries.get(id) else { return };
        let mut kept: BTreeMap<&SetKey, bool> = BTreeMap::new();
        for (key, frontend) in &entry.partial.frontends {
            if self.claims.get(key).and_then(|c| c.first()) == Some(id) {
                let maglev = key.scope == Scope::External && frontend.kind != FrontendKind::ClusterIp;
                *kept.entry(&frontend.set).or_insert(false) |= maglev;
            }
        }
        for (set_key, backends) in &entry.partial.sets {
            match kept.get(set_key) {
                // The service's own set when the merge does not change it: one copy, shared.
                Some(maglev) if backends.maglev == *maglev => {
                    self.merged.sets.insert(set_key.clone(), backends.clone());
                }
                Some(maglev) => {
                    let mut set = BackendSet::clone(backends);
                    set.maglev = *maglev;
                    self.merged.sets.insert(set_key.clone(), Arc::new(set));
                }
                None => {
                    self.merged.sets.remove(set_key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::desired::{desired_services, SERVICE_NAME_LABEL};

    fn node() -> NodeInfo {
        NodeInfo { name: "node0".into(), addresses: vec!["192.0.2.10".parse().unwrap()] }
    }

    fn service(name: &str, cluster_ip: &str, external_ip: Option<&str>, node_port: Option<i32>) -> Service {
        Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                type_: Some(if node_port.is_some() { "NodePort" } else { "ClusterIP" }.into()),
                cluster_ip: Some(cluster_ip.into()),
                cluster_ips: Some(vec![cluster_ip.into()]),
                ip_families: Some(vec!["IPv4".into()]),
                external_ips: external_ip.map(|ip| vec![ip.to_owned()]),
                ports: Some(vec![ServicePort { port: 80, protocol: Some("TCP".into()), node_port, ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice(service: &str, backends: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-1")),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: backends
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![(*a).into()],
                    conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort { port: Some(8080), protocol: Some("TCP".into()), ..Default::default() }]),
        }
    }

    fn input<'a>(svc: &'a ServiceView, slices: &'a [SliceView]) -> ServiceInput<'a> {
        ServiceInput { service: svc, slices: slices.iter().map(Cow::Borrowed).collect() }
    }

    /// Runs the cache over `world` — every service, or only `changed` ones — and checks it
    /// against the full computation.
    fn step(
        cache: &mut DesiredCache,
        world: &BTreeMap<String, (Service, Vec<EndpointSlice>)>,
        what: &str,
        changed: Option<&[&str]>,
    ) -> usize {
        let views: BTreeMap<&String, (ServiceView, Vec<SliceView>)> =
            world.iter().map(|(name, (svc, slices))| (name, (ServiceView::of(svc), slices.iter().map(SliceView::of).collect()))).collect();
        let recomputed = match changed {
            None => {
                cache
                    .update(
                        views.iter().map(|(name, (svc, slices))| (("default".to_owned(), (*name).clone()), input(svc, slices))).collect(),
                    )
                    .recomputed
            }
            Some(names) => {
                let changes = names
                    .iter()
                    .map(|n| (("default".to_owned(), (*n).to_owned()), views.get(&(*n).to_owned()).map(|(svc, slices)| input(svc, slices))))
                    .collect();
                cache.update_changed(changes).recomputed
            }
        };
        let services: Vec<Service> = world.values().map(|(s, _)| s.clone()).collect();
        let slices: Vec<EndpointSlice> = world.values().flat_map(|(_, s)| s.clone()).collect();
        assert_eq!(cache.desired(), &desired_services(&services, &slices, &node()), "{what}: the cache equals the full computation");
        recomputed
    }

    #[test]
    fn only_what_changed_is_computed_and_the_result_equals_the_full_computation() {
        let mut cache = DesiredCache::new(node());
        let mut world = BTreeMap::new();
        for i in 0..50 {
            let name = format!("svc-{i:02}");
            world.insert(
                name.clone(),
                (service(&name, &format!("10.96.0.{}", i + 1), None, None), vec![slice(&name, &["198.19.0.5", "198.19.1.5"])]),
            );
        }
        assert_eq!(step(&mut cache, &world, "first round", None), 50, "everything is new");

        world.get_mut("svc-07").unwrap().1 = vec![slice("svc-07", &["198.19.0.5"])];
        assert_eq!(step(&mut cache, &world, "one backend removed", Some(&["svc-07"])), 1, "one service's slice changed");

        world.remove("svc-08");
        assert_eq!(step(&mut cache, &world, "one service deleted", Some(&["svc-08"])), 1, "one service gone");

        world.insert("svc-99".into(), (service("svc-99", "10.96.1.1", None, Some(30080)), vec![]));
        assert_eq!(step(&mut cache, &world, "a NodePort service without endpoints", Some(&["svc-99"])), 1, "one service new");
        assert_eq!(step(&mut cache, &world, "a full round", None), 50, "a full round computes everything again");
    }

    #[test]
    fn a_shared_frontend_passes_to_the_next_claimant_when_the_first_goes() {
        let mut cache = DesiredCache::new(node());
        let mut world = BTreeMap::new();
        // Both claim external IP 203.0.113.7:80 (shared by mistake): "a" keeps it.
        world.insert("a".to_owned(), (service("a", "10.96.0.1", Some("203.0.113.7"), None), vec![slice("a", &["198.19.0.5"])]));
        world.insert("b".to_owned(), (service("b", "10.96.0.2", Some("203.0.113.7"), None), vec![slice("b", &["198.19.0.6"])]));
        step(&mut cache, &world, "two claimants", None);
        let shared =
            cache.desired().frontends.iter().find(|(k, _)| k.addr.to_string() == "203.0.113.7").map(|(_, f)| f.set.service.clone());
        assert_eq!(shared.as_deref(), Some("a"), "the first in order keeps the shared frontend");

        world.remove("a");
        step(&mut cache, &world, "the first claimant deleted", Some(&["a"]));
        let shared =
            cache.desired().frontends.iter().find(|(k, _)| k.addr.to_string() == "203.0.113.7").map(|(_, f)| f.set.service.clone());
        assert_eq!(shared.as_deref(), Some("b"), "the next claimant takes it over");

        world.insert("a".to_owned(), (service("a", "10.96.0.1", Some("203.0.113.7"), None), vec![slice("a", &["198.19.0.5"])]));
        step(&mut cache, &world, "the first claimant back", Some(&["a"]));
    }
}
