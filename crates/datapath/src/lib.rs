//! The datapath crate: the only Sluice code that calls bpf(2) or netlink.
//!
//! It embeds the C programs of `bpf/` (compiled at build time), loads them with aya against the
//! node's pinned maps, attaches them with tcx links that are pinned too (so traffic keeps
//! flowing while the agent restarts), and plumbs pod interfaces with rtnetlink. Everything above
//! it talks to [`DatapathTables`], which has a fake for tests without root.
//!
//! ```no_run
//! # fn demo() -> Result<(), sluice_datapath::DatapathError> {
//! use sluice_datapath::{BpfDatapath, HostRouting};
//! let dp = BpfDatapath::load(std::path::Path::new("/sys/fs/bpf/sluice"), HostRouting::Bpf)?;
//! println!("{} drop reasons counted", dp.drop_counters()?.len());
//! # Ok(()) }
//! ```

mod bpffs;
mod endpoint;
mod error;
pub mod fake;
mod guard;
mod loader;
pub mod netlink;
pub mod netns;
pub mod nfnetlink;
pub mod plumb;
pub mod policy;
mod probe;
pub mod services;
pub mod sock_destroy;
mod tables;
pub mod test_run;
pub mod testing;
mod xdp;

pub use bpffs::{ensure_bpffs, is_bpffs, unmount_bpffs};
pub use endpoint::{EndpointEntry, Mac};
pub use error::DatapathError;
pub use guard::{cgroup2_mount, decode_guard_event, Guard, GuardEvent};
pub use loader::{BpfDatapath, HostRouting, LoadOptions, MapPressure, MonitorAggregation, Objects};
pub use nfnetlink::NftablesNotifications;
pub use policy::{PinnedIpcache, PinnedPolicyConntrack, PolicyMaps, PolicyTables};
pub use probe::{probe_host_routing, HostRoutingProbe};
pub use services::{ServiceMaps, ServiceTables, SocketLb};
pub use tables::{CounterValue, DatapathTables};
pub use xdp::{XdpMode, XdpNetdev, XdpOptions};
