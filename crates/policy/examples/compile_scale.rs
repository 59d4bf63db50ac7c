//! Compiles 1,000 NetworkPolicies over 1,000 pods and prints how long it took and how many
//! entries each endpoint got. Run with `cargo run --release -p sluice-policy --example
//! compile_scale`; an optional argument sets how many replicas share one identity (default 4).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_model::LabelSet;
use sluice_policy::{compile, lower_network_policy, required_cidrs, ClusterView, EndpointView};

const NAMESPACES: usize = 10;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replicas: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(4);
    let apps = PODS_PER_NAMESPACE / replicas.max(1);
    let policies: Vec<NetworkPolicy> = (0..NAMESPACES)
        .flat_map(|n| (0..POLICIES_PER_NAMESPACE).map(move |k| (n, k)))
        .map(|(n, k)| serde_json::from_value(policy(n, k, apps)))
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let lowered: Vec<_> = policies.iter().map(lower_network_policy).collect();
    let lowering = started.elapsed();
    let view = view(&lowered, apps);

    let started = Instant::now();
    let compiled = compile(&lowered, &view);
    let compiling = started.elapsed();

    let entries: Vec<usize> = compiled
        .endpoints
        .values()
        .map(|e| e.ingress.entries.len() + e.egress.entries.len())
        .collect();
    let total: usize = entries.iter().sum();
    let identities: std::collections::BTreeSet<u32> =
        view.endpoints.iter().map(|e| e.identity).collect();
    println!(
        "{} policies, {} pods ({} identities), {} CIDR identities",
        lowered.len(),
        view.endpoints.len(),
        identities.len(),
        view.cidr_identities.len()
    );
    println!("lowering: {:.1} ms", lowering.as_secs_f64() * 1e3);
    println!("compile:  {:.1} ms", compiling.as_secs_f64() * 1e3);
    println!(
        "entries per endpoint: mean {:.1}, max {}, total {total}; ipcache {} prefixes",
        total as f64 / entries.len().max(1) as f64,
        entries.iter().max().unwrap_or(&0),
        compiled.ipcache.len()
    );
    Ok(())
}

/// Policy `k` of namespace `n`: selects one app; ingress from the next app on 80 and the
/// named port `http`, from the pods of namespaces of one team on 443; egress to a third app
/// on 5432 and to a /24 outside the cluster with an except.
fn policy(n: usize, k: usize, apps: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("p-{k}"), "namespace": format!("ns-{n}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", k % apps)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % apps)}}}],
                 "ports": [{"port": 80}, {"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchExpressions": [
                    {"key": "team", "operator": "In", "values": [format!("team-{}", k % 3)]}]}}],
                 "ports": [{"port": 443}]}
            ],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 2) % apps)}}}],
                 "ports": [{"port": 5432}]},
                {"to": [{"ipBlock": {"cidr": format!("192.0.{}.0/24", k % 200),
                                      "except": [format!("192.0.{}.128/25", k % 200)]}}],
                 "ports": [{"protocol": "UDP", "port": 53}]}
            ]
        }
    })
}

fn view(policies: &[sluice_policy::Policy], apps: usize) -> ClusterView {
    let mut identities: BTreeMap<LabelSet, u32> = BTreeMap::new();
    let mut endpoints = Vec::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns-{n}");
        let ns_labels: BTreeMap<String, String> = [
            ("kubernetes.io/metadata.name".to_owned(), ns.clone()),
            ("team".to_owned(), format!("team-{}", n % 3)),
        ]
        .into();
        for p in 0..PODS_PER_NAMESPACE {
            let pod_labels: BTreeMap<String, String> =
                [("app".to_owned(), format!("app-{}", p % apps))].into();
            let labels = LabelSet::for_pod(&pod_labels, &ns, &ns_labels);
            let next = 256 + identities.len() as u32;
            let identity = *identities.entry(labels.clone()).or_insert(next);
            let (hi, lo) = (n as u8, p as u8);
            endpoints.push(EndpointView {
                key: format!("{ns}/pod-{p}"),
                namespace: ns.clone(),
                labels,
                identity,
                ips: vec![
                    IpAddr::V4(Ipv4Addr::new(10, 244, hi, lo)),
                    IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        0x244,
                        0,
                        u16::from(hi),
                        0,
                        0,
                        0,
                        u16::from(lo),
                    )),
                ],
                local: true,
                named_ports: [("http".to_owned(), (6, 8080 + (p % 2) as u16))].into(),
            });
        }
    }
    ClusterView {
        endpoints,
        local_node_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))],
        remote_node_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))],
        cidr_identities: required_cidrs(policies)
            .into_iter()
            .enumerate()
            .map(|(i, cidr)| (cidr, (1 << 24) + i as u32))
            .collect(),
    }
}
