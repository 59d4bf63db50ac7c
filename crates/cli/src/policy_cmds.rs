//! `sluice policy trace` and `sluice policy get`: ask the agents of the nodes involved how
//! their compiled policy decides a connection, and what a pod's entries are.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::Value;
use sluice_api::{paths, Client};

use crate::args::Output;
use crate::output::{print_structured, Table};

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
    let ips = p.status.as_ref().and_then(|s| s.pod_ips.as_ref()).map(|v| v.iter().filter_map(|i| i.ip.parse().ok()).collect()).unwrap_or_default();
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
pub async fn trace(lab_name: &str, from: &str, to: &str, port: u16, proto: &str, v6: bool, output: Option<Output>) -> anyhow::Result<ExitCode> {
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
    let mut answers = Vec::new();
    for node in &nodes {
        let socket = lab.node_socket(Some(node))?;
        let answer: Value = Client::new(&socket).get(&query).await.with_context(|| format!("asking the agent of {node}"))?;
        answers.push(answer);
    }
    let rank = |v: &Value| match v["trace"]["verdict"].as_str() {
        Some("Deny") => 2,
        Some("Audit") => 1,
        _ => 0,
    };
    let verdict = match answers.iter().map(rank).max().unwrap_or(0) {
        2 => "DENIED",
        1 => "ALLOWED (audit: a policy in audit mode would deny it)",
        _ => "ALLOWED",
    };
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&serde_json::json!({ "verdict": verdict, "nodes": answers }), o)?;
        return Ok(ExitCode::SUCCESS);
    }
    for a in &answers {
        println!("On node {}:", a["node"].as_str().unwrap_or("?"));
        for line in a["text"].as_str().unwrap_or("").lines() {
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
    let answer: Value = Client::new(&socket)
        .get(&format!("{}?pod={}", paths::POLICY_ENDPOINT, p.key))
        .await
        .with_context(|| format!("asking the agent of {}", p.node))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_structured(&answer, o)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Pod:       {} on {} (identity {})", p.key, p.node, answer["identity"]);
    for dir in ["ingress", "egress"] {
        let d = &answer[dir];
        println!("{}:", if dir == "ingress" { "Ingress" } else { "Egress" });
        println!("  mode:     {}", d["mode"].as_str().unwrap_or("?"));
        let policies: Vec<&str> = d["policies"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        println!("  policies: {}", if policies.is_empty() { "none".to_string() } else { policies.join(", ") });
        let entries = d["entries"].as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            continue;
        }
        let mut table = Table::new(&["PEER", "TRAFFIC", "VERDICT", "RULES"]);
        for e in &entries {
            let rules: Vec<&str> = e["rules"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            table.row(vec![e["peer"].as_str().unwrap_or("?").into(), e["traffic"].as_str().unwrap_or("?").into(), e["verdict"].as_str().unwrap_or("?").into(), rules.join("; ")]);
        }
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}
