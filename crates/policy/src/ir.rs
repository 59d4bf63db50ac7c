//! The intermediate form every policy kind is lowered to: who a policy selects and, per
//! direction, its rules. Selectors match *identity labels* (see `sluice_model::LabelSet`):
//! a pod's own labels, its namespace under `k8s:io.kubernetes.pod.namespace` and each
//! namespace label under `k8s:io.kubernetes.pod.namespace.labels.<key>`.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::l7::{HeaderMatch, HttpRule};

/// Which policy object a rule came from, for `policy trace` and flows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `NetworkPolicy`, `SluiceNetworkPolicy` or `SluiceClusterwideNetworkPolicy`.
    pub kind: String,
    /// `None` for cluster-wide kinds.
    pub namespace: Option<String>,
    pub name: String,
}

/// `NetworkPolicy x/web`, `SluiceClusterwideNetworkPolicy lockdown`.
impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A label selector over identity labels, with Kubernetes' semantics: every `match_labels`
/// pair and every requirement must hold; an empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Non-empty for `In`/`NotIn`, empty for `Exists`/`DoesNotExist`.
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Reserved groups of peers (SluiceNetworkPolicy `toEntities`/`fromEntities`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    /// The local node (its host network namespace).
    Host,
    /// Every other node of the cluster.
    RemoteNode,
    /// Everything outside the cluster: addresses that are neither pods nor nodes, CIDR
    /// identities included.
    World,
    /// Every pod, the host and the remote nodes.
    Cluster,
    /// Anything at all.
    All,
}

/// Who a rule speaks of (the source of ingress traffic, the destination of egress traffic).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Peer {
    /// Endpoints whose identity labels match.
    Endpoints(Selector),
    /// Addresses in `cidr` but not in any of `except`, outside the cluster's pods and nodes
    /// (Sluice's `toCIDR`, `toCIDRSet` and their ingress forms, with Cilium's semantics): a pod's
    /// or a node's address resolves to that pod's or node's identity first.
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// Every address in `cidr` but not in any of `except`, pods' and nodes' included (a
    /// Kubernetes NetworkPolicy `ipBlock`, with upstream semantics). Matched by the peer's
    /// address, not its identity: an identity is shared by pods that may lie on both sides of
    /// the block.
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    Entity(Entity),
}

/// Layer 4 protocol of a port match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// TCP, UDP and SCTP alike (a port with protocol `ANY`).
    Any,
}

/// Which traffic of the peers a rule speaks of.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortMatch {
    /// Every port of the protocol (a NetworkPolicy port without `port`).
    AllPorts(Protocol),
    /// Ports `first..=last` (a single port has `first == last`).
    Range { protocol: Protocol, first: u16, last: u16 },
    /// A named container port, resolved per destination pod (`endPort` is not allowed with it).
    Named { protocol: Protocol, name: String },
    /// ICMP (`ipv6: false`) or ICMPv6 (`ipv6: true`) of one type, or of every type.
    Icmp { ipv6: bool, icmp_type: Option<u8> },
}

/// Allow, or deny (deny takes precedence over every allow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// One rule: `action` for traffic with any of `peers` on any of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub action: Action,
    /// `None`: every peer (NetworkPolicy `from`/`to` absent or empty).
    pub peers: Option<Vec<Peer>>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortMatch>,
    /// Layer-7 rules (allow rules only): of the traffic on `ports`, only the HTTP requests
    /// these describe are allowed, by the node's proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRule>>,
}

/// The rules of one direction of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DirectionRules {
    pub rules: Vec<Rule>,
    /// Whether selecting a pod in this direction denies what no rule allows. Always true
    /// for NetworkPolicy; SluiceNetworkPolicy's `enableDefaultDeny` can turn it off.
    pub default_deny: bool,
}

/// A policy in the engine's terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub id: PolicyRef,
    /// The endpoints it applies to (for namespaced kinds the selector includes the namespace).
    pub subject: Selector,
    /// `Some` when the policy has the Ingress type, even with no rules (deny all).
    pub ingress: Option<DirectionRules>,
    /// `Some` when the policy has the Egress type.
    pub egress: Option<DirectionRules>,
    /// Audit mode: what this policy would drop is reported, not dropped.
    pub audit: bool,
}
