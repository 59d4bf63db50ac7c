//! The policy engine: pure code, no I/O. Policies of every kind are first lowered to one
//! intermediate form ([`ir`]); [`compile`] turns them, with a view of the cluster's endpoints
//! and identities, into per-endpoint policy entries (identity, protocol, port prefix ->
//! verdict) and the ipcache (address prefix -> identity) that the datapath looks up, plus the
//! entries by address that give Kubernetes ipBlocks their upstream meaning.
//! [`eval`] emulates that lookup and [`trace`] explains its verdicts.
//!
//! ```
//! use sluice_policy::{compile, connection, lower_network_policy, ClusterView, EndpointView, Verdict};
//!
//! let np = serde_yaml_ng::from_str(
//!     "metadata: {name: deny-all, namespace: shop}\nspec:\n  podSelector: {}\n",
//! )?;
//! let policies = [lower_network_policy(&np)];
//! let labels = sluice_model::LabelSet::for_pod(&Default::default(), "shop", &Default::default());
//! let pod = |name: &str, ip: &str| EndpointView {
//!     key: format!("shop/{name}"),
//!     namespace: "shop".into(),
//!     labels: labels.clone(),
//!     identity: 256,
//!     ips: vec![ip.parse().unwrap()],
//!     local: true,
//!     named_ports: Default::default(),
//! };
//! let view = ClusterView {
//!     endpoints: vec![pod("web", "10.0.0.1"), pod("db", "10.0.0.2")],
//!     ..Default::default()
//! };
//! let compiled = compile(&policies, &view);
//! let verdict = connection(&compiled, &view, "10.0.0.1".parse()?, "10.0.0.2".parse()?, 6, 80);
//! assert_eq!(verdict, Verdict::Deny);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod compile;
mod entries;
pub mod eval;
pub mod ir;
pub mod k8s;
pub mod l7;
pub mod output;
pub mod ports;
pub mod select;
pub mod sluice;
pub mod synthetic;
pub mod trace;

pub use compile::{compile, required_cidrs};
pub use eval::{connection, deciding, identity_of, ip_block_of, lookup, peer_ids, Matched, PeerIds};
pub use ir::*;
pub use k8s::lower_network_policy;
pub use output::*;
pub use trace::{trace, Trace};
