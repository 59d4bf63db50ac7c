//! Lab commands: `up`, `down`, `apply`, `get`, `delete`, `exec`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_lab::{Lab, UpOptions};
use sluice_model::policy::{EnforcementMode, PolicySpec};
use sluice_model::service::{MANAGED_BY_LABEL, SLUICE_CONTROLLER};
use sluice_model::ServiceRanges;

use crate::args::Output;
use crate::output::{age, print_structured, Table};

fn sluice_binary() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("finding the sluice binary")
}

fn step(line: &str) {
    eprintln!("  {line}");
}

#[allow(clippy::too_many_arguments)] // one per `sluice up` flag
pub async fn up(
    lab: &str,
    nodes: usize,
    host_routing: String,
    guard: String,
    monitor: String,
    service_cidrs: &[String],
    node_port_range: &str,
    xdp: String,
    datastore: String,
    endpoints: String,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let service_ranges = service_ranges(service_cidrs, node_port_range)?;
    eprintln!("Starting lab {lab:?} with {nodes} node(s)...");
    let opts = UpOptions {
        nodes,
        host_routing,
        guard,
        monitor,
        service_ranges,
        xdp,
        datastore,
        endpoints,
        ..UpOptions::new(lab, sluice_binary()?)
    };
    Lab::up(opts, &mut |s| step(s)).await?;
    eprintln!("Lab {lab:?} is up in {:.1} s. Next: sluice apply -f <manifest>", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `--service-cidr` (default: both default ranges) and `--node-port-range`, checked.
fn service_ranges(cidrs: &[String], node_ports: &str) -> anyhow::Result<ServiceRanges> {
    let defaults = ServiceRanges::default();
    let cidrs = if cidrs.is_empty() {
        defaults.cidrs
    } else {
        cidrs.iter().map(|c| ServiceRanges::parse_cidr(c)).collect::<Result<_, _>>().context("--service-cidr")?
    };
    let node_ports = ServiceRanges::parse_node_ports(node_ports).context("--node-port-range")?;
    ServiceRanges::new(cidrs, node_ports).context("--service-cidr")
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

pub async fn restart_proxy(lab: &str, node: &str) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::open_locked(lab, sluice_binary()?)?;
    let took = lab.restart_proxy(node, Duration::from_secs(20)).await?;
    eprintln!("{node}: proxy restarted and listening in {:.0} ms", took.as_secs_f64() * 1000.0);
    Ok(ExitCode::SUCCESS)
}

pub async fn restart_etcd(lab: &str) -> anyhow::Result<ExitCode> {
    let mut lab = Lab::open_locked(lab, sluice_binary()?)?;
    let took = lab.restart_etcd(Duration::from_secs(20)).await?;
    eprintln!("etcd restarted in {:.2} s; the agents resynchronise on their own", took.as_secs_f64());
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
        "nodes" | "node" | "no" => get_nodes(&lab, name, output),
        "pods" | "pod" | "po" => get_pods(&lab, name, if all { None } else { Some(namespace) }, output),
        "namespaces" | "namespace" | "ns" => get_namespaces(&lab, name, output),
        "services" | "service" | "svc" => get_services(&lab, name, if all { None } else { Some(namespace) }, output),
        "endpointslices" | "endpointslice" => get_endpoint_slices(&lab, name, if all { None } else { Some(namespace) }, output),
        "networkpolicies" | "networkpolicy" | "netpol" => {
            get_network_policies(&lab, name, if all { None } else { Some(namespace) }, output)
        }
        "sluicenetworkpolicies" | "sluicenetworkpolicy" | "snp" => {
            get_sluice_policies(&lab, name, if all { None } else { Some(namespace) }, output)
        }
        "sluiceclusterwidenetworkpolicies" | "sluiceclusterwidenetworkpolicy" | "scnp" => get_clusterwide_policies(&lab, name, output),
        other => bail!("unknown resource type {other:?} (supported: {GET_RESOURCES})"),
    }
}

/// What `get` lists, for its error message.
const GET_RESOURCES: &str = "nodes, pods, namespaces, services, endpointslices, networkpolicies (netpol), sluicenetworkpolicies (snp), sluiceclusterwidenetworkpolicies (scnp)";

/// Keeps only the object named `name`, when one is asked for; none is an error naming the kind
/// and where it was looked for (`where_`: " in namespace ..." or empty).
fn select_named<T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>>(
    items: &mut Vec<T>,
    name: Option<&str>,
    kind: &str,
    where_: &str,
) -> anyhow::Result<()> {
    if let Some(n) = name {
        items.retain(|o| o.metadata().name.as_deref() == Some(n));
        if items.is_empty() {
            bail!("{kind} {n:?} not found{where_}");
        }
    }
    Ok(())
}

fn in_namespace(namespace: Option<&str>) -> String {
    format!(" in namespace {:?}", namespace.unwrap_or("(all)"))
}

/// `-o json|yaml`: one object as itself when `single` and exactly one is left, else a List.
fn print_objects<T: k8s_openapi::ListableResource + serde::Serialize + Clone>(
    items: Vec<T>,
    single: bool,
    output: Output,
) -> anyhow::Result<()> {
    match items.as_slice() {
        [one] if single => print_structured(one, output),
        _ => print_structured(&k8s_openapi::List::<T> { items, metadata: Default::default() }, output),
    }
}

fn get_pods(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut pods = lab.pods(namespace)?;
    select_named(&mut pods, name, "pod", &in_namespace(namespace))?;
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_objects(pods, name.is_some(), o)?,
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
                let ips: Vec<String> =
                    status.and_then(|s| s.pod_ips.as_ref()).map(|v| v.iter().map(|i| i.ip.clone()).collect()).unwrap_or_default();
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

fn get_nodes(lab: &Lab, name: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut nodes = lab.nodes()?;
    if let Some(n) = name {
        nodes.retain(|node| node.name == n);
        if nodes.is_empty() {
            bail!("node {n:?} not found");
        }
    }
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_structured(&nodes, o)?,
        _ => {
            let mut table = Table::new(&["NAME", "STATUS", "ADDRESSES", "POD CIDRS", "HOST ROUTING", "AGENT"]);
            let join = |v: Vec<String>| if v.is_empty() { "<none>".to_string() } else { v.join(",") };
            for n in &nodes {
                table.row(vec![
                    n.name.clone(),
                    n.health.clone(),
                    join(n.addresses.iter().map(|a| a.to_string()).collect()),
                    join(n.pod_cidrs.iter().map(|c| c.to_string()).collect()),
                    n.host_routing.clone(),
                    n.agent_version.clone(),
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_namespaces(lab: &Lab, name: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut namespaces = lab.namespaces()?;
    select_named(&mut namespaces, name, "namespace", "")?;
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_objects(namespaces, false, o)?,
        _ => {
            let mut table = Table::new(&["NAME", "STATUS", "AGE", "LABELS"]);
            for ns in &namespaces {
                let labels = ns
                    .metadata
                    .labels
                    .as_ref()
                    .map(|l| l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                table.row(vec![
                    ns.metadata.name.clone().unwrap_or_default(),
                    "Active".into(),
                    age(ns.metadata.creation_timestamp.as_ref()),
                    labels,
                ]);
            }
            table.print();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_services(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut services = lab.services(namespace)?;
    select_named(&mut services, name, "service", &in_namespace(namespace))?;
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_objects(services, name.is_some(), o)?,
        _ => {
            let all = namespace.is_none();
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend(["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
            let mut table = Table::new(&header);
            for service in &services {
                let mut row = vec![];
                if all {
                    row.push(service.metadata.namespace.clone().unwrap_or_default());
                }
                row.push(service.metadata.name.clone().unwrap_or_default());
                row.extend(service_columns(service));
                row.push(age(service.metadata.creation_timestamp.as_ref()));
                table.row(row);
            }
            if services.is_empty() {
                eprintln!(
                    "No services found in {}.",
                    namespace.map(|n| format!("namespace {n}")).unwrap_or_else(|| "any namespace".into())
                );
            } else {
                table.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// TYPE, CLUSTER-IP, EXTERNAL-IP and PORT(S) as kubectl shows them: `80:30080/TCP` for a
/// port with a node port, `<pending>` for a load balancer without an ingress address yet.
fn service_columns(service: &Service) -> [String; 4] {
    let spec = service.spec.clone().unwrap_or_default();
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let cluster_ips = spec.cluster_ips.clone().filter(|ips| !ips.is_empty()).map(|ips| ips.join(","));
    let cluster_ip = cluster_ips.or(spec.cluster_ip.clone()).unwrap_or_else(|| "<none>".into());
    let ingress: Vec<String> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
        .collect();
    let mut external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
    external.extend(ingress);
    let external = match (external.is_empty(), type_.as_str()) {
        (false, _) => external.join(","),
        (true, "LoadBalancer") => "<pending>".into(),
        (true, _) => "<none>".into(),
    };
    let ports: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect();
    let ports = if ports.is_empty() { "<none>".into() } else { ports.join(",") };
    [type_, cluster_ip, external, ports]
}

fn get_endpoint_slices(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut slices = lab.endpoint_slices(namespace)?;
    select_named(&mut slices, name, "endpointslice", &in_namespace(namespace))?;
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_objects(slices, false, o)?,
        _ => {
            let all = namespace.is_none();
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend(["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "SOURCE"]);
            let mut table = Table::new(&header);
            for slice in &slices {
                let mut row = vec![];
                if all {
                    row.push(slice.metadata.namespace.clone().unwrap_or_default());
                }
                row.push(slice.metadata.name.clone().unwrap_or_default());
                row.extend(slice_columns(slice));
                table.row(row);
            }
            if slices.is_empty() {
                eprintln!(
                    "No endpoint slices found in {}.",
                    namespace.map(|n| format!("namespace {n}")).unwrap_or_else(|| "any namespace".into())
                );
            } else {
                table.print();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// ADDRESSTYPE, PORTS, ENDPOINTS (the first three addresses and a count of the rest, as
/// kubectl) and SOURCE: `derived` for slices Sluice computes from pods, `applied` otherwise.
fn slice_columns(slice: &EndpointSlice) -> [String; 4] {
    let ports: Vec<String> = slice.ports.iter().flatten().filter_map(|p| p.port).map(|p| p.to_string()).collect();
    let ports = if ports.is_empty() { "<unset>".into() } else { ports.join(",") };
    let addresses: Vec<&str> = slice.endpoints.iter().flat_map(|e| e.addresses.iter().map(String::as_str)).collect();
    let endpoints = match addresses.len() {
        0 => "<none>".into(),
        n if n <= 3 => addresses.join(","),
        n => format!("{} + {} more...", addresses[..3].join(","), n - 3),
    };
    let derived = slice.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).is_some_and(|v| v == SLUICE_CONTROLLER);
    [slice.address_type.clone(), ports, endpoints, if derived { "derived" } else { "applied" }.into()]
}

fn get_network_policies(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut policies = lab.network_policies(namespace)?;
    select_named(&mut policies, name, "networkpolicy", &in_namespace(namespace))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_objects(policies, name.is_some(), o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = policies.iter().map(|p| {
        let selector = p.spec.as_ref().map(|s| selector_text(&s.pod_selector)).unwrap_or_else(|| "<none>".into());
        (
            p.metadata.namespace.clone(),
            vec![p.metadata.name.clone().unwrap_or_default(), selector, age(p.metadata.creation_timestamp.as_ref())],
        )
    });
    print_policy_table(&["NAME", "POD-SELECTOR", "AGE"], rows, namespace, "network policies");
    Ok(ExitCode::SUCCESS)
}

fn get_sluice_policies(lab: &Lab, name: Option<&str>, namespace: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut policies = lab.sluice_policies(namespace)?;
    select_named(&mut policies, name, "sluicenetworkpolicy", &in_namespace(namespace))?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_objects(policies, name.is_some(), o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows = policies.iter().map(|p| {
        let mut row = vec![p.metadata.name.clone().unwrap_or_default()];
        row.extend(sluice_policy_columns(p.spec.as_ref()));
        row.push(age(p.metadata.creation_timestamp.as_ref()));
        (p.metadata.namespace.clone(), row)
    });
    print_policy_table(&["NAME", "ENDPOINT-SELECTOR", "MODE", "RULES", "AGE"], rows, namespace, "Sluice network policies");
    Ok(ExitCode::SUCCESS)
}

fn get_clusterwide_policies(lab: &Lab, name: Option<&str>, output: Option<Output>) -> anyhow::Result<ExitCode> {
    let mut policies = lab.clusterwide_policies()?;
    select_named(&mut policies, name, "sluiceclusterwidenetworkpolicy", "")?;
    if let Some(o @ (Output::Json | Output::Yaml)) = output {
        print_objects(policies, name.is_some(), o)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "ENDPOINT-SELECTOR", "MODE", "RULES", "AGE"]);
    for p in &policies {
        let mut row = vec![p.metadata.name.clone().unwrap_or_default()];
        row.extend(sluice_policy_columns(p.spec.as_ref()));
        row.push(age(p.metadata.creation_timestamp.as_ref()));
        table.row(row);
    }
    if policies.is_empty() {
        eprintln!("No Sluice cluster-wide network policies found.");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// A table of namespaced policies: a NAMESPACE column first when listing every namespace.
fn print_policy_table(header: &[&str], rows: impl Iterator<Item = (Option<String>, Vec<String>)>, namespace: Option<&str>, what: &str) {
    let all = namespace.is_none();
    let mut full_header = vec![];
    if all {
        full_header.push("NAMESPACE");
    }
    full_header.extend(header);
    let mut table = Table::new(&full_header);
    let mut empty = true;
    for (ns, row) in rows {
        empty = false;
        let mut full_row = vec![];
        if all {
            full_row.push(ns.unwrap_or_default());
        }
        full_row.extend(row);
        table.row(full_row);
    }
    if empty {
        eprintln!("No {what} found in {}.", namespace.map(|n| format!("namespace {n}")).unwrap_or_else(|| "any namespace".into()));
    } else {
        table.print();
    }
}

/// A selector as kubectl shows one: `app=web,tier in (a,b)`, `<none>` when it selects all.
fn selector_text(selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let mut parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.clone().unwrap_or_default().join(",");
        parts.push(match requirement.operator.as_str() {
            "In" => format!("{} in ({values})", requirement.key),
            "NotIn" => format!("{} notin ({values})", requirement.key),
            "Exists" => requirement.key.clone(),
            _ => format!("!{}", requirement.key),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// ENDPOINT-SELECTOR, MODE and RULES (how many of each direction: `ingress=1,egressDeny=2`).
fn sluice_policy_columns(spec: Option<&PolicySpec>) -> [String; 3] {
    let Some(spec) = spec else { return ["<none>".into(), "enforce".into(), "<none>".into()] };
    let selector = spec.endpoint_selector.as_ref().map(selector_text).unwrap_or_else(|| "<none>".into());
    let mode = match spec.enforcement_mode.unwrap_or_default() {
        EnforcementMode::Enforce => "enforce",
        EnforcementMode::Audit => "audit",
    };
    let ingress = spec.ingress_lists().map(|(field, rules, _)| (field, rules.len()));
    let egress = spec.egress_lists().map(|(field, rules, _)| (field, rules.len()));
    let counts: Vec<String> = ingress.into_iter().chain(egress).filter(|(_, n)| *n > 0).map(|(field, n)| format!("{field}={n}")).collect();
    let rules = if counts.is_empty() { "<none>".into() } else { counts.join(",") };
    [selector, mode.into(), rules]
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
            "service" | "services" | "svc" => lab.delete_service(namespace, name, false, &mut report)?,
            "endpointslice" | "endpointslices" => lab.delete_endpoint_slice(namespace, name, false, &mut report)?,
            "networkpolicy" | "networkpolicies" | "netpol" => lab.delete_network_policy(namespace, name, false, &mut report)?,
            "sluicenetworkpolicy" | "sluicenetworkpolicies" | "snp" => lab.delete_sluice_policy(namespace, name, false, &mut report)?,
            "sluiceclusterwidenetworkpolicy" | "sluiceclusterwidenetworkpolicies" | "scnp" => lab.delete_clusterwide_policy(name, false, &mut report)?,
            other => bail!("unknown resource type {other:?} (supported: pod, namespace, service, endpointslice, networkpolicy, sluicenetworkpolicy, sluiceclusterwidenetworkpolicy)"),
        },
        _ => bail!("usage: sluice delete -f FILE | sluice delete pod|service|endpointslice|networkpolicy|sluicenetworkpolicy NAME [-n NS] | sluice delete namespace|sluiceclusterwidenetworkpolicy NAME"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `argv` in a pod, or in the lab's external client when `pod` is `None`.
pub fn exec(lab: &str, pod: Option<&str>, namespace: &str, argv: &[String]) -> anyhow::Result<ExitCode> {
    let lab = Lab::open(lab, sluice_binary()?)?;
    let code = match pod {
        Some(pod) => lab.exec(namespace, pod, argv)?,
        None => lab.exec_external(argv)?,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_columns_read_like_kubectl() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: LoadBalancer, clusterIP: 198.18.128.5, ports: [{port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]}\n";
        let text = text.replace("[{port: 80,", "[{name: http, port: 80,");
        let objects = sluice_model::parse_manifests("svc.yaml", &text).unwrap();
        let sluice_model::Object::Service(service) = &objects[0] else { panic!("expected a service") };
        assert_eq!(
            service_columns(service),
            ["LoadBalancer".to_owned(), "198.18.128.5".into(), "<pending>".into(), "80:30080/TCP,53/UDP".into()],
            "type, cluster IP, pending external IP, ports"
        );
    }

    #[test]
    fn policy_columns_read_like_kubectl() {
        let text = "apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: canary, operator: DoesNotExist}]}, enforcementMode: audit, ingress: [{}], egressDeny: [{toEntities: [world]}, {toCIDR: [192.0.2.0/24]}]}\n";
        let objects = sluice_model::parse_manifests("p.yaml", text).unwrap();
        let sluice_model::Object::SluiceNetworkPolicy(policy) = &objects[0] else { panic!("expected a SluiceNetworkPolicy") };
        assert_eq!(
            sluice_policy_columns(policy.spec.as_ref()),
            ["app=web,tier in (a,b),!canary".to_owned(), "audit".into(), "ingress=1,egressDeny=2".into()],
            "selector, mode, rule counts"
        );
        assert_eq!(selector_text(&Default::default()), "<none>", "an empty selector");
    }

    #[test]
    fn service_ranges_are_checked() {
        assert!(service_ranges(&[], "30000-32767").is_ok(), "defaults");
        assert!(service_ranges(&["10.96.0.0/16".into(), "fd00:96::/112".into()], "30000-30100").is_ok(), "dual stack");
        let error = service_ranges(&["10.96.0.1/16".into()], "30000-32767").unwrap_err();
        assert!(format!("{error:#}").contains("host bits are set"), "host bits: {error:#}");
        let error = service_ranges(&[], "32767-30000").unwrap_err();
        assert!(format!("{error:#}").contains("--node-port-range"), "bad range names the flag: {error:#}");
    }
}
