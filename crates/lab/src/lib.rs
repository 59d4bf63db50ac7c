//! The Sluice local lab: a container runtime for one machine. Nodes and pods are network
//! namespaces; every node runs a real agent; every pod gets its network from the real
//! `sluice-cni` called as containerd calls it. It is how a user tries Sluice and how the tests
//! and benchmarks build real topologies. Several labs (one per test) share a machine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_lab::LabError> {
//! use sluice_lab::{Lab, UpOptions};
//! let lab = Lab::up(UpOptions::new("demo", "/usr/local/bin/sluice".into()), &mut |step| println!("{step}")).await?;
//! println!("{} nodes", lab.state().nodes.len());
//! Lab::down("demo", &mut |step| println!("{step}")).await?;
//! # Ok(()) }
//! ```

mod agents;
pub mod cgroup;
mod cni;
mod error;
mod etcd;
mod lab;
pub mod names;
mod process;
pub mod runtime;
pub mod shim;
pub mod state;
mod topology;

pub use error::LabError;

/// What `sluice proxy` writes to its log once its listeners are bound.
pub const PROXY_READY_LINE: &str = "proxy listening";
pub use lab::{AppliedObject, Lab, UpOptions};
