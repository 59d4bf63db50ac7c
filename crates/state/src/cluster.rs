//! Records of the cluster itself, kept beside the Kubernetes-shaped objects: nodes, published
//! endpoints and security identities. In etcd they live under their own prefixes (a node's
//! record and its endpoints are bound to the node agent's lease); the local store keeps them
//! empty unless a lab writes nodes for `sluice get nodes`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A node as its agent registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// Addresses on the network the nodes share; routes to the node's pod CIDRs go via them.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The node's pod CIDRs (at most one per family).
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    /// `bpf` or `legacy`.
    #[serde(default)]
    pub host_routing: String,
    /// `ready` while the agent serves; what went wrong otherwise.
    #[serde(default)]
    pub health: String,
    /// The agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// When the agent (re)registered, RFC 3339.
    #[serde(default)]
    pub registered: String,
}

/// A pod's endpoint as the agent of its node publishes it: what every node's IP-to-identity
/// cache is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    /// The cluster-wide security identity of the pod's label set.
    pub identity: u32,
}

/// A security identity: a number for one label set, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    pub id: u32,
    pub labels: BTreeMap<String, String>,
}
