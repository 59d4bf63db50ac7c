//! The agent's service loop: reads Services, EndpointSlices and pods from a cluster snapshot,
//! derives the slices of selector services as the endpoint-slice controller would, computes
//! this node's desired tables and programs them; collects expired conntrack entries; closes
//! established connections to removed backends with the kernel's socket destroy. Only what a
//! change touches is computed and programmed again (see `inputs`): one Service changed among
//! thousands costs that Service.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use sluice_datapath::{DatapathTables, ServiceTables};
use sluice_services::desired::{NodeInfo, Protocol};
use sluice_services::incremental::DesiredCache;

use super::inputs::Inputs;

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

pub struct Services {
    node: NodeInfo,
    config: ServicesConfig,
    programmer: Mutex<Option<ServiceProgrammer>>,
    /// The revision of the last good round.
    seen: Mutex<Option<u64>>,
    stats: Mutex<ServiceStats>,
    /// What the tables are computed from, and the tables, kept between rounds.
    state: Mutex<RoundState>,
}

struct RoundState {
    inputs: Inputs,
    cache: DesiredCache,
    /// The last round failed to program: the inputs have moved on, so the next round must
    /// compare and program everything, not only what changes after (else the failure is
    /// forgotten and what it left unprogrammed stays so until the periodic resync).
    retry_all: bool,
}

// === impl Services ===

