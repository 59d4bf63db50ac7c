//! The scenario cluster of the upstream NetworkPolicy tests: namespaces x, y, z, each with
//! pods a, b, c serving TCP, UDP and SCTP on ports 80 and 81, dual stack; and 9x9
//! reachability grids (rows: from x/a..z/c; columns: to; '.' allowed, 'X' denied, 'A'
//! audited). The diagonal is evaluated like any other cell: what the tables say.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use sluice_model::LabelSet;
use sluice_policy::{
    compile, connection, lower_network_policy, required_cidrs, ClusterView, Compiled, EndpointView, Policy, Verdict, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP,
};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const LOCAL_NODE_V4: &str = "198.18.0.1";
pub const LOCAL_NODE_V6: &str = "fd00:18::1";
pub const REMOTE_NODE_V4: &str = "198.18.0.2";
pub const REMOTE_NODE_V6: &str = "fd00:18::2";
/// First identity of CIDRs, as the agent allocates them.
pub const CIDR_IDENTITY_BASE: u32 = 1 << 24;

pub type Labels = BTreeMap<String, String>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub local: bool,
}

pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    /// x/a, x/b, ..., z/c.
    pub pods: Vec<Pod>,
}

impl Cluster {
    /// Namespaces carry `kubernetes.io/metadata.name` and `ns`; pods carry `pod`.
    pub fn new() -> Self {
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| {
                let l = labels(&[("kubernetes.io/metadata.name", ns), ("ns", ns)]);
                (ns.to_string(), l)
            })
            .collect();
        let pods = NAMESPACES
            .iter()
            .flat_map(|ns| {
                PODS.iter().map(move |pod| Pod {
                    namespace: ns.to_string(),
                    name: pod.to_string(),
                    labels: labels(&[("pod", pod)]),
                    local: true,
                })
            })
            .collect();
        Cluster { namespaces, pods }
    }

    pub fn pod_mut(&mut self, key: &str) -> &mut Pod {
        let index = pod_index(key);
        &mut self.pods[index]
    }

    /// The view for `policies`: identities numbered per distinct label set from 256, each
    /// required CIDR numbered from [`CIDR_IDENTITY_BASE`].
    pub fn view(&self, policies: &[Policy]) -> ClusterView {
        let mut identities: BTreeMap<LabelSet, u32> = BTreeMap::new();
        let mut endpoints = Vec::new();
        for (i, pod) in self.pods.iter().enumerate() {
            let set = LabelSet::for_pod(&pod.labels, &pod.namespace, &self.namespaces[&pod.namespace]);
            let next = 256 + identities.len() as u32;
            let identity = *identities.entry(set.clone()).or_insert(next);
            endpoints.push(EndpointView {
                key: format!("{}/{}", pod.namespace, pod.name),
                namespace: pod.namespace.clone(),
                labels: set,
                identity,
                ips: vec![pod_ip(i, false), pod_ip(i, true)],
                local: pod.local,
                named_ports: named_ports(&pod.name),
            });
        }
        ClusterView {
            endpoints,
            local_node_ips: vec![ip(LOCAL_NODE_V4), ip(LOCAL_NODE_V6)],
            remote_node_ips: vec![ip(REMOTE_NODE_V4), ip(REMOTE_NODE_V6)],
            cidr_identities: required_cidrs(policies)
                .into_iter()
                .enumerate()
                .map(|(i, cidr)| (cidr, CIDR_IDENTITY_BASE + i as u32))
                .collect(),
        }
    }
}

