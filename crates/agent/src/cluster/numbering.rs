//! Cluster-wide identity numbers: a label set new to this node is numbered by the cluster's
//! allocator (an etcd transaction, or a create conflict at the API server, settles concurrent
//! requests), so it has the same number on every node.

use std::sync::Arc;

use sluice_kube::KubeCluster;
use sluice_state::etcd::EtcdStore;

use crate::identity::{IdentityError, Labels, Numbering};

/// The cluster's allocator.
pub enum Allocator {
    Etcd(Box<EtcdStore>),
    Kubernetes(Arc<KubeCluster>),
}

/// Numbers label sets through the cluster. Called from the agent's synchronous identity code
/// on a multi-threaded runtime: the request is run to completion in place.
pub struct ClusterNumbering {
    allocator: Allocator,
    runtime: tokio::runtime::Handle,
}

impl ClusterNumbering {
    pub fn new(allocator: Allocator, runtime: tokio::runtime::Handle) -> Self {
        Self { allocator, runtime }
    }
}

impl Numbering for ClusterNumbering {
    fn number(&self, canonical: &str, labels: &Labels) -> Result<u32, IdentityError> {
        let answer = tokio::task::block_in_place(|| {
            self.runtime.block_on(async {
                match &self.allocator {
                    Allocator::Etcd(store) => {
                        store.allocate_identity(canonical, labels).await.map_err(|e| IdentityError::Cluster(e.into()))
                    }
                    Allocator::Kubernetes(cluster) => cluster.allocate_identity(canonical, labels).await.map_err(IdentityError::Kubernetes),
                }
            })
        });
        answer
    }
}