impl Services {
    pub fn new(node: NodeInfo, config: ServicesConfig) -> Self {
        Self {
            state: Mutex::new(RoundState { inputs: Inputs::default(), cache: DesiredCache::new(node.clone()), retry_all: false }),
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
    /// when `force`). Returns the round's report, `None` when nothing was to be done. Only the
    /// services that changed since the last snapshot are computed and programmed again; a
    /// forced round (the periodic resync) compares and programs everything.
    pub fn sync(
        &self,
        datapath: &mut dyn DatapathTables,
        objects: &sluice_state::ClusterState,
        force: bool,
    ) -> Result<Option<ProgramReport>, ProgramError> {
        if !objects.synced {
            // A partial view would withdraw every service it has not seen yet.
            return Ok(None);
        }
        let mut state = lock(&self.state);
        let force = force || state.retry_all;
        if !force && *lock(&self.seen) == Some(objects.revision) {
            return Ok(None);
        }
        let started = Instant::now();
        let RoundState { inputs, cache, retry_all } = &mut *state;
        let compact = super::inputs::compact(&objects.objects);
        let changed = inputs.advance(&compact);
        let update = match (&changed, force) {
            (Some(ids), false) => cache.update_changed(inputs.of(&compact, ids)),
            _ => cache.update(inputs.all(&compact)),
        };
        let computed = started.elapsed();
        let desired = cache.desired();
        let mut guard = lock(&self.programmer);
        if guard.is_none() {
            *guard = Some(ServiceProgrammer::adopt(datapath, self.config.maglev_table_size)?);
        }
        let Some(programmer) = guard.as_mut() else { return Ok(None) };
        let result = match (&changed, force) {
            (Some(_), false) => programmer.program_touched(datapath, desired, &update.touched),
            _ => programmer.program(datapath, desired),
        };
        tracing::debug!(?computed, total = ?started.elapsed(), recomputed = update.recomputed, full = changed.is_none() || force, "service round");
        *retry_all = result.is_err();
        let mut stats = lock(&self.stats);
        match &result {
            Ok(_) => {
                *lock(&self.seen) = Some(objects.revision);
                stats.store_generation = Some(objects.revision);
                stats.last_error = None;
                stats.frontends = desired.frontends.len();
                stats.last_recomputed = update.recomputed;
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use sluice_datapath::fake::FakeDatapath;
    use sluice_services::desired::{desired_services, SERVICE_NAME_LABEL};
    use sluice_state::{ClusterState, Store};

    use super::*;
    use crate::services::program::ServiceProgrammer;

    fn node() -> NodeInfo {
        NodeInfo { name: "node0".into(), addresses: vec!["192.0.2.10".parse().unwrap()] }
    }

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: (!labels.is_empty()).then(|| labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..Default::default()
        }
    }

    fn service(i: usize, selector: bool) -> Service {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        Service {
            metadata: meta(&format!("svc-{i}"), &[]),
            spec: Some(ServiceSpec {
                type_: Some(if i.is_multiple_of(5) { "NodePort" } else { "ClusterIP" }.into()),
                cluster_ip: Some(ip.clone()),
                cluster_ips: Some(vec![ip]),
                ip_families: Some(vec!["IPv4".into()]),
                selector: selector.then(|| BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                ports: Some(vec![ServicePort {
                    port: 80,
                    protocol: Some("TCP".into()),
                    node_port: i.is_multiple_of(5).then_some(30000 + i as i32),
                    target_port: Some(IntOrString::Int(8080)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice(i: usize, backends: &[u8]) -> EndpointSlice {
        EndpointSlice {
            metadata: meta(&format!("svc-{i}-1"), &[(SERVICE_NAME_LABEL, &format!("svc-{i}"))]),
            address_type: "IPv4".into(),
            endpoints: backends
                .iter()
                .map(|b| Endpoint {
                    addresses: vec![format!("198.19.1.{b}")],
                    conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort { port: Some(8080), protocol: Some("TCP".into()), ..Default::default() }]),
        }
    }

    fn pod(name: &str, ip: &str) -> Pod {
        Pod {
            metadata: meta(name, &[("app", "web")]),
            spec: None,
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// Frontend -> (backend addresses, terminating addresses, flags), as programmed.
    type Programmed = BTreeMap<String, (Vec<String>, Vec<String>, u16)>;

    fn programmed(list: Vec<crate::services::program::ProgrammedFrontend>) -> Programmed {
        list.into_iter()
            .map(|f| {
                let mut backends: Vec<String> = f.backends.iter().map(|(a, _)| format!("{a:?}")).collect();
                backends.sort();
                let mut terminating: Vec<String> = f.terminating.iter().map(|a| format!("{a:?}")).collect();
                terminating.sort();
                (format!("{:?}", f.key), (backends, terminating, f.flags))
            })
            .collect()
    }

    /// What a fresh programmer writes from the full computation over `store`.
    fn from_scratch(store: &Store) -> (Programmed, usize, usize) {
        let services: Vec<Service> = store.services.values().cloned().collect();
        let pods: Vec<Pod> = store.pods.values().cloned().collect();
        let mut slices: Vec<EndpointSlice> = store.endpoint_slices.values().cloned().collect();
        for s in &services {
            slices.extend(sluice_model::derive_endpoint_slices(s, &pods));
        }
        let mut dp = FakeDatapath::default();
        let mut p = ServiceProgrammer::adopt(&dp, 13).unwrap();
        p.program(&mut dp, &desired_services(&services, &slices, &node())).unwrap();
        (programmed(p.list()), dp.lb_frontends.len(), dp.lb_backends.len())
    }

    #[test]
    fn a_failed_round_is_retried_whole_until_it_succeeds() {
        let services = Services::new(node(), ServicesConfig { maglev_table_size: 13, ..Default::default() });
        let mut dp = FakeDatapath { lb_backends_capacity: Some(3), ..Default::default() };
        let mut store = Store::default();
        store.services.insert(Store::key("default", "svc-1"), service(1, false));
        store.endpoint_slices.insert(Store::key("default", "svc-1-1"), slice(1, &[1, 2, 3]));
        let state = |revision, store: &Store| ClusterState { revision, synced: true, objects: Arc::new(store.clone()) };
        services.sync(&mut dp, &state(1, &store), false).expect("three backends fit");

        // A second service needs backends the full map cannot take: the round fails, says why.
        store.services.insert(Store::key("default", "svc-2"), service(2, false));
        store.endpoint_slices.insert(Store::key("default", "svc-2-1"), slice(2, &[4, 5]));
        let err = services.sync(&mut dp, &state(2, &store), false).expect_err("no room for svc-2's backends");
        assert!(err.to_string().contains("lb_backends"), "the error names the full map: {err}");
        assert!(services.stats().last_error.is_some(), "status keeps the failure");

        // Nothing changed since: the next round still fails rather than forgetting the failure.
        services.sync(&mut dp, &state(2, &store), false).expect_err("still no room: the failure is not forgotten");
        assert!(services.stats().last_error.is_some(), "the failure stays in status while svc-2 is unprogrammed");

        // Room is made: the next round programs what the failed ones could not, with no change to the objects.
        dp.lb_backends_capacity = None;
        services.sync(&mut dp, &state(2, &store), false).expect("room: the retry programs everything");
        assert!(services.stats().last_error.is_none(), "the failure is cleared once programmed");
        assert_eq!(services.list().len(), 2, "both services programmed");
    }

    #[test]
    fn changes_are_programmed_service_by_service_and_match_a_full_computation() {
        let services = Services::new(node(), ServicesConfig { maglev_table_size: 13, ..Default::default() });
        let mut dp = FakeDatapath::default();
        let mut store = Store::default();
        for i in 0..40 {
            let selector = i % 10 == 3;
            store.services.insert(Store::key("default", &format!("svc-{i}")), service(i, selector));
            if !selector {
                store.endpoint_slices.insert(Store::key("default", &format!("svc-{i}-1")), slice(i, &[1, 2, (i % 7) as u8 + 3]));
            }
        }
        store.pods.insert(Store::key("default", "web-1"), pod("web-1", "198.19.2.1"));
        let mut revision = 0;
        let mut step = |store: &Store, what: &str, expect_recomputed: Option<usize>| {
            revision += 1;
            let state = ClusterState { revision, synced: true, objects: Arc::new(store.clone()) };
            services.sync(&mut dp, &state, false).unwrap_or_else(|e| panic!("{what}: {e}"));
            let (want, frontends, backends) = from_scratch(store);
            assert_eq!(programmed(services.list()), want, "{what}: programmed as a full computation would");
            assert_eq!(
                (dp.lb_frontends.len(), dp.lb_backends.len()),
                (frontends, backends),
                "{what}: no stale frontend or backend in the maps"
            );
            if let Some(n) = expect_recomputed {
                assert_eq!(services.stats().last_recomputed, n, "{what}: services computed again");
            }
        };
        step(&store, "first round", Some(40));

        store.endpoint_slices.insert(Store::key("default", "svc-7-1"), slice(7, &[1, 9]));
        step(&store, "one slice changed", Some(1));

        store.services.remove(&Store::key("default", "svc-8"));
        step(&store, "a service deleted, its slice left", Some(1));
        store.endpoint_slices.remove(&Store::key("default", "svc-8-1"));
        step(&store, "its slice deleted too", Some(1));

        store.pods.insert(Store::key("default", "web-2"), pod("web-2", "198.19.2.2"));
        step(&store, "a pod added: the selector services follow", Some(4));

        store.endpoint_slices.insert(Store::key("default", "svc-11-1"), slice(11, &[]));
        step(&store, "a service lost every backend", Some(1));

        store.services.insert(Store::key("default", "svc-99"), service(99, false));
        store.endpoint_slices.insert(Store::key("default", "svc-99-1"), slice(99, &[1, 2]));
        step(&store, "a service added with its slice", Some(1));

        // The periodic full round heals and agrees.
        revision += 1;
        services.sync(&mut dp, &ClusterState { revision, synced: true, objects: Arc::new(store.clone()) }, true).unwrap();
        assert_eq!(programmed(services.list()), from_scratch(&store).0, "a forced round agrees");
    }
}
