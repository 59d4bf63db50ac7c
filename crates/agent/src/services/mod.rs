//! Service load balancing, the I/O side: the programmer that writes the desired frontends and
//! backend sets into the datapath without a half-written moment (`program`), and the loop that
//! feeds it from the cluster view and closes connections to removed backends (`sync`), with
//! what changed between two views (`inputs`). What to
//! program is pure code in `sluice-services`, re-exported here as `desired` and `maglev`.

pub use sluice_services::{desired, maglev};

pub mod inputs;
pub mod program;
pub mod sync;
