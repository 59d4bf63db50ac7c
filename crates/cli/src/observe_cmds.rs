//! `sluice observe` and `sluice metrics`: flows and metrics of one node or of every node of a
//! lab. Flows of several nodes are merged in time order (a listing) or printed as they arrive
//! (following); peers a node could not name are named from the lab's pods.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sluice_api::{paths, Client, Flow, FlowFilter, FlowMessage, FlowPeer, FlowsResponse};

use crate::args::{ObserveArgs, Output, Target};

/// The agents to ask: (node name, socket).
fn sockets(target: &Target, node: Option<&str>) -> anyhow::Result<(Vec<(String, PathBuf)>, Names)> {
    match target {
        Target::Socket(s) => Ok((vec![("node".into(), s.clone())], Names::default())),
        Target::Lab(lab) => {
            let lab = sluice_lab::Lab::open(lab, std::env::current_exe()?)?;
            let nodes = lab
                .state()
                .nodes
                .iter()
                .filter(|n| node.is_none_or(|want| want == n.name))
                .map(|n| (n.name.clone(), n.socket.clone()))
                .collect::<Vec<_>>();
            if nodes.is_empty() {
                anyhow::bail!("no node {:?} in lab {}", node.unwrap_or(""), lab.state().name);
            }
            Ok((nodes, Names::from_lab(&lab)))
        }
    }
}

/// Pod names by address, from the lab's store: names peers on other nodes.
#[derive(Default)]
struct Names(HashMap<IpAddr, (String, String)>);

impl Names {
    fn from_lab(lab: &sluice_lab::Lab) -> Self {
        let mut names = HashMap::new();
        for pod in lab.pods(None).unwrap_or_default() {
            let (ns, name) = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
            for ip in pod.status.iter().flat_map(|s| s.pod_ips.iter().flatten()) {
                if let Ok(addr) = ip.ip.parse() {
                    names.insert(addr, (ns.clone(), name.clone()));
                }
            }
        }
        Self(names)
    }

    fn fill(&self, flow: &mut Flow) {
        for peer in [&mut flow.source, &mut flow.destination] {
            if peer.pod.is_none() {
                if let Some((ns, pod)) = peer.ip.and_then(|ip| self.0.get(&ip)) {
                    peer.namespace = Some(ns.clone());
                    peer.pod = Some(pod.clone());
                }
            }
        }
    }
}

