//! The kinds the agents write: cluster-wide identities, endpoints (one per pod, or batched in
//! slices) and nodes. Each is a Rust type the CRD's schema is generated from, with the
//! conversions to the records the rest of Sluice works with (`sluice_state::cluster`,
//! `sluice_model::SluiceEndpointSlice`). Status subresources are left out on purpose: every
//! object has one writer, the agent, so spec and status would be written together anyway.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_model::{SliceEndpoint, SluiceEndpointSlice as SliceRecord};
use sluice_state::{EndpointRecord, IdentityRecord, NodeRecord};

/// A security identity: one number for one label set, the same on every node. The object's
/// name is the number, so two agents that pick the same number for different label sets
/// collide on the name and the API server lets exactly one create win.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "sluice.dev", version = "v1", kind = "SluiceIdentity", plural = "sluiceidentities", shortname = "sid")]
#[kube(derive = "PartialEq", category = "sluice")]
#[kube(printcolumn = r#"{"name":"Labels","type":"string","jsonPath":".spec.labels","priority":1}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[kube(rule = kube::core::Rule::new("self.metadata.name.matches('^[1-9][0-9]*$') && int(self.metadata.name) >= 256 && int(self.metadata.name) <= 16777215").message("the name is the identity number: 256 to 16777215"))]
#[kube(rule = kube::core::Rule::new("self.spec == oldSelf.spec").message("an identity's labels never change"))]
#[serde(rename_all = "camelCase")]
pub struct SluiceIdentitySpec {
    /// The label set this number stands for: the pod's labels and its namespace's (as
    /// `k8s:io.kubernetes.pod.namespace.labels.*`), with the namespace's name.
    pub labels: BTreeMap<String, String>,
}

/// One pod's endpoint as the agent of its node publishes it (`state.endpoints: per-pod`).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "sluice.dev", version = "v1", kind = "SluiceEndpoint", plural = "sluiceendpoints", shortname = "sep", namespaced)]
#[kube(derive = "PartialEq", category = "sluice")]
#[kube(printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#)]
#[kube(printcolumn = r#"{"name":"Identity","type":"integer","jsonPath":".spec.identity"}"#)]
#[kube(printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#)]
#[serde(rename_all = "camelCase")]
pub struct SluiceEndpointSpec {
    /// The node whose agent publishes the endpoint.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The pod's IPv4 and IPv6 addresses.
    #[schemars(length(min = 1, max = 2))]
    pub addresses: Vec<IpAddr>,
    /// The cluster-wide security identity of the pod's labels.
    #[schemars(range(min = 256, max = 16_777_215))]
    pub identity: u32,
}

/// A node's endpoints of one namespace and one identity, batched (`state.endpoints: slices`,
/// the default): one write and one watch event per slice rather than per pod.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1",
    kind = "SluiceEndpointSlice",
    plural = "sluiceendpointslices",
    shortname = "sepslice",
    namespaced
)]
#[kube(derive = "PartialEq", category = "sluice")]
#[kube(printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#)]
#[kube(printcolumn = r#"{"name":"Identity","type":"integer","jsonPath":".spec.identity"}"#)]
#[serde(rename_all = "camelCase")]
pub struct SluiceEndpointSliceSpec {
    /// The node whose agent writes the slice; no other writer touches it.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The identity every endpoint of the slice has.
    #[schemars(range(min = 256, max = 16_777_215))]
    pub identity: u32,
    /// The pods, by name, with their addresses.
    #[schemars(length(max = 1000))]
    pub endpoints: Vec<SliceEndpointSpec>,
}

/// One pod of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpointSpec {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 2))]
    pub addresses: Vec<IpAddr>,
}

/// A node as its agent registers it: the addresses other nodes route its pod CIDRs through,
/// the pod CIDRs themselves (allocated from the cluster pools in `cluster-pool` IPAM mode, the
/// Node's `spec.podCIDRs` in `kubernetes` mode) and the agent's health.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "sluice.dev", version = "v1", kind = "SluiceNode", plural = "sluicenodes", shortname = "snode")]
#[kube(derive = "PartialEq", category = "sluice")]
#[kube(printcolumn = r#"{"name":"Pod CIDRs","type":"string","jsonPath":".spec.podCIDRs"}"#)]
#[kube(printcolumn = r#"{"name":"Health","type":"string","jsonPath":".spec.health"}"#)]
#[kube(printcolumn = r#"{"name":"Routing","type":"string","jsonPath":".spec.hostRouting"}"#)]
#[serde(rename_all = "camelCase")]
pub struct SluiceNodeSpec {
    /// Addresses on the network the nodes share.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub addresses: Vec<IpAddr>,
    /// At most one CIDR per family.
    #[serde(default, rename = "podCIDRs")]
    #[schemars(length(max = 2))]
    pub pod_cidrs: Vec<String>,
    /// `bpf` or `legacy`; empty until the agent is up.
    #[serde(default)]
    pub host_routing: String,
    /// `ready` while the agent serves; what went wrong otherwise.
    #[serde(default)]
    pub health: String,
    /// The agent's version.
    #[serde(default)]
    pub agent_version: String,
}

