//! The interface the agent's reconciler programs: endpoint entries in the maps and the
//! from-pod program on each pod interface. [`crate::BpfDatapath`] implements it on the kernel,
//! [`crate::fake::FakeDatapath`] in memory for tests without root.

use sluice_abi::endpoint_info;

use crate::{DatapathError, EndpointEntry};

/// Summed per-CPU counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Endpoints, programs and counters; the service and policy tables come with it
/// ([`crate::ServiceTables`], [`crate::PolicyTables`]).
pub trait DatapathTables: crate::ServiceTables + crate::PolicyTables + Send {
    /// Writes the endpoint under all its keys; replaces what was there.
    fn upsert_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError>;
    /// Removes every map entry that points at host ifindex `ifindex` or carries one of `entry`'s
    /// addresses; a missing entry is not an error.
    fn remove_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError>;
    /// The `endpoint_ifaces` map: host ifindex and the value stored there.
    fn programmed_ifindexes(&self) -> Result<Vec<(u32, endpoint_info)>, DatapathError>;
    /// The `endpoints` map: pod address and the value stored there.
    fn programmed_addresses(&self) -> Result<Vec<(std::net::IpAddr, endpoint_info)>, DatapathError>;
    /// Removes one `endpoints` entry by address.
    fn remove_address(&mut self, addr: std::net::IpAddr) -> Result<(), DatapathError>;
    /// Removes one `endpoint_ifaces` entry.
    fn remove_ifindex(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// Attaches (or re-attaches, replacing an older program) from-pod on a host interface.
    fn attach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError>;
    /// Detaches from-pod from a host interface; no-op when nothing is attached.
    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError>;
    /// Host interfaces that carry a pinned from-pod link.
    fn attached_endpoints(&self) -> Result<Vec<String>, DatapathError>;
    /// Drops, indexed by `point * SLUICE_DROP_REASON_MAX + sluice_drop_reason`.
    fn drop_counters(&self) -> Result<Vec<CounterValue>, DatapathError>;
    /// Forwarding decisions, indexed by `point * SLUICE_FWD_KIND_MAX + sluice_forward_kind`.
    fn forward_counters(&self) -> Result<Vec<CounterValue>, DatapathError>;
    /// Events the datapath could not deliver, indexed by `sluice_event_loss`.
    fn event_losses(&self) -> Result<Vec<u64>, DatapathError>;
    /// Entries in use and capacity of the hash maps.
    fn map_pressure(&self) -> Vec<crate::MapPressure>;
}