pub async fn observe(target: &Target, args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let filter = FlowFilter {
        pod: args.pod.clone(),
        from_pod: args.from_pod.clone(),
        to_pod: args.to_pod.clone(),
        namespace: args.namespace.clone(),
        ip: args.ip,
        port: args.port,
        protocol: args.protocol.clone(),
        verdict: args.verdict.clone(),
        event_type: args.event_type.clone(),
        http_method: args.http_method.clone(),
        http_path: args.http_path.clone(),
        since_unix_nanos: args.since.map(|d| unix_nanos_now().saturating_sub(d.as_nanos() as u64)),
        last: args.last,
    };
    let (nodes, names) = sockets(target, args.node.as_deref())?;
    let json = args.output == Some(Output::Json);
    if args.follow {
        return follow(nodes, names, filter, json).await;
    }
    let mut flows = Vec::new();
    for (node, socket) in &nodes {
        let answer: FlowsResponse = Client::new(socket)
            .get(&format!("{}{}", paths::FLOWS, filter.to_query()))
            .await
            .with_context(|| format!("asking {node} for flows"))?;
        for lost in answer.lost.iter().filter(|l| l.count > 0) {
            eprintln!("{node}: {} events lost ({})", lost.count, lost.reason);
        }
        flows.extend(answer.flows);
    }
    flows.sort_by_key(|f| f.time_unix_nanos);
    if let Some(n) = args.last {
        let skip = flows.len().saturating_sub(n);
        flows.drain(..skip);
    }
    for mut flow in flows {
        names.fill(&mut flow);
        print_flow(&flow, json)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn follow(nodes: Vec<(String, PathBuf)>, names: Names, filter: FlowFilter, json: bool) -> anyhow::Result<ExitCode> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, FlowMessage)>(1024);
    let query = format!("{}{}", paths::FLOWS_FOLLOW, filter.to_query());
    for (node, socket) in nodes {
        let (tx, query) = (tx.clone(), query.clone());
        tokio::spawn(async move {
            let result = Client::new(&socket)
                .follow_lines(&query, |line| match serde_json::from_str::<FlowMessage>(line) {
                    Ok(m) => tx.try_send((node.clone(), m)).is_ok() || !tx.is_closed(),
                    Err(e) => {
                        eprintln!("{node}: unreadable stream line ({e})");
                        true
                    }
                })
                .await;
            if let Err(e) = result {
                eprintln!("{node}: stream ended: {e}");
            }
        });
    }
    drop(tx);
    while let Some((node, message)) = rx.recv().await {
        match message {
            FlowMessage::Flow(mut flow) => {
                names.fill(&mut flow);
                print_flow(&flow, json)?;
            }
            FlowMessage::Lost(lost) => eprintln!("{node}: {} events lost ({})", lost.count, lost.reason),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_flow(flow: &Flow, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(flow)?)?;
    } else {
        writeln!(out, "{}", flow_line(flow))?;
    }
    out.flush()?;
    Ok(())
}

/// `Nov 21 16:30:01.123 node0 demo/client:40000 (ID:257) -> demo/web:80 (ID:256) TCP Flags: SYN FORWARDED (local endpoint)`;
/// a layer-7 flow: `... -> demo/web:80 HTTP GET /admin => 403 (0.2 ms) DROPPED (layer-7 policy denied)`.
pub fn flow_line(f: &Flow) -> String {
    let time = chrono::DateTime::from_timestamp((f.time_unix_nanos / 1_000_000_000) as i64, (f.time_unix_nanos % 1_000_000_000) as u32)
        .map(|t| t.format("%b %d %H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let mut line = format!("{time} {} {} -> {} {}", f.node, peer(&f.source), peer(&f.destination), f.protocol);
    if let Some(flags) = &f.tcp_flags {
        line.push_str(&format!(" Flags: {flags}"));
    }
    if let Some((t, c)) = f.icmp {
        line.push_str(&format!(" type {t} code {c}"));
    }
    if let Some(s) = &f.summary {
        line.push_str(&format!(" ({s})"));
    }
    if let Some(h) = &f.http {
        let host = h.host.as_deref().map(|h| format!(" {h}")).unwrap_or_default();
        line.push_str(&format!(" {}{host} {} => {} ({:.1} ms)", h.method, h.path, h.status, h.latency_micros as f64 / 1000.0));
    }
    match f.drop_reason.as_deref().or(f.forward.as_deref()) {
        Some(why) => line.push_str(&format!(" {} ({why})", f.verdict)),
        None => line.push_str(&format!(" {}", f.verdict)),
    }
    line
}

fn peer(p: &FlowPeer) -> String {
    let mut s = match (&p.namespace, &p.pod, p.ip) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
        (_, _, Some(ip)) => ip.to_string(),
        _ => "?".into(),
    };
    if let Some(port) = p.port {
        s.push_str(&format!(":{port}"));
    }
    if p.pod.is_some() {
        if let Some(ip) = p.ip {
            s.push_str(&format!(" [{ip}]"));
        }
    }
    if let Some(id) = p.identity {
        s.push_str(&format!(" (ID:{id})"));
    }
    s
}

fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub async fn metrics(target: &Target, node: Option<&str>) -> anyhow::Result<ExitCode> {
    let (nodes, _) = sockets(target, node)?;
    let Some((name, socket)) = nodes.first() else { anyhow::bail!("no node to ask") };
    if nodes.len() > 1 && node.is_none() {
        eprintln!("# metrics of {name} (pick a node with --node)");
    }
    let text = Client::new(socket).get_text(paths::METRICS).await.with_context(|| format!("asking {name} for metrics"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
