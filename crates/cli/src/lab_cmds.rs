//! Lab commands: `up`, `down`, `apply`, `get`, `delete`, `exec`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use sluice_lab::{Lab, UpOptions};

use crate::args::Output;
use crate::output::{age, print_structured, Table};

fn sluice_binary() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the sluice binary")
}

fn step(line: &str) {
    eprintln!("  {line}");
}

pub async fn up(lab: &str, nodes: usize, host_routing: String, guard: String, monitor: String) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    eprintln!("Starting lab {lab:?} with {nodes} node(s)...");
    let opts = UpOptions { nodes, host_routing, guard, monitor, ..UpOptions::new(lab, sluice_binary()?) };
    Lab::up(opts, &mut |s| step(s)).await?;
    eprintln!("Lab {lab:?} is up in {:.1} s. Next: sluice apply -f <manifest>", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

pub async fn down(lab: &str) -> anyhow::Result<ExitCode> {
    eprintln!("Removing lab {lab:?}...");
    Lab::down(lab, &mut |s| step(s)).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn restart_agent(lab: &str, node: &str) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut lab = Lab::open_locked(lab, sluice_binary()?)?;
    let (status, ready) = lab.restart_agent(node, Duration::from_secs(20)).await?;
    eprintln!(
        "{node}: agent restarted in {:.2} s (ready {:.0} ms after start), {} endpoint(s) restored, host routing {}",
        started.elapsed().as_secs_f64(),
        ready.as_secs_f64() * 1000.0,
        status.endpoint_count,
        status.host_routing.mode
    );
    Ok(ExitCode::SUCCESS)
}

fn read_manifest(file: &Path) -> anyhow::Result<(String, String)> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the manifest from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok((file.display().to_string(), text))
}

pub async fn apply(lab: &str, file: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let (name, text) = read_manifest(file)?;
    let mut lab = Lab::open_locked(lab, sluice_binary()?)?;
    let applied = lab.apply(&name, &text, timeout, &mut |s| step(s)).await?;
    for a in applied {
        println!("{a}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn get(lab: &str, resource: &str, name: Option<&str>, namespace: &str, all: bool, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let lab = Lab::open(lab, sluice_binary()?)?;
    match resource {
        "pods" | "pod" | "po" => get_pods(&lab, name, if all { None } else { Some(namespace) }, output),
        "namespaces" | "namespace" | "ns" => get_namespaces(&lab, name, output),
        other => bail!("unknown resource type {other:?} (supported: pods, namespaces)"),
    }
}

fn get_pods(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut pods = lab.pods(namespace)?;
    if let Some(n) = name {
        pods.retain(|p| p.metadata.name.as_deref() == Some(n));
        if pods.is_empty() {
            bail!("pod {n:?} not found in namespace {:?}", namespace.unwrap_or("(all)"));
        }
    }
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => {
            if let (Some(_), [pod]) = (name, pods.as_slice()) {
                print_structured(pod, o)?;
            } else {
                let list = k8s_openapi::List::<Pod> { items: pods, metadata: Default::default() };
                print_structured(&list, o)?;
            }
        }
        _ => {
            let wide = output == Some(Output::Wide);
            let all = namespace.is_none();
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend(["NAME", "STATUS", "IP", "NODE", "AGE"]);
            if wide {
                header.push("IPV6");
            }
            let mut table = Table::new(&header);
            for p in &pods {
                let status = p.status.as_ref();
                let ips: Vec<String> = status.and_then(|s| s.pod_ips.as_ref()).map(|v| v.iter().map(|i| i.ip.clone()).collect()).unwrap_or_default();
                let mut row = vec![];
                if all {
                    row.push(p.metadata.namespace.clone().unwrap_or_default());
                }
                row.push(p.metadata.name.clone().unwrap_or_default());
                row.push(status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into()));
                row.push(ips.iter().find(|i| !i.contains(':')).cloned().unwrap_or_else(|| "<none>".into()));
                row.push(p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default());
                row.push(age(p.metadata.creation_timestamp.as_ref()));
                if wide {
                    row.push(ips.iter().find(|i| i.contains(':')).cloned().unwrap_or_else(|| "<none>".into()));
                }
                table.row(row);
            }
            if pods.is_empty() {
                eprintln!("No pods found in {}.", namespace.map(|n| format!("namespace {n}")).unwrap_or_else(|| "any namespace".into()));
            } else {
                table.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_namespaces(lab: &Lab, name: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut namespaces = lab.namespaces()?;
    if let Some(n) = name {
        namespaces.retain(|ns| ns.metadata.name.as_deref() == Some(n));
        if namespaces.is_empty() {
            bail!("namespace {n:?} not found");
        }
    }
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => {
            let list = k8s_openapi::List::<Namespace> { items: namespaces, metadata: Default::default() };
            print_structured(&list, o)?;
        }
        _ => {
            let mut table = Table::new(&["NAME", "STATUS", "AGE", "LABELS"]);
            for ns in &namespaces {
                let labels = ns.metadata.labels.as_ref().map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).unwrap_or_default();
                table.row(vec![ns.metadata.name.clone().unwrap_or_default(), "Active".into(), age(ns.metadata.creation_timestamp.as_ref()), labels]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(lab: &str, file: Option<&Path>, resource: &[String], namespace: &str) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::open_locked(lab, sluice_binary()?)?;
    let mut report = |s: &str| println!("{s}");
    match (file, resource) {
        (Some(f), []) => {
            let (name, text) = read_manifest(f)?;
            lab.delete_manifest(&name, &text, &mut report).await?;
        }
        (None, [kind, name]) => match kind.as_str() {
            "pod" | "pods" | "po" => lab.delete_pod(namespace, name, false, &mut report).await?,
            "namespace" | "namespaces" | "ns" => lab.delete_namespace(name, &mut report).await?,
            other => bail!("unknown resource type {other:?} (supported: pod, namespace)"),
        },
        _ => bail!("usage: sluice delete -f FILE | sluice delete pod NAME [-n NS] | sluice delete namespace NAME"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn exec(lab: &str, pod: &str, namespace: &str, argv: &[String]) -> anyhow::Result<ExitCode> {
    let lab = Lab::open(lab, sluice_binary()?)?;
    let code = lab.exec(namespace, pod, argv)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
