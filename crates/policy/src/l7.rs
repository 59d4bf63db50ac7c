//! Layer-7 rules: the HTTP requests a policy rule allows on a port, and what the node's proxy
//! is told to enforce. The datapath decides layer 3/4 as always; a connection whose only
//! allowing rules carry HTTP rules is redirected to the proxy, which checks each request
//! against the grants below and answers `403 Forbidden` to any that none allows.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One allowed request shape (`toPorts[].rules.http[]`). Every field present must match; an
/// empty rule allows every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    /// Regular expression over the method, matched whole (`GET|HEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Regular expression over the request path without its query, matched whole (`/api/.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Regular expression over the host the request names (Host header or authority), port
    /// removed, matched whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Headers the request must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A header that must be present (`value: None`) or have a value equal to `value`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Compared case-insensitively.
    pub name: String,
    /// Compared exactly with each value the header has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The file in which the proxy acknowledges a version of the rules: the generation it loaded
/// last (decimal), written atomically beside the rules file (`rules.json` -> `rules.loaded`).
pub fn loaded_path(rules: &std::path::Path) -> std::path::PathBuf {
    rules.with_extension("loaded")
}

/// What one node's proxy enforces: written by the agent (atomically, as JSON), read by the
/// proxy, which keeps the last good version when a new one cannot be read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRules {
    /// Grows with every version the agent writes.
    pub generation: u64,
    /// The local endpoints with layer-7 grants in at least one direction.
    pub endpoints: Vec<ProxyEndpoint>,
}

/// A local endpoint's layer-7 grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyEndpoint {
    /// `namespace/name`.
    pub key: String,
    pub ips: Vec<IpAddr>,
    /// Requests the endpoint may receive: grants over the client's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<L7Grant>,
    /// Requests the endpoint may send: grants over the server's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<L7Grant>,
    /// For each port of `ingress`, which clients the ingress rules send through the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_proxied: Vec<ProxiedPort>,
    /// For each port of `egress`, which servers the egress rules send through the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_proxied: Vec<ProxiedPort>,
}

/// Which peers a direction of an endpoint sends through the proxy on one TCP port, as the
/// datapath's lookups decide: a listed identity as listed, every other one as `others`. A
/// direction whose rules let a peer through whole does not judge that peer's requests, even
/// when the other direction sent the connection to the proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxiedPort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxied: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plain: Vec<u32>,
    pub others: bool,
}

impl ProxiedPort {
    /// Whether the direction sends `identity` (unknown: `None`) through the proxy on this port.
    pub fn proxies(&self, identity: Option<u32>) -> bool {
        match identity {
            Some(id) if self.proxied.contains(&id) => true,
            Some(id) if self.plain.contains(&id) => false,
            _ => self.others,
        }
    }
}

/// The HTTP requests allowed to or from peers of `identity` (0: any peer) on TCP `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Grant {
    pub identity: u32,
    pub port: u16,
    pub http: Vec<HttpRule>,
    /// The policy the grant comes from (`SluiceNetworkPolicy shop/web`), for flows.
    pub policy: String,
}
