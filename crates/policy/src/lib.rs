//! The policy engine: pure code, no I/O. Policies of every kind are first lowered to one
//! intermediate form ([`ir`]); [`compile`] turns them, with a view of the cluster's endpoints
//! and identities, into per-endpoint policy entries (identity, protocol, port prefix ->
//! verdict) and the ipcache (address prefix -> identity) that the datapath looks up.
//! [`eval`] emulates that lookup and [`trace`] explains its verdicts.

pub mod compile;
mod entries;
pub mod eval;
pub mod ir;
pub mod k8s;
pub mod output;
pub mod ports;
pub mod select;
pub mod trace;

pub use compile::{compile, required_cidrs};
pub use eval::{connection, identity_of, lookup};
pub use ir::*;
pub use k8s::lower_network_policy;
pub use output::*;
pub use trace::{trace, Trace};
