//! Answers to the policy questions: `policy trace` (why a connection gets its verdict on a node)
//! and `policy get` (a pod's compiled entries). They mirror the policy engine's own types so the
//! CLI reads fields, not string keys, without depending on the engine. Most names are camelCase
//! on the wire; the few snake_case ones are the names these answers have always had.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The verdict of an entry or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyVerdict {
    Allow,
    /// Allowed, and reported: an audit-mode policy would have denied it.
    Audit,
    Deny,
}

/// Whether and how a direction of an endpoint is enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyMode {
    /// No policy selects the endpoint in this direction: everything is allowed.
    #[default]
    None,
    /// A lookup miss is denied.
    Enforce,
    /// Default deny by audit-mode policies only: a miss is reported and allowed.
    Audit,
    /// Selected only by policies without default deny: a miss is allowed.
    DefaultAllow,
}

/// Which policy object a rule came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// `NetworkPolicy`, `SluiceNetworkPolicy` or `SluiceClusterwideNetworkPolicy`.
    pub kind: String,
    /// `None` for cluster-wide kinds.
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
}

/// A rule of a policy: `ingress`/`egress` rule `index` of `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRuleRef {
    pub policy: PolicyRef,
    pub ingress: bool,
    pub index: usize,
}

/// Key of a policy entry: peer identity, protocol and destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntryKey {
    /// Peer identity; 0 matches any.
    pub identity: u32,
    /// IP protocol; `None` matches every protocol.
    #[serde(default)]
    pub proto: Option<u8>,
    /// Destination port (ICMP: the type), significant in its top `port_prefix` bits.
    pub port: u16,
    /// 0..=16: how many leading bits of `port` must match.
    #[serde(rename = "port_prefix")]
    pub port_prefix: u8,
}

/// `GET /v1/policy/trace`: this node's explanation of a connection's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTraceResponse {
    pub node: String,
    /// The trace as text, for people.
    pub text: String,
    pub trace: PolicyTrace,
}

/// The explanation of one connection's verdict on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dport: u16,
    /// The source's egress, when the source is a pod of this node.
    #[serde(default)]
    pub egress: Option<PolicyTraceSide>,
    /// The destination's ingress, when the destination is a pod of this node.
    #[serde(default)]
    pub ingress: Option<PolicyTraceSide>,
    pub verdict: PolicyVerdict,
}

/// One local endpoint's side of a traced connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTraceSide {
    /// `namespace/name`.
    pub endpoint: String,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    pub mode: PolicyMode,
    pub policies: Vec<PolicyRef>,
    pub peer: PolicyTracePeer,
    /// What the lookups matched: the peer identity's, the wildcard's, and by address when both
    /// missed.
    pub matched: Vec<PolicyMatchedEntry>,
    pub verdict: PolicyVerdict,
    pub reason: String,
    /// Allowed only through the node's layer-7 proxy: the HTTP rules its requests are judged
    /// by, one line each (`SluiceNetworkPolicy x/web: method GET, path /public/.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<String>>,
}

/// The other end of a traced connection as one side sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTracePeer {
    pub ip: IpAddr,
    pub identity: u32,
    /// A pod key, `host`, `remote-node`, `world` or `cidr <prefix>`.
    pub what: String,
    /// The longest prefix a Kubernetes ipBlock names that holds the address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<PolicyTraceIpBlock>,
}

/// An ipBlock prefix and its identity (what entries by address are keyed by).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTraceIpBlock {
    pub prefix: ipnet::IpNet,
    pub identity: u32,
}

/// An entry a trace's lookup matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatchedEntry {
    pub key: PolicyEntryKey,
    pub verdict: PolicyVerdict,
    pub rules: Vec<PolicyRuleRef>,
    /// An entry by address: its key's identity is the peer's ipBlock identity.
    #[serde(default)]
    pub by_address: bool,
}

/// `GET /v1/policy/endpoint`: the compiled policy of one pod on the node, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPolicyResponse {
    pub node: String,
    /// `namespace/name`.
    pub pod: String,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub ingress: PolicyDirection,
    pub egress: PolicyDirection,
}

/// One direction of a pod's compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDirection {
    /// The mode in words: `enforce (default deny)`, `audit (...)`, `default allow`, `none (...)`.
    pub mode: String,
    /// The policies selecting the pod in this direction, as `Kind namespace/name`.
    pub policies: Vec<String>,
    pub entries: Vec<PolicyEntry>,
}

/// One compiled entry, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEntry {
    /// The peer identity in words: `any`, `world`, `cidr 192.0.2.0/24`, `300 (x/a)`.
    pub peer: String,
    pub identity: u32,
    /// `tcp/80`, `udp/1024-2047`, `icmp type 8`, `any`.
    pub traffic: String,
    pub verdict: PolicyVerdict,
    /// The rules behind the entry, as `Kind namespace/name (ingress rule N)`.
    pub rules: Vec<String>,
    /// An entry by address (a Kubernetes ipBlock): `identity` is an ipBlock prefix's, matched
    /// against the peer's address when the entries by identity have no answer.
    #[serde(default)]
    pub by_address: bool,
}

// === impl PolicyVerdict ===

impl PolicyVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyVerdict::Allow => "Allow",
            PolicyVerdict::Audit => "Audit",
            PolicyVerdict::Deny => "Deny",
        }
    }
}

impl fmt::Display for PolicyVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_key_keeps_its_wire_names() {
        let key = PolicyEntryKey { identity: 0, proto: Some(6), port: 80, port_prefix: 16 };
        let json = serde_json::to_value(key).unwrap();
        assert_eq!(json, serde_json::json!({"identity": 0, "proto": 6, "port": 80, "port_prefix": 16}), "the entry key's field names");
    }

    #[test]
    fn verdicts_and_modes_are_named_as_the_engine_names_them() {
        assert_eq!(serde_json::to_value(PolicyVerdict::Deny).unwrap(), "Deny", "verdict name");
        assert_eq!(serde_json::to_value(PolicyMode::DefaultAllow).unwrap(), "DefaultAllow", "mode name");
        assert_eq!(PolicyVerdict::Audit.to_string(), "Audit", "Display matches the wire name");
    }
}
