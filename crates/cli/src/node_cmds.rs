//! Commands that talk to one node's agent: `agent`, `status`, `endpoint list`, `preflight` (which
//! also audits without one).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::Event;
use sluice_api::firewall::RuleClass;
use sluice_api::{paths, Client, Endpoint, PreflightResponse, Status};

use crate::args::{Output, Target};
use crate::output::{print_structured, Table};

pub async fn agent(config: &Path, node_name: Option<&str>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let config = sluice_agent::AgentConfig::load_for_node(config, node_name)?;
    sluice_agent::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice proxy`: binds the listeners, says so in the log, serves until SIGTERM or SIGINT.
pub async fn proxy(config: &Path, node_name: Option<&str>) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let config = sluice_agent::AgentConfig::load_for_node(config, node_name)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // The agent creates the maps; the proxy may start first (a DaemonSet starts containers in
    // no particular order).
    let maps = [config.bpffs.join("ipcache"), config.bpffs.join("policy_ct")];
    let waiting = std::time::Instant::now();
    let mut told = std::time::Duration::ZERO;
    while !maps.iter().all(|m| m.exists()) {
        if waiting.elapsed() >= told {
            tracing::info!("waiting for the agent to create the datapath's maps in {}", config.bpffs.display());
            told += std::time::Duration::from_secs(10);
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = term.recv() => return Ok(ExitCode::SUCCESS),
            _ = int.recv() => return Ok(ExitCode::SUCCESS),
        }
    }
    let proxy = sluice_proxy::Proxy::bind(sluice_proxy::ProxyConfig {
        port: config.proxy.port,
        rules_path: config.proxy_rules_path(),
        bpffs: Some(config.bpffs.clone()),
        upstream: sluice_proxy::UpstreamMode::Transparent,
        flows_socket: Some(config.proxy_flows_path()),
    })?;
    tracing::info!(addresses = ?proxy.local_addrs(), rules = %config.proxy_rules_path().display(), "{}", sluice_lab::PROXY_READY_LINE);
    proxy
        .serve(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn socket(target: &Target, node: Option<&str>) -> anyhow::Result<PathBuf> {
    match target {
        Target::Socket(s) => Ok(s.clone()),
        Target::Lab(lab) => {
            let sluice = std::env::current_exe()?;
            Ok(sluice_lab::Lab::open(lab, sluice)?.node_socket(node)?)
        }
    }
}

pub async fn status(target: &Target, node: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let socket = socket(target, node)?;
    let status: Status =
        Client::new(&socket).get(paths::STATUS).await.with_context(|| format!("asking the agent at {}", socket.display()))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&status, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Node:          {}", status.node_name);
    println!(
        "Agent:         {} (version {}, up {} s)",
        if status.healthy { "ok" } else { "unhealthy" },
        status.version,
        status.uptime_seconds
    );
    println!("Host routing:  {} (requested {}): {}", status.host_routing.mode, status.host_routing.requested, status.host_routing.reason);
    println!("Pod CIDRs:     {}", status.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "));
    println!("Endpoints:     {}", status.endpoint_count);
    println!("Programs:");
    for p in &status.programs {
        println!("  {:<12} {:<8} on {} ({} attached)", p.program, p.attach, p.interface, p.count);
    }
    println!("Forwarded:");
    for f in &status.forwards {
        println!("  {:<24} {} packets, {} bytes", f.reason, f.packets, f.bytes);
    }
    let drops: Vec<_> = status.drops.iter().filter(|d| d.packets > 0).collect();
    if drops.is_empty() {
        println!("Drops:         none");
    } else {
        println!("Drops:");
        for d in drops {
            println!("  {:<24} {} packets, {} bytes", d.reason, d.packets, d.bytes);
        }
    }
    if status.warnings.is_empty() {
        println!("Warnings:      none");
    } else {
        println!("Warnings:");
        for w in &status.warnings {
            println!("  WARNING: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn endpoint_list(target: &Target, node: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let socket = socket(target, node)?;
    let endpoints: Vec<Endpoint> =
        Client::new(&socket).get(paths::ENDPOINTS).await.with_context(|| format!("asking the agent at {}", socket.display()))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&endpoints, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "POD", "IPV4", "IPV6", "IDENTITY", "HOST IFACE"]);
    for e in &endpoints {
        let pod = match (&e.pod_namespace, &e.pod_name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => format!("{}/{}", &e.container_id[..12.min(e.container_id.len())], e.ifname),
        };
        table.row(vec![
            e.id.to_string(),
            pod,
            e.ipv4.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            e.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            e.identity.to_string(),
            format!("{} ({})", e.host_ifname, e.host_ifindex),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

pub async fn service_list(target: &Target, node: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let socket = socket(target, node)?;
    let frontends: Vec<sluice_api::ServiceFrontend> =
        Client::new(&socket).get(paths::SERVICES).await.with_context(|| format!("asking the agent at {}", socket.display()))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&frontends, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["SERVICE", "FRONTEND", "KIND", "SCOPE", "FLAGS", "BACKENDS"]);
    for f in &frontends {
        let frontend = format!("{}/{}", std::net::SocketAddr::new(f.address, f.port), f.protocol);
        let backends = if f.backends.is_empty() {
            "(none: connections refused)".to_string()
        } else {
            f.backends
                .iter()
                .map(|b| {
                    let mut s = std::net::SocketAddr::new(b.address, b.port).to_string();
                    if b.state != "active" {
                        s.push_str(&format!(" ({})", b.state));
                    } else if b.local {
                        s.push_str(" (local)");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let service = match (&f.service, &f.port_name) {
            (Some(s), Some(p)) => format!("{s}:{p}"),
            (Some(s), None) => s.clone(),
            _ => "-".into(),
        };
        table.row(vec![
            service,
            frontend,
            f.kind.clone(),
            f.scope.clone(),
            if f.flags.is_empty() { "-".into() } else { f.flags.join(",") },
            backends,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `sluice preflight --local`: what the node is to run with, from flags or its agent
/// configuration (flags win).
pub struct LocalAudit {
    pub config: Option<PathBuf>,
    pub pod_cidrs: Vec<ipnet::IpNet>,
    pub devices: Vec<String>,
}

/// The audit without an agent, of the network namespace this process runs in.
fn audit_here(local: LocalAudit) -> anyhow::Result<PreflightResponse> {
    let config = local.config.as_deref().map(sluice_agent::AgentConfig::load).transpose()?;
    let mut pod_cidrs = local.pod_cidrs;
    let mut devices = local.devices;
    let mut node = None;
    if let Some(config) = config {
        if pod_cidrs.is_empty() {
            // A cluster node's CIDR is carved from the pools at start; the pools contain it.
            pod_cidrs = if config.pod_cidrs.is_empty() { config.state.cluster_pool_cidrs } else { config.pod_cidrs };
        }
        if devices.is_empty() {
            devices = config.devices;
        }
        node = Some(config.node_name);
    }
    if pod_cidrs.is_empty() {
        // Without them no pod traffic is host-routed and every rule would look harmless.
        anyhow::bail!("preflight --local needs the node's pod CIDRs: --pod-cidr CIDR (repeat for IPv6) or --config FILE");
    }
    let node = match node {
        Some(n) => n,
        None => nix::unistd::gethostname().context("reading the host name")?.to_string_lossy().into_owned(),
    };
    Ok(sluice_agent::firewall::api::preflight_local(node, &sluice_agent::firewall::AuditContext { pod_cidrs, devices }))
}

pub async fn preflight(
    target: &Target,
    node: Option<&str>,
    local: Option<LocalAudit>,
    all: bool,
    output: Option<Output>,
) -> anyhow::Result<ExitCode> {
    let answer: PreflightResponse = match local {
        Some(local) => audit_here(local)?,
        None => {
            const HINT: &str = "without an agent, `sluice preflight --local` audits the namespace it runs in";
            let socket = socket(target, node).with_context(|| format!("finding the agent to ask ({HINT})"))?;
            Client::new(&socket)
                .get(paths::PREFLIGHT)
                .await
                .with_context(|| format!("asking the agent at {} ({HINT})", socket.display()))?
        }
    };
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_structured(&answer, o)?,
        _ => {
            let routing = match answer.host_routing.as_str() {
                sluice_agent::firewall::api::NO_AGENT => "audited here, without an agent".to_string(),
                mode => format!("host routing {mode}"),
            };
            println!("Node {} ({routing}), rules read from: {}", answer.node, answer.sources_read.join(", "));
            if all {
                // The agent's table leaves harmless rules out; list them here.
                for v in answer.report.verdicts.iter().filter(|v| v.class == RuleClass::Harmless) {
                    println!("  harmless  {} {}  {}", v.rule.table, v.rule.chain, v.rule.text);
                }
            }
            print!("{}", answer.table);
            for p in &answer.problems {
                eprintln!("warning: {} could not be read: {}", p.source, p.problem);
            }
        }
    }
    Ok(if answer.report.clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn events(target: &Target, node: Option<&str>, follow: bool, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let socket = socket(target, node)?;
    let client = Client::new(&socket);
    let json = output == Some(Output::Json);
    let print = |e: &Event| {
        if json {
            match serde_json::to_string(e) {
                Ok(line) => println!("{line}"),
                Err(err) => eprintln!("warning: an event could not be encoded: {err}"),
            }
        } else {
            // As the API writes timestamps (RFC 3339, whole seconds, UTC).
            let seen = e.last_timestamp.as_ref().map(|t| t.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
            println!(
                "{}  {:<8} {:<22} {}",
                seen,
                e.type_.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("")
            );
        }
    };
    let history: Vec<Event> = client.get(paths::EVENTS).await.with_context(|| format!("asking the agent at {}", socket.display()))?;
    if !json && !history.is_empty() {
        println!("{:<20}  {:<8} {:<22} MESSAGE", "LAST SEEN", "TYPE", "REASON");
    }
    history.iter().for_each(print);
    if follow {
        client
            .follow_lines(paths::EVENTS_FOLLOW, |line| {
                if let Ok(e) = serde_json::from_str::<Event>(line) {
                    print(&e);
                }
                true
            })
            .await?;
    }
    Ok(ExitCode::SUCCESS)
}
