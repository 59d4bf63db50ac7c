//! `sluice policy trace` and `sluice policy get`: ask the agents of the nodes involved how
//! their compiled policy decides a connection, and what a pod's entries are.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::Serialize;
use sluice_api::{paths, Client, EndpointPolicyResponse, PolicyTraceResponse, PolicyVerdict};

use crate::args::Output;
use crate::output::{print_structured, Table};

/// `policy trace -o json|yaml`: the verdict over every node involved, and each node's answer.
#[derive(Serialize)]
struct TraceOutput<'a> {
    verdict: &'a str,
    nodes: &'a [PolicyTraceResponse],
}

/// A pod of the lab: its key, node and addresses.
struct PodRef {
    key: String,
    node: String,
    ips: Vec<IpAddr>,
}

fn find_pod(lab: &sluice_lab::Lab, name: &str) -> anyhow::Result<PodRef> {
    let (namespace, pod) = name.split_once('/').unwrap_or(("default", name));
    let pods = lab.pods(Some(namespace))?;
    let Some(p) = pods.iter().find(|p| p.metadata.name.as_deref() == Some(pod)) else {
        bail!("pod {namespace}/{pod} not found in lab {}", lab.names().lab);
    };
    let ips = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).with_context(|| format!("pod {namespace}/{pod} is not on a node"))?;
    Ok(PodRef { key: format!("{namespace}/{pod}"), node, ips })
}

fn pick(ips: &[IpAddr], v6: bool, what: &str) -> anyhow::Result<IpAddr> {
    ips.iter().copied().find(|a| a.is_ipv6() == v6).with_context(|| format!("{what} has no IPv{} address", if v6 { 6 } else { 4 }))
}

fn proto_number(proto: &str, v6: bool) -> anyhow::Result<u8> {
    Ok(match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" if v6 => 58,
        "icmp" => 1,
        "icmpv6" => 58,
        other => bail!("--proto {other:?}: expected tcp, udp, sctp or icmp"),
    })
}

fn open(lab: &str) -> anyhow::Result<sluice_lab::Lab> {
    Ok(sluice_lab::Lab::open(lab, std::env::current_exe()?)?)
}

#[allow(clippy::too_many_arguments)]
pub async fn trace(
    lab_name: &str,
    from: &str,
    to: &str,
    port: u16,
    proto: &str,
    v6: bool,
    output: Option<Output>,
) -> anyhow::Result<ExitCode> {
    let lab = open(lab_name)?;
    let src_pod = find_pod(&lab, from)?;
    let (dst, dst_node) = match to.parse::<IpAddr>() {
        Ok(ip) => (ip, None),
        Err(_) => {
            let p = find_pod(&lab, to)?;
            (pick(&p.ips, v6, &p.key)?, Some(p.node))
        }
    };
    let src = pick(&src_pod.ips, dst.is_ipv6(), &src_pod.key)?;
    let proto = proto_number(proto, dst.is_ipv6())?;
    let mut nodes = vec![src_pod.node.clone()];
    if let Some(n) = dst_node {
        if n != src_pod.node {
            nodes.push(n);
        }
    }
    let query = format!("{}?src={src}&dst={dst}&proto={proto}&port={port}", paths::POLICY_TRACE);
    let mut answers: Vec<PolicyTraceResponse> = Vec::new();
    for node in &nodes {
        let socket = lab.node_socket(Some(node))?;
        let answer = Client::new(&socket).get(&query).await.with_context(|| format!("asking the agent of {node}"))?;
        answers.push(answer);
    }
    // The strongest verdict of the nodes involved (deny > audit > allow) is the connection's.
    let verdict = match answers.iter().map(|a| a.trace.verdict).max() {
        Some(PolicyVerdict::Deny) => "DENIED",
        Some(PolicyVerdict::Audit) => "ALLOWED (audit: a policy in audit mode would deny it)",
        Some(PolicyVerdict::Allow) | None => "ALLOWED",
    };
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&TraceOutput { verdict, nodes: &answers }, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    for a in &answers {
        println!("On node {}:", a.node);
        for line in a.text.lines() {
            println!("  {line}");
        }
    }
    println!("Verdict: {verdict}");
    Ok(ExitCode::SUCCESS)
}

pub async fn get(lab_name: &str, pod: &str, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let lab = open(lab_name)?;
    let p = find_pod(&lab, pod)?;
    let socket = lab.node_socket(Some(&p.node))?;
    let answer: EndpointPolicyResponse = Client::new(&socket)
        .get(&format!("{}?pod={}", paths::POLICY_ENDPOINT, p.key))
        .await
        .with_context(|| format!("asking the agent of {}", p.node))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&answer, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Pod:       {} on {} (identity {})", p.key, p.node, answer.identity);
    for (name, d) in [("Ingress", &answer.ingress), ("Egress", &answer.egress)] {
        println!("{name}:");
        println!("  mode:     {}", d.mode);
        println!("  policies: {}", if d.policies.is_empty() { "none".to_string() } else { d.policies.join(", ") });
        if d.entries.is_empty() {
            continue;
        }
        let mut table = Table::new(&["PEER", "TRAFFIC", "VERDICT", "RULES"]);
        for e in &d.entries {
            table.row(vec![e.peer.clone(), e.traffic.clone(), e.verdict.to_string(), e.rules.join("; ")]);
        }
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}