/// `serve-<port>-<proto>` for 80 and 81 on every protocol, and `web`, which is 80 on pods
/// a, 81 on pods b and missing on pods c (to check per-pod resolution).
pub fn named_ports(pod: &str) -> BTreeMap<String, (u8, u16)> {
    let mut out = BTreeMap::new();
    for (name, proto) in [("tcp", PROTO_TCP), ("udp", PROTO_UDP), ("sctp", PROTO_SCTP)] {
        for port in [80, 81] {
            out.insert(format!("serve-{port}-{name}"), (proto, port));
        }
    }
    match pod {
        "a" => out.insert("web".to_owned(), (PROTO_TCP, 80)),
        "b" => out.insert("web".to_owned(), (PROTO_TCP, 81)),
        _ => None,
    };
    out
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn pod_index(key: &str) -> usize {
    let (ns, pod) = key.split_once('/').expect("namespace/pod");
    let n = NAMESPACES.iter().position(|x| *x == ns).expect("namespace x, y or z");
    let p = PODS.iter().position(|x| *x == pod).expect("pod a, b or c");
    n * 3 + p
}

/// x/a is 10.244.1.11 and fd00:244:0:1::11, z/c is 10.244.3.13 and fd00:244:0:3::13.
pub fn pod_ip(index: usize, v6: bool) -> IpAddr {
    let (n, p) = (index / 3 + 1, index % 3 + 11);
    if v6 {
        ip(&format!("fd00:244:0:{n}::{p}"))
    } else {
        ip(&format!("10.244.{n}.{p}"))
    }
}

pub fn pod_addr(key: &str, v6: bool) -> IpAddr {
    pod_ip(pod_index(key), v6)
}

/// Every NetworkPolicy in a multi-document YAML string, lowered.
pub fn policies(yaml: &str) -> Vec<Policy> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| {
            let np = NetworkPolicy::deserialize(doc).expect("valid NetworkPolicy YAML");
            lower_network_policy(&np)
        })
        .collect()
}

fn cell(v: Verdict) -> char {
    match v {
        Verdict::Allow => '.',
        Verdict::Audit => 'A',
        Verdict::Deny => 'X',
    }
}

/// The grid of `proto`/`port` for one address family.
pub fn grid(compiled: &Compiled, view: &ClusterView, proto: u8, port: u16, v6: bool) -> String {
    let mut out = String::from("     xa xb xc ya yb yc za zb zc\n");
    for from in 0..9 {
        out.push_str(&format!("{}/{} ", NAMESPACES[from / 3], PODS[from % 3]));
        for to in 0..9 {
            let v = connection(compiled, view, pod_ip(from, v6), pod_ip(to, v6), proto, port);
            out.push_str(&format!(" {} ", cell(v)));
        }
        out.push('\n');
    }
    out
}

/// The cells of an expected grid: each line starting with a pod key contributes the
/// '.', 'X' and 'A' after it.
fn parse(expected: &str) -> Vec<char> {
    expected
        .lines()
        .filter_map(|l| l.trim().split_once(' ').filter(|(k, _)| k.contains('/')))
        .flat_map(|(_, cells)| cells.chars().filter(|c| matches!(c, '.' | 'X' | 'A')).collect::<Vec<_>>())
        .collect()
}

/// Compares the engine's grid with `expected`, for IPv4 and IPv6; prints both on mismatch.
pub fn assert_grid(scenario: &str, compiled: &Compiled, view: &ClusterView, proto: u8, port: u16, expected: &str) {
    let want = parse(expected);
    assert_eq!(want.len(), 81, "{scenario}: the expected grid has 81 cells");
    for v6 in [false, true] {
        let got = grid(compiled, view, proto, port, v6);
        let mut expected_grid = String::from("     xa xb xc ya yb yc za zb zc\n");
        for (row, cells) in want.chunks(9).enumerate() {
            expected_grid.push_str(&format!("{}/{} ", NAMESPACES[row / 3], PODS[row % 3]));
            for c in cells {
                expected_grid.push_str(&format!(" {c} "));
            }
            expected_grid.push('\n');
        }
        assert!(
            got == expected_grid,
            "{scenario}: proto {proto} port {port} {}\nexpected:\n{expected_grid}got:\n{got}",
            if v6 { "IPv6" } else { "IPv4" }
        );
    }
}

/// A scenario: policies compiled over the standard cluster, then one grid per service.
pub fn scenario(name: &str, policies: &[Policy], grids: &[(u8, u16, &str)]) {
    let view = Cluster::new().view(policies);
    let compiled = compile(policies, &view);
    for (proto, port, expected) in grids {
        assert_grid(name, &compiled, &view, *proto, *port, expected);
    }
}

/// Every connection allowed.
pub const ALL: &str = "
x/a ... ... ...
x/b ... ... ...
x/c ... ... ...
y/a ... ... ...
y/b ... ... ...
y/c ... ... ...
z/a ... ... ...
z/b ... ... ...
z/c ... ... ...
";
