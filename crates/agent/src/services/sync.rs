//! The agent's service loop: reads Services, EndpointSlices and pods from a cluster snapshot,
//! derives the slices of selector services as the endpoint-slice controller would, computes
//! this node's desired tables and programs them; collects expired conntrack entries; closes
//! established connections to removed backends with the kernel's socket destroy. Only what a
//! change touches is computed again: a service whose object and slices are unchanged keeps its
//! tables, and derived slices are kept while neither their service nor the pods changed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_datapath::{DatapathTables, ServiceTables};
use sluice_services::desired::{NodeInfo, Protocol, SERVICE_NAME_LABEL};
use sluice_services::incremental::{DesiredCache, ServiceId, ServiceInput};
use sluice_state::Store;

use super::program::{ProgramError, ProgramReport, ProgrammedFrontend, ServiceProgrammer};
use crate::config::ServicesConfig;

/// What the last rounds did, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct ServiceStats {
    pub frontends: usize,
    pub last_program_micros: u64,
    pub last_error: Option<String>,
    pub conntrack_collected: u64,
    pub sockets_destroyed: u64,
    /// The state revision last programmed.
    pub store_generation: Option<u64>,
    /// Services whose tables the last round computed again.
    pub last_recomputed: usize,
}

/// Slices derived from pods, per selector service, with the service they were derived for.
type DerivedSlices = BTreeMap<ServiceId, (Service, Vec<EndpointSlice>)>;

pub struct Services {
    node: NodeInfo,
    config: ServicesConfig,
    programmer: Mutex<Option<ServiceProgrammer>>,
    /// The revision of the last good round.
    seen: Mutex<Option<u64>>,
    stats: Mutex<ServiceStats>,
    /// The desired tables, kept between rounds.
    cache: Mutex<DesiredCache>,
    /// The objects the derived slices were computed from, and those slices.
    derived: Mutex<(Option<Arc<Store>>, DerivedSlices)>,
}

// === impl Services ===

impl Services {
    pub fn new(node: NodeInfo, config: ServicesConfig) -> Self {
        Self {
            cache: Mutex::new(DesiredCache::new(node.clone())),
            derived: Mutex::new((None, BTreeMap::new())),
            node,
            config,
            programmer: Mutex::new(None),
            seen: Mutex::new(None),
            stats: Mutex::new(ServiceStats::default()),
        }
    }

    pub fn config(&self) -> &ServicesConfig {
        &self.config
    }

    /// Programs the services of `objects` when its revision is new to this loop (or always
    /// when `force`). Returns the round's report, `None` when nothing was to be done.
    pub fn sync(&self, datapath: &mut dyn DatapathTables, objects: &sluice_state::ClusterState, force: bool) -> Result<Option<ProgramReport>, ProgramError> {
        if !objects.synced {
            // A partial view would withdraw every service it has not seen yet.
            return Ok(None);
        }
        if !force && *lock(&self.seen) == Some(objects.revision) {
            return Ok(None);
        }
        let started = Instant::now();
        let mut derived = lock(&self.derived);
        refresh_derived(&mut derived, &objects.objects);
        let mut cache = lock(&self.cache);
        let recomputed = cache.update(inputs(&objects.objects, &derived.1));
        drop(derived);
        let desired = cache.desired();
        let mut guard = lock(&self.programmer);
        if guard.is_none() {
            *guard = Some(ServiceProgrammer::adopt(datapath, self.config.maglev_table_size)?);
        }
        let Some(programmer) = guard.as_mut() else { return Ok(None) };
        let result = programmer.program(datapath, desired);
        let mut stats = lock(&self.stats);
        match &result {
            Ok(_) => {
                *lock(&self.seen) = Some(objects.revision);
                stats.store_generation = Some(objects.revision);
                stats.last_error = None;
                stats.frontends = desired.frontends.len();
                stats.last_recomputed = recomputed;
                stats.last_program_micros = started.elapsed().as_micros() as u64;
            }
            Err(e) => stats.last_error = Some(e.to_string()),
        }
        result.map(Some)
    }

    /// The node's name, as the desired tables know it.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Frontends as programmed.
    pub fn list(&self) -> Vec<ProgrammedFrontend> {
        lock(&self.programmer).as_ref().map(ServiceProgrammer::list).unwrap_or_default()
    }

    pub fn stats(&self) -> ServiceStats {
        lock(&self.stats).clone()
    }

