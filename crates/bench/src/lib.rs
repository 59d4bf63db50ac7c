//! Benchmarks of Sluice, run on real labs. Each benchmark builds its own lab, measures, removes
//! the lab, and returns figures with the machine they were taken on; the CLI writes them as
//! JSON and Markdown (`sluice bench`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_bench::BenchError> {
//! let opts = sluice_bench::ControlPlaneOptions::new("/usr/local/bin/sluice".into());
//! let result = sluice_bench::control_plane(&opts, &mut |line| eprintln!("{line}")).await?;
//! println!("{}", result.markdown());
//! # Ok(()) }
//! ```

mod control_plane;
mod machine;
mod stats;

pub use control_plane::{control_plane, ControlPlaneOptions, ControlPlaneResult};
pub use machine::Machine;
pub use stats::Summary;

/// Why a benchmark could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("lab: {0}")]
    Lab(#[from] sluice_lab::LabError),
    /// The lab did not behave as the benchmark requires (a sanity check failed).
    #[error("check failed: {0}")]
    Check(String),
}
