//! Network policy in the agent: the loop that compiles this node's policy tables from the
//! cluster's objects ([`sync`]) and the programmer that writes them into the maps without a
//! moment of half-applied policy ([`program`]).

pub mod api;
pub mod program;
pub mod proxy;
pub mod sync;
