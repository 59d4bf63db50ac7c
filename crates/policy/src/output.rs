//! What the engine produces and what it is given about the cluster.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ir::PolicyRef;

/// Identity that matches any peer in a policy entry (`identity` wildcard).
pub const IDENTITY_ANY: u32 = 0;
/// Reserved identities, as the agent numbers them.
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_REMOTE_NODE: u32 = 6;

/// IP protocol numbers used in entries.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// A pod as the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    /// Identity labels (`sluice_model::LabelSet::for_pod`).
    pub labels: sluice_model::LabelSet,
    pub identity: u32,
    pub ips: Vec<IpAddr>,
    /// On the node the tables are compiled for.
    pub local: bool,
    /// Named container ports: name -> (protocol number, port).
    pub named_ports: BTreeMap<String, (u8, u16)>,
}

/// Everything the engine needs to know of the cluster besides the policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub endpoints: Vec<EndpointView>,
    /// This node's addresses (identity host).
    pub local_node_ips: Vec<IpAddr>,
    /// The other nodes' addresses (identity remote-node).
    pub remote_node_ips: Vec<IpAddr>,
    /// Identity of each CIDR named by a policy (see [`crate::required_cidrs`]), allocated by
    /// the caller so numbers stay stable across compilations.
    pub cidr_identities: BTreeMap<IpNet, u32>,
}

/// The verdict of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    Allow,
    /// Allowed, and reported: an audit-mode policy would have denied it.
    Audit,
    Deny,
}

/// Whether and how a direction of an endpoint is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// No policy selects the endpoint in this direction: everything is allowed, no lookup.
    #[default]
    None,
    /// A lookup miss is denied.
    Enforce,
    /// Selected with default deny by audit-mode policies only: a miss is reported and allowed.
    Audit,
    /// Selected only by policies without default deny (SluiceNetworkPolicy
    /// `enableDefaultDeny: false`): entries are looked up, a miss is allowed.
    DefaultAllow,
}

/// Key of a policy entry. The datapath looks up (peer identity, proto, port) and
/// (IDENTITY_ANY, proto, port), longest prefix first, and takes the stronger verdict
/// (deny > audit > allow) of the two matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryKey {
    /// Peer identity, or [`IDENTITY_ANY`].
    pub identity: u32,
    /// IP protocol; `None` matches every protocol (then `port_prefix` is 0).
    pub proto: Option<u8>,
    /// Destination port (ICMP: the type), significant in its top `port_prefix` bits.
    pub port: u16,
    /// 0..=16: how many leading bits of `port` must match.
    pub port_prefix: u8,
}

/// An entry's verdict and the rules that produced it (for `policy trace`/`policy get`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub verdict: Verdict,
    pub rules: Vec<RuleRef>,
    /// Allowed only through the node's layer-7 proxy: every allowing rule has layer-7 rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy: bool,
}

/// A rule of a policy: `ingress`/`egress` rule `index` of policy `policy`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub ingress: bool,
    pub index: usize,
}

/// One direction of an endpoint's compiled policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionTable {
    pub mode: Mode,
    pub entries: BTreeMap<EntryKey, Entry>,
    /// Entries keyed by the peer's ipBlock identity (the identity of the longest prefix of
    /// [`Compiled::ipblocks`] holding its address) instead of its identity: the Kubernetes
    /// ipBlock rules. Allows only; looked up when both lookups of `entries` miss. Empty when no
    /// selecting policy has an ipBlock in this direction.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_address: BTreeMap<EntryKey, Entry>,
    /// The policies selecting the endpoint in this direction.
    pub policies: Vec<PolicyRef>,
    /// The HTTP requests allowed on the entries with `proxy`, for the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer7: Vec<crate::l7::L7Grant>,
    /// For each port of `layer7`, which peers these entries send through the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxied: Vec<crate::l7::ProxiedPort>,
}

/// The compiled policy of one local endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicy {
    pub ingress: DirectionTable,
    pub egress: DirectionTable,
}

/// Everything the datapath of one node needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compiled {
    /// Local endpoints by key (`namespace/name`); every local endpoint has one.
    pub endpoints: BTreeMap<String, EndpointPolicy>,
    /// Address prefix -> identity: every pod address (/32, /128), this node's addresses
    /// (host), other nodes' (remote-node), and each policy CIDR. Addresses under no
    /// prefix are world.
    pub ipcache: BTreeMap<IpNet, u32>,
    /// Every prefix a Kubernetes ipBlock names (cidr and except) -> its CIDR identity: what
    /// [`DirectionTable::by_address`] entries are keyed by. An address under none has none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ipblocks: BTreeMap<IpNet, u32>,
}
