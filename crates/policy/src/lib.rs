//! The policy engine: pure code, no I/O. Policies of every kind are first lowered to one
//! intermediate form ([`ir`]); [`compile`] turns them, with a view of the cluster's endpoints
//! and identities, into per-endpoint policy entries (identity, protocol, port prefix ->
//! verdict) and the ipcache (address prefix -> identity) that the datapath looks up.

pub mod ir;
pub mod output;
pub mod sluice;

pub use ir::*;
pub use output::*;
