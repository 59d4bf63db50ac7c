//! Sluice on the Kubernetes API: the custom resource definitions of Sluice's kinds, generated
//! from Rust types ([`crds`]), and the API server as a state source ([`source`]).

pub mod crds;
pub mod source;

pub use source::KubeSource;
