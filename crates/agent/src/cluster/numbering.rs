//! Cluster-wide identity numbers: a label set new to this node is numbered by the cluster's
//! allocator (an etcd transaction settles concurrent requests), so it has the same number on
//! every node.

use sluice_state::etcd::EtcdStore;

use crate::identity::{IdentityError, Labels, Numbering};

/// Numbers label sets through etcd. Called from the agent's synchronous identity code on a
/// multi-threaded runtime: the request is run to completion in place.
pub struct ClusterNumbering {
    store: EtcdStore,
    runtime: tokio::runtime::Handle,
}

impl ClusterNumbering {
    pub fn new(store: EtcdStore, runtime: tokio::runtime::Handle) -> Self {
        Self { store, runtime }
    }
}

impl Numbering for ClusterNumbering {
    fn number(&self, canonical: &str, labels: &Labels) -> Result<u32, IdentityError> {
        let request = self.store.allocate_identity(canonical, labels);
        let answer = tokio::task::block_in_place(|| self.runtime.block_on(request));
        answer.map_err(|e| IdentityError::Cluster(e.into()))
    }
}
