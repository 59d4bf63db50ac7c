//! Commands that talk to one node's agent: `agent`, `status`, `endpoint list`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sluice_api::{paths, Client, Endpoint, Status};

use crate::args::{Output, Target};
use crate::output::{print_structured, Table};

pub async fn agent(config: &Path) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let config = sluice_agent::AgentConfig::load(config)?;
    sluice_agent::run(config).await?;
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
    let status: Status = Client::new(&socket).get(paths::STATUS).await.with_context(|| format!("asking the agent at {}", socket.display()))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&status, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Node:          {}", status.node_name);
    println!("Agent:         {} (version {}, up {} s)", if status.healthy { "ok" } else { "unhealthy" }, status.version, status.uptime_seconds);
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
