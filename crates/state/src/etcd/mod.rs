//! The etcd datastore: the store of clusters that run without Kubernetes and of multi-node labs.
//! This module holds the client configuration and the error type; the key layout, the writer
//! ([`EtcdStore`]), the watching source ([`EtcdSource`]), node leases, IPAM, identities, a
//! launcher for an etcd process and lab certificates live in the modules below.
//!
//! Everything Sluice writes lives under one prefix (`/sluice/v1` by default); see [`keys`] for
//! the layout.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod identity;
mod ipam;
pub mod keys;
mod lease;
pub mod pki;
pub mod server;
mod source;
mod store;

pub use identity::{FIRST_CLUSTER_IDENTITY, LAST_CLUSTER_IDENTITY};
pub use keys::{Keys, ObjectKind};
pub use lease::NodeLease;
pub use pki::{CertFiles, Pki, PkiError, PkiFiles};
pub use server::{free_local_port, EtcdServer, EtcdServerOptions, ServerError, ServerTls};
pub use source::EtcdSource;
pub use store::{EtcdStore, CONNECT_TIMEOUT, MAX_TXN_OPS, REQUEST_TIMEOUT, UPDATE_ATTEMPTS};

/// Where the etcd cluster is and how to reach it (the agent's `state.etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, `https://198.18.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The CA that signed the servers' certificates (TLS when set).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This client's certificate and key (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Every key Sluice writes starts with this.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "/sluice/v1".into()
}

impl EtcdConfig {
    /// A plain-text client of `endpoints` with the default prefix.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints, ca_file: None, cert_file: None, key_file: None, prefix: default_prefix() }
    }

    /// The endpoints as one string, for error messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Why etcd could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The etcd client failed (connection, request, TLS).
    #[error("etcd {endpoints}: {action}: {source}")]
    Client {
        endpoints: String,
        action: String,
        #[source]
        source: etcd_client::Error,
    },
    /// The cluster did not answer in time.
    #[error("etcd {endpoints}: {action}: no answer within {waited:?}")]
    Timeout { endpoints: String, action: String, waited: Duration },
    /// A TLS file named in the configuration could not be read.
    #[error("etcd {endpoints}: reading the TLS {what} {path}: {source}")]
    TlsFile {
        endpoints: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("etcd {endpoints}: certFile and keyFile must be set together")]
    TlsIncomplete { endpoints: String },
    /// The configuration names no endpoint.
    #[error("etcd: no endpoints configured")]
    NoEndpoints,
    /// A value under the prefix is not what its key says it is.
    #[error("etcd key {key}: the value does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be encoded for writing.
    #[error("etcd key {key}: the value does not encode: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// Other writers kept changing the keys a transaction depends on.
    #[error("etcd {endpoints}: {action}: still conflicting with other writers after {attempts} attempts")]
    Contention { endpoints: String, action: String, attempts: u32 },
    /// A pod-CIDR pool has no free subnet of the asked size.
    #[error("pod CIDR pool {pool} has no free /{prefix_len} left")]
    PoolExhausted { pool: ipnet::IpNet, prefix_len: u8 },
    /// A node prefix that does not fit in its pool.
    #[error("pod CIDR pool {pool} cannot be cut into /{prefix_len} subnets")]
    BadPool { pool: ipnet::IpNet, prefix_len: u8 },
    /// Every identity number is taken.
    #[error("no free identity number left between {first} and {last}")]
    IdentitiesExhausted { first: u32, last: u32 },
    /// The watch was cancelled by the server for a reason other than compaction.
    #[error("etcd {endpoints}: the watch of {prefix} was cancelled: {reason}")]
    WatchCancelled { endpoints: String, prefix: String, reason: String },
    /// The node's lease is gone and was not granted anew yet.
    #[error("etcd {endpoints}: node {node} holds no lease now")]
    NoLease { endpoints: String, node: String },
}
