//! An in-memory [`DatapathTables`] for tests of everything above the datapath, without root.
//! It keeps the same tables the kernel maps would, so reconciler tests can inspect them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::{DatapathError, DatapathTables, EndpointEntry};

#[derive(Debug, Default, Clone)]
pub struct FakeDatapath {
    /// `endpoints`: address → host ifindex.
    pub addresses: BTreeMap<IpAddr, u32>,
    /// `endpoint_ifaces`: host ifindex → endpoint id.
    pub ifindexes: BTreeMap<u32, u32>,
    /// Interfaces with from-pod attached.
    pub attached: BTreeSet<String>,
    /// Count of write calls, to check that a converged reconcile writes nothing.
    pub writes: usize,
}

impl DatapathTables for FakeDatapath {
    fn upsert_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.writes += 1;
        for addr in [entry.ipv4.map(IpAddr::from), entry.ipv6.map(IpAddr::from)].into_iter().flatten() {
            self.addresses.insert(addr, entry.host_ifindex);
        }
        self.ifindexes.insert(entry.host_ifindex, entry.endpoint_id);
        Ok(())
    }

    fn remove_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ifindexes.remove(&entry.host_ifindex);
        for addr in [entry.ipv4.map(IpAddr::from), entry.ipv6.map(IpAddr::from)].into_iter().flatten() {
            self.addresses.remove(&addr);
        }
        Ok(())
    }

    fn programmed_ifindexes(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        Ok(self.ifindexes.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn programmed_addresses(&self) -> Result<Vec<(IpAddr, u32)>, DatapathError> {
        Ok(self.addresses.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn remove_address(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
        self.writes += 1;
        self.addresses.remove(&addr);
        Ok(())
    }

    fn remove_ifindex(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ifindexes.remove(&ifindex);
        Ok(())
    }

    fn attach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        self.writes += 1;
        self.attached.insert(host_ifname.to_owned());
        Ok(())
    }

    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        self.writes += 1;
        self.attached.remove(host_ifname);
        Ok(())
    }

    fn attached_endpoints(&self) -> Result<Vec<String>, DatapathError> {
        Ok(self.attached.iter().cloned().collect())
    }
}
