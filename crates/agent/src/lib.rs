//! The Sluice node agent: one per node. It owns the node's IPAM, endpoints and identities,
//! programs the datapath through a level-triggered reconciler, and serves the API on a
//! root-only unix socket for the CNI plugin and the CLI.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_agent::AgentError> {
//! let config = sluice_agent::AgentConfig::load(std::path::Path::new("/etc/sluice/agent.yaml"))?;
//! sluice_agent::run(config).await
//! # }
//! ```

pub mod agent;
pub mod api;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod db;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod firewall;
pub mod identity;
pub mod ipam;
pub mod metrics;
pub mod observer;
pub mod plumber;
pub mod policy;
pub mod reconciler;
pub mod serve;
pub mod services;

pub use config::AgentConfig;
pub use daemon::run;
pub use error::AgentError;