    /// Removes conntrack entries idle past their timeout; returns how many.
    pub fn collect_conntrack(&self, datapath: &mut dyn ServiceTables) -> Result<usize, sluice_datapath::DatapathError> {
        let now = monotonic_ns();
        let secs = |s: u64| s.saturating_mul(1_000_000_000);
        let mut removed = 0;
        for (key, entry) in datapath.conntrack()? {
            let timeout = if key.proto == Protocol::Tcp.number() {
                if entry.flags & sluice_abi::SLUICE_CT_F_CLOSING as u8 != 0 {
                    secs(self.config.conntrack_tcp_closing_timeout)
                } else {
                    secs(self.config.conntrack_tcp_timeout)
                }
            } else {
                secs(self.config.conntrack_other_timeout)
            };
            if now.saturating_sub(entry.last_seen_ns) > timeout {
                datapath.remove_conntrack(&key)?;
                removed += 1;
            }
        }
        lock(&self.stats).conntrack_collected += removed as u64;
        Ok(removed)
    }

    /// Closes established connections to removed backends in each of `netns` (pod network
    /// namespaces; `None` is the agent's own).
    pub fn close_connections(&self, removed: &[(IpAddr, u16, Protocol)], netns: &[Option<PathBuf>]) -> usize {
        let mut closed = 0;
        for (addr, port, protocol) in removed {
            if *protocol == Protocol::Sctp {
                continue;
            }
            for ns in netns {
                match sluice_datapath::sock_destroy::destroy_sockets_to(ns.as_deref(), SocketAddr::new(*addr, *port), protocol.number()) {
                    Ok(n) => closed += n,
                    Err(e) => tracing::debug!("closing connections to removed backend {addr}:{port}: {e}"),
                }
            }
        }
        lock(&self.stats).sockets_destroyed += closed as u64;
        closed
    }
}

/// Brings the derived slices to `objects`: a selector service's are derived again when the
/// service changed or any pod did (or always, the first time).
fn refresh_derived(derived: &mut (Option<Arc<Store>>, DerivedSlices), objects: &Arc<Store>) {
    let pods_same = derived.0.as_ref().is_some_and(|prev| Arc::ptr_eq(prev, objects) || prev.pods == objects.pods);
    let mut by_namespace: Option<BTreeMap<&str, Vec<&Pod>>> = None;
    let mut next = BTreeMap::new();
    for svc in objects.services.values() {
        if svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_none_or(|s| s.is_empty()) {
            continue;
        }
        let id = service_id(svc);
        if pods_same {
            if let Some((old, slices)) = derived.1.remove(&id).filter(|(old, _)| old == svc) {
                next.insert(id, (old, slices));
                continue;
            }
        }
        let pods = by_namespace.get_or_insert_with(|| {
            let mut m: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
            for pod in objects.pods.values() {
                m.entry(pod.metadata.namespace.as_deref().unwrap_or("default")).or_default().push(pod);
            }
            m
        });
        let slices = sluice_model::derive_endpoint_slices(svc, pods.get(id.0.as_str()).into_iter().flatten().copied());
        next.insert(id, (svc.clone(), slices));
    }
    *derived = (Some(objects.clone()), next);
}

/// Every service with its slices: applied ones (by their service-name label) then derived ones.
fn inputs<'a>(objects: &'a Store, derived: &'a DerivedSlices) -> BTreeMap<ServiceId, ServiceInput<'a>> {
    let mut applied: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in objects.endpoint_slices.values() {
        if let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            applied.entry((slice.metadata.namespace.as_deref().unwrap_or("default"), service.as_str())).or_default().push(slice);
        }
    }
    let mut out = BTreeMap::new();
    for svc in objects.services.values() {
        let id = service_id(svc);
        let own = (svc.metadata.namespace.as_deref().unwrap_or("default"), svc.metadata.name.as_deref().unwrap_or_default());
        let mut slices: Vec<Cow<'a, EndpointSlice>> = applied.remove(&own).unwrap_or_default().into_iter().map(Cow::Borrowed).collect();
        if let Some((_, d)) = derived.get(&id) {
            slices.extend(d.iter().map(Cow::Borrowed));
        }
        out.insert(id, ServiceInput { service: svc, slices });
    }
    out
}

fn service_id(svc: &Service) -> ServiceId {
    (svc.metadata.namespace.clone().unwrap_or_else(|| "default".into()), svc.metadata.name.clone().unwrap_or_default())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
