//! The agent's core: the [`Agent`] that holds the node's stores, the datapath and the loops'
//! state, and its constructor. What it does is split by concern into submodules, each an
//! `impl Agent` block: the CNI lifecycle, resync, status, services, policy and cluster glue.

mod cluster;
mod cni;
mod policy;
mod resync;
mod services;
mod status;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_datapath::DatapathTables;
use sluice_state::StateSource;

use crate::config::AgentConfig;
use crate::endpoints::EndpointStore;
use crate::error::AgentError;
use crate::events::Events;
use crate::identity::Identities;
use crate::ipam::Ipam;
use crate::metrics::Metrics;
use crate::observer::Observer;
use crate::plumber::Plumber;

pub use cni::{host_ifname, is_host_ifname};

/// Host routing in force and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoutingDecision {
    pub mode: sluice_datapath::HostRouting,
    pub reason: String,
}

pub struct Agent {
    config: AgentConfig,
    ipam: Ipam,
    identities: Identities,
    endpoints: EndpointStore,
    /// Shared with blocking tasks: attaching a program waits for an RCU grace period, which
    /// ADD overlaps with configuring the interface.
    datapath: Arc<Mutex<Box<dyn DatapathTables>>>,
    plumber: Box<dyn Plumber>,
    state: Option<Arc<dyn StateSource>>,
    host_routing: HostRoutingDecision,
    netdevs: Vec<String>,
    started: Instant,
    observer: Arc<Observer>,
    events: Arc<Events>,
    metrics: Metrics,
    /// CNI calls are serialised: they are rare, and one at a time keeps rollback simple.
    cni_lock: tokio::sync::Mutex<()>,
    services: Option<Arc<crate::services::sync::Services>>,
    policies: Option<Arc<crate::policy::sync::Policies>>,
    /// Where socket LB is attached, or why it is not.
    socket_lb: String,
    xdp: Option<Arc<Mutex<sluice_datapath::XdpNetdev>>>,
    /// Cluster mode: the node's membership (etcd).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Woken by every CNI ADD and DEL, so the cluster loop publishes the node's endpoints
    /// after its debounce window instead of at the next tick.
    endpoint_changes: Arc<tokio::sync::Notify>,
}

/// Everything [`Agent::new`] needs.
pub struct AgentParts {
    pub config: AgentConfig,
    pub db: Arc<crate::db::AgentDb>,
    pub datapath: Box<dyn DatapathTables>,
    pub plumber: Box<dyn Plumber>,
    pub state: Option<Arc<dyn StateSource>>,
    pub host_routing: HostRoutingDecision,
    pub netdevs: Vec<String>,
    pub started: Instant,
    pub observer: Arc<Observer>,
    /// The service loop's state; `None` when this agent programs no services.
    pub services: Option<Arc<crate::services::sync::Services>>,
    /// The policy loop's state; `None` when this agent enforces no policy.
    pub policies: Option<Arc<crate::policy::sync::Policies>>,
    pub socket_lb: String,
    /// The XDP program on the node's devices, when configured.
    pub xdp: Option<Arc<Mutex<sluice_datapath::XdpNetdev>>>,
    pub events: Arc<Events>,
    /// Cluster mode: the node's membership; identities are numbered by the cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

// === impl Agent ===

impl Agent {
    pub fn new(parts: AgentParts) -> Result<Self, AgentError> {
        let ipam = Ipam::new(parts.db.clone(), parts.config.ipv4_cidr(), parts.config.ipv6_cidr())?;
        let identities = match &parts.cluster {
            Some(c) => Identities::with_numbering(parts.db.clone(), c.numbering(tokio::runtime::Handle::current()))?,
            None => Identities::new(parts.db.clone())?,
        };
        let endpoints = EndpointStore::new(parts.db)?;
        Ok(Self {
            config: parts.config,
            ipam,
            identities,
            endpoints,
            datapath: Arc::new(Mutex::new(parts.datapath)),
            plumber: parts.plumber,
            state: parts.state,
            host_routing: parts.host_routing,
            netdevs: parts.netdevs,
            started: parts.started,
            observer: parts.observer,
            events: parts.events,
            metrics: Metrics::default(),
            cni_lock: tokio::sync::Mutex::new(()),
            services: parts.services,
            policies: parts.policies,
            socket_lb: parts.socket_lb,
            xdp: parts.xdp,
            cluster: parts.cluster,
            endpoint_changes: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Notified after every CNI ADD and DEL (see the field).
    pub fn endpoint_changes(&self) -> Arc<tokio::sync::Notify> {
        self.endpoint_changes.clone()
    }

    /// The host routing mode in force and why.
    pub fn host_routing(&self) -> &HostRoutingDecision {
        &self.host_routing
    }

    fn with_datapath<T>(
        &self,
        f: impl FnOnce(&mut dyn DatapathTables) -> Result<T, sluice_datapath::DatapathError>,
    ) -> Result<T, AgentError> {
        with_tables(&self.datapath, f)
    }
}

fn with_tables<T>(
    tables: &Mutex<Box<dyn DatapathTables>>,
    f: impl FnOnce(&mut dyn DatapathTables) -> Result<T, sluice_datapath::DatapathError>,
) -> Result<T, AgentError> {
    let mut guard = tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(f(guard.as_mut())?)
}
