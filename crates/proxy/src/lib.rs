//! The node's layer-7 proxy. The datapath hands it, with `bpf_sk_assign`, the TCP connections
//! whose allowing policy rules all carry HTTP rules; it checks every request against the rules
//! the agent writes ([`sluice_policy::l7::ProxyRules`]), answers `403 Forbidden` to those none
//! allows and forwards the others to the original destination from the client's own address.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_proxy::ProxyError> {
//! use sluice_proxy::{Proxy, ProxyConfig, UpstreamMode};
//! let config = ProxyConfig {
//!     port: 15001,
//!     rules_path: "/run/sluice/proxy-rules.json".into(),
//!     bpffs: Some("/sys/fs/bpf/sluice".into()),
//!     upstream: UpstreamMode::Transparent,
//!     flows_socket: None,
//! };
//! let proxy = Proxy::bind(config)?;
//! let mut flows = proxy.subscribe();
//! tokio::spawn(async move { while let Ok(flow) = flows.recv().await { println!("{flow:?}") } });
//! proxy.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod flow_socket;
pub mod flows;
pub mod identity;
pub mod rules;
pub mod server;
pub mod upstream;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

pub use flows::{FlowError, FlowTable, FlowVerdict, L7Flow, Stats, StatsSnapshot};
pub use identity::{IdentityError, IdentitySource};
pub use rules::{CompiledRules, Direction, RulesStore};
pub use server::{serve_connection, ProxyContext};
pub use upstream::UpstreamMode;

/// How long a stopping proxy lets open connections finish: under Kubernetes' default grace
/// period of 30 s, so that a container stop drains rather than kills.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// Failures starting the proxy.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The listening address is taken or not allowed.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Another step of setting up a listener failed (IP_TRANSPARENT needs CAP_NET_ADMIN).
    #[error("listener {addr}: {step}: {source}")]
    Listen {
        addr: SocketAddr,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The socket the agent reads flows from could not be made.
    #[error("flow socket {path}: {source}")]
    FlowSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// What the proxy is started with.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Port of the listeners on 127.0.0.1 and [::1]: the proxy port of the policy entries.
    pub port: u16,
    /// The rules file the agent writes; polled for new generations.
    pub rules_path: PathBuf,
    /// Where the datapath's maps are pinned (`ipcache`, `policy_ct`). `None`: every address is
    /// world and no conntrack entries are written (only useful with [`UpstreamMode::Plain`]).
    pub bpffs: Option<PathBuf>,
    pub upstream: UpstreamMode,
    /// A unix socket to stream the flows on, for the agent (see [`flow_socket`]).
    pub flows_socket: Option<PathBuf>,
}

/// A proxy whose listeners are bound, ready to [`serve`](Proxy::serve).
pub struct Proxy {
    listeners: Vec<TcpListener>,
    ctx: Arc<ProxyContext>,
    watcher: rules::RulesWatcher,
    flows_socket: Option<(tokio::net::UnixListener, PathBuf)>,
}

impl Proxy {
    /// Opens the maps, loads the rules and binds the listeners. Must run inside a Tokio runtime.
    pub fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        let (identities, flows): (Arc<dyn IdentitySource>, Arc<dyn FlowTable>) = match &config.bpffs {
            Some(dir) => (Arc::new(identity::Ipcache::open(dir)?), Arc::new(flows::PolicyConntrack::open(dir)?)),
            None => {
                if config.upstream == UpstreamMode::Transparent {
                    tracing::warn!(
                        "no bpffs given: transparent upstream connections get no conntrack entry, their replies will not reach the proxy"
                    );
                }
                (Arc::new(identity::World), Arc::new(flows::NoFlowTable))
            }
        };
        let store = Arc::new(RulesStore::default());
        let watcher = rules::RulesWatcher::load(config.rules_path.clone(), store.clone());
        let ctx = Arc::new(ProxyContext::new(store, identities, flows, config.upstream));
        let mut listeners = vec![server::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, config.port)))?];
        match server::listen(SocketAddr::from((Ipv6Addr::LOCALHOST, config.port))) {
            Ok(l) => listeners.push(l),
            // A node without IPv6 has no IPv6 pods to redirect either.
            Err(e) if server::family_unavailable(&e) => tracing::warn!("{e}; serving IPv4 only"),
            Err(e) => return Err(e),
        }
        let flows_socket = match &config.flows_socket {
            Some(path) => {
                Some((flow_socket::bind(path).map_err(|source| ProxyError::FlowSocket { path: path.clone(), source })?, path.clone()))
            }
            None => None,
        };
        Ok(Proxy { listeners, ctx, watcher, flows_socket })
    }

    /// The bound listener addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The request counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.ctx.stats.clone()
    }

    /// One [`L7Flow`] per request from now on; a subscriber that lags loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<L7Flow> {
        self.ctx.events.subscribe()
    }

    /// Serves until `shutdown` completes; then closes the listeners (a new proxy listening
    /// beside this one takes the new connections), lets the open connections finish their
    /// requests for up to [`DRAIN_TIMEOUT`] (idle keep-alive connections are closed at once),
    /// and closes what is left.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let Proxy { listeners, ctx, watcher, flows_socket } = self;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(watcher.run(async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }));
        if let Some((listener, path)) = flows_socket {
            tasks.spawn(flow_socket::serve(listener, path, ctx.events.clone()));
        }
        let (accepted_tx, mut accepted) = mpsc::channel(64);
        let mut accepting = JoinSet::new();
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening");
            }
            accepting.spawn(server::accept_loop(listener, ctx.clone(), accepted_tx.clone()));
        }
        drop(accepted_tx);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some((stream, client, server)) = accepted.recv() => {
                    connections.spawn(serve_connection(ctx.clone(), stream, client, server));
                }
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        accepting.abort_all();
        while accepting.join_next().await.is_some() {}
        let open = connections.len();
        if open > 0 {
            tracing::info!(connections = open, "listeners closed; draining for up to {DRAIN_TIMEOUT:?}");
            let _ = ctx.drain.send(true);
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
            if drained.is_err() {
                tracing::info!(connections = connections.len(), "drain timed out: closing what is left");
            }
        }
        let _ = stop_tx.send(true);
        tasks.abort_all();
        connections.abort_all();
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes: [`Proxy::bind`] then [`Proxy::serve`].
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
    Proxy::bind(config)?.serve(shutdown).await
}
