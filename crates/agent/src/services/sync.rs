//! The agent's service loop: reads Services, EndpointSlices and pods from a cluster snapshot,
//! derives the slices of selector services as the endpoint-slice controller would, computes
//! this node's desired tables and programs them; collects expired conntrack entries; closes
//! established connections to removed backends with the kernel's socket destroy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_datapath::{DatapathTables, ServiceTables};
use sluice_services::desired::{desired_services, NodeInfo, Protocol};

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
}

pub struct Services {
    node: NodeInfo,
    config: ServicesConfig,
    programmer: Mutex<Option<ServiceProgrammer>>,
    /// The revision of the last good round.
    seen: Mutex<Option<u64>>,
    stats: Mutex<ServiceStats>,
}

// === impl Services ===

impl Services {
    pub fn new(node: NodeInfo, config: ServicesConfig) -> Self {
        Self {
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
        let services: Vec<_> = objects.services.values().cloned().collect();
        let pods: Vec<_> = objects.pods.values().cloned().collect();
        let mut slices: Vec<EndpointSlice> = objects.endpoint_slices.values().cloned().collect();
        for svc in &services {
            slices.extend(sluice_model::derive_endpoint_slices(svc, &pods));
        }
        let desired = desired_services(&services, &slices, &self.node);
        let mut guard = lock(&self.programmer);
        if guard.is_none() {
            *guard = Some(ServiceProgrammer::adopt(datapath, self.config.maglev_table_size)?);
        }
        let Some(programmer) = guard.as_mut() else { return Ok(None) };
        let result = programmer.program(datapath, &desired);
        let mut stats = lock(&self.stats);
        match &result {
            Ok(_) => {
                *lock(&self.seen) = Some(objects.revision);
                stats.store_generation = Some(objects.revision);
                stats.last_error = None;
                stats.frontends = desired.frontends.len();
                stats.last_program_micros = started.elapsed().as_micros() as u64;
            }
            Err(e) => stats.last_error = Some(e.to_string()),
        }
        result.map(Some)
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
