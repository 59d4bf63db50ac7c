//! A synthetic cluster for benchmarks: `namespaces` namespaces of `pods_per_namespace` pods,
//! `replicas` pods per label set, and `policies_per_namespace` NetworkPolicies each selecting
//! one app, allowing ingress from the next app (port 80 and the named port `http`) and from the
//! namespaces of one team (443), egress to a third app (5432) and to a /24 outside the cluster
//! with an except (UDP 53). Every tenth pod is on the local node.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use sluice_model::LabelSet;

use crate::{required_cidrs, ClusterView, EndpointView, Policy};

/// The shape of the synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub policies_per_namespace: usize,
    /// Pods sharing one label set (one identity).
    pub replicas: usize,
    /// Every `local_every`-th pod is local (1: all of them).
    pub local_every: usize,
}

impl Shape {
    /// 1,000 policies over 1,000 pods in 10 namespaces, 4 replicas per app, 100 local pods.
    pub const THOUSAND: Shape =
        Shape { namespaces: 10, pods_per_namespace: 100, policies_per_namespace: 100, replicas: 4, local_every: 10 };

    fn apps(&self) -> usize {
        (self.pods_per_namespace / self.replicas.max(1)).max(1)
    }
}

/// The policies, as NetworkPolicy objects; `port_bump` changes policy 0's first port (a
/// one-policy change).
pub fn network_policies(shape: &Shape, port_bump: u16) -> Vec<NetworkPolicy> {
    let apps = shape.apps();
    (0..shape.namespaces)
        .flat_map(|n| (0..shape.policies_per_namespace).map(move |k| (n, k)))
        .filter_map(|(n, k)| serde_json::from_value(policy(n, k, apps, if n == 0 && k == 0 { port_bump } else { 0 })).ok())
        .collect()
}

fn policy(n: usize, k: usize, apps: usize, bump: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": format!("p-{k}"), "namespace": format!("ns-{n}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", k % apps)}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % apps)}}}],
                 "ports": [{"port": 80 + bump}, {"port": "http"}]},
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

/// The cluster view: pods with identities numbered from 256 by label set, CIDR identities from
/// 2^24, this node 198.18.0.1 and one other 198.18.0.2.
pub fn view(shape: &Shape, policies: &[Policy]) -> ClusterView {
    let apps = shape.apps();
    let mut identities: BTreeMap<LabelSet, u32> = BTreeMap::new();
    let mut endpoints = Vec::new();
    let mut index = 0usize;
    for n in 0..shape.namespaces {
        let ns = format!("ns-{n}");
        let ns_labels: BTreeMap<String, String> =
            [("kubernetes.io/metadata.name".to_owned(), ns.clone()), ("team".to_owned(), format!("team-{}", n % 3))].into();
        for p in 0..shape.pods_per_namespace {
            let pod_labels: BTreeMap<String, String> = [("app".to_owned(), format!("app-{}", p % apps))].into();
            let labels = LabelSet::for_pod(&pod_labels, &ns, &ns_labels);
            let next = 256 + identities.len() as u32;
            let identity = *identities.entry(labels.clone()).or_insert(next);
            let (hi, lo) = ((n / 256) as u16 * 256 + (n % 256) as u16, p as u16);
            endpoints.push(EndpointView {
                key: format!("{ns}/pod-{p}"),
                namespace: ns.clone(),
                labels,
                identity,
                ips: vec![
                    IpAddr::V4(Ipv4Addr::new(10, (hi % 256) as u8, (lo / 256) as u8, (lo % 256) as u8)),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x244, 0, hi, 0, 0, 0, lo)),
                ],
                local: index.is_multiple_of(shape.local_every.max(1)),
                named_ports: [("http".to_owned(), (6, 8080 + (p % 2) as u16))].into(),
            });
            index += 1;
        }
    }
    ClusterView {
        endpoints,
        local_node_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))],
        remote_node_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))],
        cidr_identities: required_cidrs(policies).into_iter().enumerate().map(|(i, cidr)| (cidr, (1 << 24) + i as u32)).collect(),
    }
}
