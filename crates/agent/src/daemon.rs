//! `sluice agent`: start-up in order (database, pin directory, host routing decision, programs,
//! restore and reconcile, then the API), the periodic resync, and a clean stop that leaves the
//! datapath running. A start that fails on the database or the pin directory has made nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_datapath::{BpfDatapath, HostRouting, LoadOptions, MonitorAggregation};

use crate::agent::{Agent, AgentParts, HostRoutingDecision};
use crate::config::{AgentConfig, GuardMode, HostRoutingRequest, MonitorLevel};
use crate::db::AgentDb;
use crate::error::AgentError;
use crate::events::{Events, Reason};
use crate::firewall;
use crate::observer::Observer;
use crate::plumber::NetlinkPlumber;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(mut config: AgentConfig) -> Result<(), AgentError> {
    let started = Instant::now();
    // Cluster mode: join before anything uses the pod CIDRs, which may come from the cluster.
    let cluster = if config.state.is_cluster() {
        let addresses = node_addresses(&config.devices).await?.into_iter().filter(|a| !is_link_local(a)).collect();
        let (cluster, pod_cidrs) = crate::cluster::Cluster::join(&config, addresses).await?;
        config.pod_cidrs = pod_cidrs;
        Some(Arc::new(cluster))
    } else {
        None
    };
    let state = state_source(&config, cluster.as_deref());
    // The database first: a damaged or unwritable one stops the start before anything is made.
    let db = AgentDb::open(&config.state_dir)?;
    if let Err(source) = sluice_datapath::ensure_bpffs(&config.bpffs) {
        // Leave the state directory as it was: a database this start made holds nothing.
        if let Err(e) = db.close_undoing_creation() {
            tracing::warn!("removing the database this start made: {e}");
        }
        return Err(AgentError::PinDirectory { path: config.bpffs.clone(), source });
    }
    let db = Arc::new(db);
    let events = Arc::new(Events::new(db.clone(), &config.node_name, config.event_history)?);
    // On Kubernetes every event from now on is posted about the Node as well.
    let event_poster = match cluster.as_deref() {
        Some(crate::cluster::Cluster::Kubernetes(member)) => Some(tokio::spawn(post_events(member.cluster().clone(), events.subscribe()))),
        _ => None,
    };
    events.record(Reason::AgentStarted, format!("sluice agent {} started", env!("CARGO_PKG_VERSION")))?;
    let audit_ctx = firewall::AuditContext { pod_cidrs: config.pod_cidrs.clone(), devices: config.devices.clone() };
    let host_routing = decide_host_routing(config.host_routing, || firewall::audit(&audit_ctx, None), &events)?;
    enable_forwarding()?;
    let node_addresses = node_addresses(&config.devices).await?;
    let opts = LoadOptions {
        host_routing: host_routing.mode,
        monitor: match config.monitor_aggregation {
            MonitorLevel::Off => MonitorAggregation::Off,
            MonitorLevel::Medium => MonitorAggregation::Medium,
            MonitorLevel::All => MonitorAggregation::All,
        },
        drop_events_per_second: config.drop_events_per_second,
        events_buffer_bytes: config.events_buffer_bytes,
        maglev_table_size: config.services.maglev_table_size,
        conntrack_entries: config.services.conntrack_entries,
        policy_conntrack_entries: config.services.conntrack_entries,
        node_ipv4: node_addresses.iter().find_map(|a| match a {
            std::net::IpAddr::V4(v4) => Some(*v4),
            _ => None,
        }),
        node_ipv6: node_addresses.iter().find_map(|a| match a {
            std::net::IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(*v6),
            _ => None,
        }),
    };
    let mut datapath = BpfDatapath::load_with(&config.bpffs, &opts)?;
    for dev in &config.devices {
        datapath.attach_netdev(dev)?;
    }
    // Connections that layer-7 rules cover reach the proxy through the node's policy routing.
    sluice_datapath::netlink::Netlink::current()?.ensure_proxy_routing().await?;
    events.record(
        Reason::DatapathLoaded,
        format!("datapath loaded: host routing {}, monitor aggregation {:?}", host_routing.mode.as_str(), config.monitor_aggregation),
    )?;
    if host_routing.mode == HostRouting::Bpf && config.guard != GuardMode::Off {
        firewall::watch::spawn_guard(audit_ctx.clone(), events.clone());
    }
    // Held until the agent stops: dropping it detaches the guard program.
    let _guard = match (host_routing.mode, config.guard) {
        (HostRouting::Bpf, GuardMode::Enforce) => {
            let scope = config.guard_cgroup.clone().or_else(firewall::watch::default_guard_cgroup).ok_or_else(|| AgentError::Startup {
                action: "finding the cgroup to guard (set guardCgroup)".into(),
                source: std::io::Error::other("the agent's own cgroup has no parent on the cgroup2 mount"),
            })?;
            let guard = firewall::watch::enforce(&scope, events.clone())?;
            events.record(
                Reason::GuardEnabled,
                format!("guard enforcing in cgroup {}: iptables-legacy rule installs are refused there; nftables and iptables-nft changes are detected, not refused (no BPF LSM)", scope.display()),
            )?;
            Some(guard)
        }
        _ => None,
    };
    // Held until the agent stops: dropping it detaches the socket-LB hooks (the tc path then
    // translates the pods' service traffic per packet).
    let (_socket_lb, socket_lb_status) = if config.services.socket_lb {
        let scope =
            config.services.socket_lb_cgroup.clone().or_else(firewall::watch::default_guard_cgroup).ok_or_else(|| AgentError::Startup {
                action: "finding the cgroup for socket LB (set services.socketLBCgroup)".into(),
                source: std::io::Error::other("the agent's own cgroup has no parent on the cgroup2 mount"),
            })?;
        let lb = sluice_datapath::SocketLb::attach(&config.bpffs, &scope)?;
        (Some(lb), format!("attached to cgroup {}", scope.display()))
    } else {
        (None, "off (services.socketLB: false): pod traffic is translated per packet".to_string())
    };
    // Held until the agent stops, as the socket-LB hooks; tc carries the same flows without it.
    let xdp = match config.services.xdp {
        crate::config::XdpSetting::Off => None,
        setting => {
            let xopts = sluice_datapath::XdpOptions {
                mode: match setting {
                    crate::config::XdpSetting::Native => Some(sluice_datapath::XdpMode::Native),
                    crate::config::XdpSetting::Generic => Some(sluice_datapath::XdpMode::Generic),
                    _ => None,
                },
                drop_unmatched: config.services.xdp_drop_unmatched,
                node_ports: config.services.node_ports().unwrap_or((30000, 32767)),
                node_ipv4: opts.node_ipv4,
                node_ipv6: opts.node_ipv6,
            };
            let mut x = sluice_datapath::XdpNetdev::load(&config.bpffs, &xopts)?;
            let nl = sluice_datapath::netlink::Netlink::current()?;
            for dev in &config.devices {
                // `auto` on a veth takes generic: a native XDP_TX on a veth reaches its peer
                // only when the peer runs NAPI (XDP or GRO there), which a bridge port does not.
                let want = match (xopts.mode, nl.link(dev).await?.kind.as_deref()) {
                    (None, Some("veth")) => Some(sluice_datapath::XdpMode::Generic),
                    (m, _) => m,
                };
                let mode = x.attach(dev, want)?;
                tracing::info!(device = %dev, mode = mode.as_str(), "XDP attached");
            }
            Some(Arc::new(std::sync::Mutex::new(x)))
        }
    };
    let services = Arc::new(crate::services::sync::Services::new(
        crate::services::desired::NodeInfo {
            name: config.node_name.clone(),
            addresses: node_addresses.iter().copied().filter(|a| !is_link_local(a)).collect(),
        },
        config.services.clone(),
    ));
    let policies = Arc::new(
        crate::policy::sync::Policies::new(node_addresses.iter().copied().filter(|a| !is_link_local(a)).collect())
            .with_proxy(config.proxy.port, config.proxy_rules_path()),
    );
    let observer = Arc::new(Observer::new(&config.node_name, config.flow_buffer));
    let reader = datapath.take_events().map(|ring| tokio::spawn(crate::observer::read_events(observer.clone(), ring)));
    let proxy_flows = tokio::spawn(crate::observer::proxy_flows::follow(observer.clone(), config.proxy_flows_path()));
    if let Some(source) = &state {
        // Services and policy wait for a complete view: a partial one would withdraw what it
        // has not read yet. Without one the datapath keeps forwarding on what is pinned.
        if let Err(e) = sluice_state::wait_synced(source.as_ref(), Duration::from_secs(10)).await {
            tracing::warn!("starting without a complete cluster view: {e}");
        }
    }
    let agent = Arc::new(Agent::new(AgentParts {
        netdevs: config.devices.clone(),
        config: config.clone(),
        db,
        datapath: Box::new(datapath),
        plumber: Box::new(NetlinkPlumber::default()),
        state: state.clone(),
        host_routing: host_routing.clone(),
        started,
        observer,
        events: events.clone(),
        services: Some(services),
        policies: Some(policies),
        socket_lb: socket_lb_status,
        xdp: xdp.clone(),
        cluster: cluster.clone(),
    })?);
    let report = agent.resync(true).await?;
    if let Err(e) = agent.sync_services(true).await {
        tracing::warn!("programming services at start: {e}");
    }
    if let Err(e) = agent.sync_policies(true).await {
        tracing::warn!("programming policy at start: {e}");
    }
    let listener = crate::api::bind(&config.socket)?;
    tracing::info!(
        node = %config.node_name,
        host_routing = host_routing.mode.as_str(),
        reason = %host_routing.reason,
        restored = report.attached,
        "agent ready in {} ms",
        started.elapsed().as_millis()
    );

    let resync = tokio::spawn(resync_loop(agent.clone(), Duration::from_secs(config.resync_seconds)));
    let changes = state.as_ref().map(|s| s.subscribe());
    let service_loop = tokio::spawn(service_loop(
        agent.clone(),
        changes.clone(),
        Duration::from_secs(config.resync_seconds),
        Duration::from_secs(config.services.conntrack_gc_seconds),
    ));
    let debounce = Duration::from_millis(config.state.endpoints_debounce_millis);
    let cluster_loop = cluster.is_some().then(|| tokio::spawn(cluster_loop(agent.clone(), changes, debounce)));
    let metrics_server = match config.metrics_address {
        Some(addr) => Some(crate::api::serve_metrics(addr, agent.clone()).await?),
        None => None,
    };
    crate::serve::serve(listener, crate::api::router(agent), shutdown_signal()).await;
    resync.abort();
    service_loop.abort();
    if let Some(task) = cluster_loop {
        task.abort();
    }
    if let Some(task) = reader {
        task.abort();
    }
    proxy_flows.abort();
    if let Some(task) = event_poster {
        task.abort();
    }
    if let Some(task) = metrics_server {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("agent stopped; the datapath keeps forwarding");
    Ok(())
}

type Changes = Option<tokio::sync::watch::Receiver<sluice_state::ClusterState>>;

/// Waits for the next change of the cluster view or the next tick, whichever comes first; a
/// source that ended leaves the tick alone.
async fn wake(changes: &mut Changes, tick: &mut tokio::time::Interval) {
    match changes.as_mut() {
        Some(rx) => tokio::select! {
            changed = rx.changed() => if changed.is_err() { *changes = None },
            _ = tick.tick() => {},
        },
        None => {
            tick.tick().await;
        }
    }
}

/// Cluster mode: publishes endpoints, holds identities and routes the other nodes' pod CIDRs on
/// every change of the view and at least every second; collects what vanished nodes left.
///
/// A pod started or stopped (a CNI ADD or DEL) opens a debounce window: the node's endpoints
/// are published when it closes, with every change made meanwhile, so a burst of pod starts is
/// one write per slice touched. Rounds that run inside the window (a change of the view, the
/// tick) do everything but publish.
async fn cluster_loop(agent: Arc<Agent>, mut changes: Changes, debounce: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let endpoint_changes = agent.endpoint_changes();
    let mut publish_at: Option<tokio::time::Instant> = None;
    let mut last_collect = Instant::now();
    loop {
        tokio::select! {
            _ = wake(&mut changes, &mut tick) => {}
            _ = endpoint_changes.notified() => {
                publish_at.get_or_insert_with(|| tokio::time::Instant::now() + debounce);
                continue;
            }
            _ = tokio::time::sleep_until(publish_at.unwrap_or_else(tokio::time::Instant::now)), if publish_at.is_some() => {}
        }
        let publish = publish_at.is_none_or(|at| tokio::time::Instant::now() >= at);
        if publish {
            publish_at = None;
        }
        if let Err(e) = agent.sync_cluster(publish).await {
            tracing::warn!("cluster round: {e}");
        }
        if last_collect.elapsed() >= Duration::from_secs(30) {
            last_collect = Instant::now();
            if let Some(cluster) = agent.cluster() {
                match cluster.collect(&agent.cluster_snapshot()).await {
                    Ok((cidrs, ids)) if !cidrs.is_empty() || !ids.is_empty() => {
                        tracing::info!(?cidrs, ?ids, "released what vanished nodes left")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("collecting released CIDRs and identities: {e}"),
                }
            }
        }
    }
}

/// Posts the node's events to the Kubernetes API as they are recorded; one that cannot be
/// posted is logged and left (the agent's own log keeps it).
async fn post_events(cluster: Arc<sluice_kube::KubeCluster>, mut rx: tokio::sync::broadcast::Receiver<k8s_openapi::api::core::v1::Event>) {
    loop {
        match rx.recv().await {
            Ok(event) => {
                if let Err(e) = cluster.post_event(&event).await {
                    tracing::warn!("posting an event to the Kubernetes API: {e}");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "events recorded faster than posted"),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn resync_loop(agent: Arc<Agent>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = agent.resync(false).await {
            tracing::warn!("periodic resync failed: {e}");
        }
    }
}

/// The state source the configuration names: the cluster's (etcd, the Kubernetes API), or the
/// local store file.
fn state_source(config: &AgentConfig, cluster: Option<&crate::cluster::Cluster>) -> Option<Arc<dyn sluice_state::StateSource>> {
    if let Some(cluster) = cluster {
        return cluster.state_source(config);
    }
    match &config.state.path {
        Some(path) => Some(Arc::new(sluice_state::LocalSource::spawn(sluice_state::LocalStore::new(path), sluice_state::DEFAULT_POLL))),
        _ => None,
    }
}

/// Programs services and policy as soon as the cluster view changes; a full round every
/// `resync` heals what a missed change left; conntrack is collected every `gc`.
async fn service_loop(agent: Arc<Agent>, mut changes: Changes, resync: Duration, gc: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_full, mut last_gc) = (Instant::now(), Instant::now());
    loop {
        wake(&mut changes, &mut tick).await;
        let force = last_full.elapsed() >= resync;
        if force {
            last_full = Instant::now();
        }
        if let Err(e) = agent.sync_services(force).await {
            tracing::warn!("programming services: {e}");
        }
        if let Err(e) = agent.sync_policies(force).await {
            tracing::warn!("programming policy: {e}");
        }
        if last_gc.elapsed() >= gc {
            last_gc = Instant::now();
            match agent.collect_conntrack() {
                Ok(0) => {}
                Ok(n) => tracing::debug!("conntrack: {n} expired entries collected"),
                Err(e) => tracing::warn!("conntrack garbage collection: {e}"),
            }
        }
    }
}

/// The addresses of the node's devices: NodePort frontends and the SNAT source.
async fn node_addresses(devices: &[String]) -> Result<Vec<std::net::IpAddr>, AgentError> {
    let nl = sluice_datapath::netlink::Netlink::current()?;
    let mut out = Vec::new();
    for dev in devices {
        let link = nl.link(dev).await?;
        out.extend(nl.addresses(link.index).await?);
    }
    Ok(out)
}

fn is_link_local(a: &std::net::IpAddr) -> bool {
    match a {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the agent can still be killed; run until then.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// `legacy` is taken as asked. Otherwise `bpf` needs the kernel's helpers (probed) and, unless
/// `bpf-force`, a clean host firewall audit: a rule pod traffic would silently skip keeps the
/// node in `legacy`, and the decision is recorded as an event naming the rules.
pub fn decide_host_routing(
    requested: HostRoutingRequest,
    audit: impl FnOnce() -> firewall::Audit,
    events: &Events,
) -> Result<HostRoutingDecision, AgentError> {
    let decision = |mode, reason: String| HostRoutingDecision { mode, reason };
    if requested == HostRoutingRequest::Legacy {
        return Ok(decision(HostRouting::Legacy, "legacy requested by configuration".into()));
    }
    let probe = sluice_datapath::probe_host_routing();
    if !probe.supported {
        let reason = format!("bpf unavailable, fell back to legacy: {}", probe.reason);
        events.record(Reason::HostRoutingFallback, reason.clone())?;
        return Ok(decision(HostRouting::Legacy, reason));
    }
    let audit = audit();
    for p in &audit.problems {
        tracing::warn!(source = %p.source, "host firewall audit could not read a source: {}", p.problem);
    }
    let bypassed: Vec<String> = audit.report.bypassed().map(firewall::describe).collect();
    if bypassed.is_empty() {
        let reason = format!(
            "{}; host firewall audit clean ({} rules read from {})",
            probe.reason,
            audit.report.verdicts.len(),
            audit.sources_read.join(", ")
        );
        events.record(Reason::HostRoutingEnabled, reason.clone())?;
        return Ok(decision(HostRouting::Bpf, reason));
    }
    let list = bypassed.join("; ");
    if requested == HostRoutingRequest::BpfForce {
        let reason = format!("bpf forced although {} rule(s) would be bypassed for pod traffic: {list}", bypassed.len());
        events.record(Reason::HostRoutingForced, reason.clone())?;
        return Ok(decision(HostRouting::Bpf, reason));
    }
    let reason = format!("bpf refused, staying legacy: {} rule(s) would be bypassed for pod traffic: {list}", bypassed.len());
    events.record(Reason::HostRoutingRefused, reason.clone())?;
    Ok(decision(HostRouting::Legacy, reason))
}

/// bpf_fib_lookup only forwards when the ingress device forwards, and legacy routing needs it
/// anyway.
fn enable_forwarding() -> Result<(), AgentError> {
    sluice_datapath::netns::write_sysctl("net/ipv4/ip_forward", "1")?;
    sluice_datapath::netns::write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    Ok(())
}
