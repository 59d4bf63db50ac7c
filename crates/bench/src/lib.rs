//! Benchmarks of Sluice, run on real labs. Each benchmark builds what it measures, measures, tears
//! it down (also on failure), and returns figures with the machine they were taken on; the CLI
//! writes them as JSON, Markdown and, for the datapath comparison, a PNG chart (`sluice bench`).
//! `sluice bench services` measures how fast the agent programs many services and its memory;
//! `sluice bench scale` the control plane with many simulated nodes against a real etcd.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_bench::BenchError> {
//! let opts = sluice_bench::DatapathOptions::new("/usr/local/bin/sluice".into(), true);
//! let report = sluice_bench::datapath(&opts, &mut |line| eprintln!("{line}")).await?;
//! println!("{}", report.markdown());
//! # Ok(()) }
//! ```

mod cluster;
pub mod configurations;
mod control_plane;
mod datapath;
mod error;
mod l7;
mod machine;
mod observer_rate;
mod policy;
mod policy_packet;
mod process;
pub mod report;
pub mod scale;
mod services;
mod stats;
pub mod workloads;

pub use cluster::{cluster, ClusterOptions, ClusterResult, ClusterRun};
pub use control_plane::{control_plane, ControlPlaneOptions, ControlPlaneResult};
pub use datapath::{datapath, DatapathOptions};
pub use error::BenchError;
pub use l7::{l7, L7Case, L7Options, L7Result};
pub use machine::Machine;
pub use observer_rate::{observer_rate, ObserverRate, ObserverRun};
pub use policy::{local_endpoints, policy, PolicyOptions, PolicyReport, PolicyRun};
pub use policy_packet::PacketCost;
pub use report::Report;
pub use scale::{scale, ScaleOptions, ScaleResult, ScaleRun};
pub use services::{remove_service_labs, services, ServicesOptions, ServicesPoint, ServicesResult, ServicesRun, MAX_DISTINCT_BACKENDS};
pub use stats::Summary;
