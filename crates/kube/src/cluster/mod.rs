//! [`KubeCluster`]: what one node's agent writes to the Kubernetes API — its `SluiceNode`, its
//! endpoints (slices or one object per pod), and cluster-wide identity numbers — and the
//! collection of identities no endpoint uses any more. Every object a node writes is owned by
//! its SluiceNode, and the SluiceNode by the Node (its events are posted about the Node too): deleting the Node lets the API server's
//! garbage collector take all of them, which withdraws the node's routes and endpoints on
//! every other node.
//!
//! The API server has no multi-object transactions: races are settled by what it does have,
//! create conflicts (`409 AlreadyExists`) and resourceVersion preconditions.

mod endpoints;
mod events;
mod identity;
mod node;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod tests;

use std::time::Duration;

use kube::Client;
use sluice_model::Batcher;

pub use identity::identity_candidate;
pub use node::Ipam;

/// The label on every object a node writes, with the node's name.
pub const NODE_LABEL: &str = "sluice.dev/node";
/// The annotation the collector puts on an identity no endpoint uses, with the time (RFC 3339).
pub const UNUSED_SINCE: &str = "sluice.dev/unused-since";
/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "sluice-agent";

/// Why a write to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{action}: {what}")]
    Invalid { action: String, what: String },
    #[error("{action}: still conflicting with other writers after {attempts} attempts")]
    Contention { action: String, attempts: u32 },
    #[error("{action}: no answer within {waited:?}: {last}")]
    Timeout { action: String, waited: Duration, last: String },
    #[error(transparent)]
    Batch(#[from] sluice_model::endpoint_slices::BatchError),
}

fn failed(action: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let action = action.into();
    move |source| KubeError::Api { action, source: Box::new(source) }
}

/// The HTTP status of an API error, if it is one.
fn status(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    }
}

/// A node's membership of a cluster run by Kubernetes.
pub struct KubeCluster {
    client: Client,
    node: String,
    /// The SluiceNode's uid, which the node's endpoints name as their owner.
    owner_uid: tokio::sync::Mutex<Option<String>>,
    /// `Some` when endpoints are published in slices.
    batcher: Option<Batcher>,
    /// Per-pod endpoints published, by `namespace/name`.
    published: tokio::sync::Mutex<std::collections::BTreeMap<String, sluice_state::EndpointRecord>>,
    /// The Node, owner of the SluiceNode.
    node_owner: tokio::sync::Mutex<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    /// The SluiceNode as last written.
    record: tokio::sync::Mutex<Option<sluice_state::NodeRecord>>,
}

impl KubeCluster {
    /// A node's writer; nothing is written until [`KubeCluster::join`].
    pub fn new(client: Client, node: &str, batcher: Option<Batcher>) -> Self {
        Self {
            client,
            node: node.into(),
            owner_uid: tokio::sync::Mutex::new(None),
            batcher,
            published: tokio::sync::Mutex::new(Default::default()),
            node_owner: tokio::sync::Mutex::new(None),
            record: tokio::sync::Mutex::new(None),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}
