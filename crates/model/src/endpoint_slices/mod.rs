//! Endpoint slices: a node's endpoints batched into [`SluiceEndpointSlice`]s of up to
//! [`DEFAULT_MAX_ENDPOINTS_PER_SLICE`] endpoints, grouped by namespace and identity, so that
//! a pod start is one write and one watch event per slice rather than one object per pod.
//! [`Batcher::plan`] is the pure core: from the slices a writer holds and the endpoints it
//! wants published it computes the fewest writes. Wiring it into the agents (debouncing a
//! burst of pod starts into one plan) and the datastores (one transaction per plan) is the
//! next step; nothing here does I/O.

mod plan;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use plan::{BatchError, Batcher, Plan, SliceWrite};

/// How many endpoints a slice holds at most unless configured otherwise (as Cilium's
/// CiliumEndpointSlice and Kubernetes' EndpointSlice do).
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// A batch of endpoints of one namespace and one security identity, written by one node's
/// agent. Every endpoint of the slice is a pod of `namespace` whose labels map to `identity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SluiceEndpointSlice {
    /// DNS-1123 subdomain, unique in the namespace; new slices are `<node>-<identity>-<n>`.
    pub name: String,
    pub namespace: String,
    /// The cluster-wide security identity shared by every endpoint of the slice.
    pub identity: u32,
    /// The node whose agent writes the slice; no other writer touches it.
    pub node: String,
    pub endpoints: Vec<SliceEndpoint>,
}

/// One pod in a slice; its namespace and identity are the slice's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// The pod's name.
    pub name: String,
    /// The pod's IPv4 and IPv6 addresses, in the order the pod has them.
    pub addresses: Vec<IpAddr>,
}

/// An endpoint the writer wants published: one pod of its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    pub identity: u32,
    pub addresses: Vec<IpAddr>,
}
