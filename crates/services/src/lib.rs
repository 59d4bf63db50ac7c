//! Service load balancing as pure code, with no I/O: from Kubernetes Services and
//! EndpointSlices to the frontends and backend sets a node must program, with the semantics of
//! kube-proxy and Cilium ([`desired`]), and the Maglev tables that spread External traffic over
//! a set the same way on every node ([`maglev`]). The agent writes the result into the datapath.
//!
//! ```
//! use sluice_services::desired::{desired_services, NodeInfo};
//! use sluice_services::maglev::{maglev_table, DEFAULT_TABLE_SIZE};
//!
//! let node = NodeInfo { name: "node0".into(), addresses: vec![[192, 0, 2, 10].into()] };
//! let desired = desired_services(&[], &[], &node);
//! assert!(desired.frontends.is_empty(), "no Services, no frontends");
//! let table = maglev_table(&["10.0.1.1:80/TCP", "10.0.1.2:80/TCP"], DEFAULT_TABLE_SIZE)?;
//! assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
//! # Ok::<(), sluice_services::maglev::MaglevError>(())
//! ```

pub mod desired;
pub mod incremental;
pub mod maglev;
pub mod small_set;
pub mod view;