// === conversions ===

/// Why an object read from the API server is not what its kind promises (beyond what the
/// schema already rejected).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("{kind} {name}: {what}")]
    Invalid { kind: &'static str, name: String, what: String },
}

fn invalid(kind: &'static str, name: &str, what: impl Into<String>) -> ConvertError {
    ConvertError::Invalid { kind, name: name.into(), what: what.into() }
}

impl SluiceIdentity {
    /// The object for `record`, named by its number.
    pub fn from_record(record: &IdentityRecord) -> Self {
        Self::new(&record.id.to_string(), SluiceIdentitySpec { labels: record.labels.clone() })
    }

    pub fn to_record(&self) -> Result<IdentityRecord, ConvertError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let id = name.parse::<u32>().map_err(|_| invalid("SluiceIdentity", &name, "the name is not an identity number"))?;
        Ok(IdentityRecord { id, labels: self.spec.labels.clone() })
    }
}

impl SluiceEndpoint {
    pub fn from_record(record: &EndpointRecord) -> Self {
        let mut object = Self::new(
            &record.name,
            SluiceEndpointSpec { node: record.node.clone(), addresses: record.ips.clone(), identity: record.identity },
        );
        object.metadata.namespace = Some(record.namespace.clone());
        object
    }

    pub fn to_record(&self) -> Result<EndpointRecord, ConvertError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let namespace = self.metadata.namespace.clone().ok_or_else(|| invalid("SluiceEndpoint", &name, "no namespace"))?;
        Ok(EndpointRecord { namespace, name, node: self.spec.node.clone(), ips: self.spec.addresses.clone(), identity: self.spec.identity })
    }
}

impl SluiceEndpointSlice {
    pub fn from_record(record: &SliceRecord) -> Self {
        let endpoints =
            record.endpoints.iter().map(|e| SliceEndpointSpec { name: e.name.clone(), addresses: e.addresses.clone() }).collect();
        let mut object =
            Self::new(&record.name, SluiceEndpointSliceSpec { node: record.node.clone(), identity: record.identity, endpoints });
        object.metadata.namespace = Some(record.namespace.clone());
        object
    }

    pub fn to_record(&self) -> Result<SliceRecord, ConvertError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let namespace = self.metadata.namespace.clone().ok_or_else(|| invalid("SluiceEndpointSlice", &name, "no namespace"))?;
        let endpoints =
            self.spec.endpoints.iter().map(|e| SliceEndpoint { name: e.name.clone(), addresses: e.addresses.clone() }).collect();
        Ok(SliceRecord { name, namespace, identity: self.spec.identity, node: self.spec.node.clone(), endpoints })
    }
}

impl SluiceNode {
    pub fn from_record(record: &NodeRecord) -> Self {
        Self::new(
            &record.name,
            SluiceNodeSpec {
                addresses: record.addresses.clone(),
                pod_cidrs: record.pod_cidrs.iter().map(ToString::to_string).collect(),
                host_routing: record.host_routing.clone(),
                health: record.health.clone(),
                agent_version: record.agent_version.clone(),
            },
        )
    }

    pub fn to_record(&self) -> Result<NodeRecord, ConvertError> {
        let name = self.metadata.name.clone().unwrap_or_default();
        let pod_cidrs = self
            .spec
            .pod_cidrs
            .iter()
            .map(|c| c.parse().map_err(|_| invalid("SluiceNode", &name, format!("podCIDRs: {c:?} is not a CIDR"))))
            .collect::<Result<_, _>>()?;
        let registered = self.metadata.creation_timestamp.as_ref().map(|t| t.0.to_rfc3339()).unwrap_or_default();
        Ok(NodeRecord {
            name,
            addresses: self.spec.addresses.clone(),
            pod_cidrs,
            host_routing: self.spec.host_routing.clone(),
            health: self.spec.health.clone(),
            agent_version: self.spec.agent_version.clone(),
            registered,
        })
    }
}
