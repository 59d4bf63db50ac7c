//! Sluice on the Kubernetes API: the custom resource definitions of Sluice's kinds, generated
//! from Rust types ([`crds`]), the API server as a state source ([`source`]), and what a
//! node's agent writes there ([`cluster`]).

pub mod access;
pub mod cluster;
pub mod crds;
pub mod rbac;
pub mod source;

pub use access::{connect, KubeAccess};
pub use cluster::KubeCluster;
pub use source::KubeSource;
