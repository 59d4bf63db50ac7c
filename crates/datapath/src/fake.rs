//! An in-memory [`DatapathTables`] for tests of everything above the datapath, without root.
//! It keeps the same tables the kernel maps would, so reconciler tests can inspect them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_abi::endpoint_info;

use crate::{CounterValue, DatapathError, DatapathTables, EndpointEntry};

#[derive(Debug, Default, Clone)]
pub struct FakeDatapath {
    /// `endpoints`: address → value.
    pub addresses: BTreeMap<IpAddr, endpoint_info>,
    /// `endpoint_ifaces`: host ifindex → value.
    pub ifindexes: BTreeMap<u32, endpoint_info>,
    /// Interfaces with from-pod attached.
    pub attached: BTreeSet<String>,
    /// Count of write calls, to check that a converged reconcile writes nothing.
    pub writes: usize,
}

impl DatapathTables for FakeDatapath {
    fn upsert_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.writes += 1;
        let info = entry.info();
        for addr in [entry.ipv4.map(IpAddr::from), entry.ipv6.map(IpAddr::from)].into_iter().flatten() {
            self.addresses.insert(addr, info);
        }
        self.ifindexes.insert(entry.host_ifindex, info);
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

    fn programmed_ifindexes(&self) -> Result<Vec<(u32, endpoint_info)>, DatapathError> {
        Ok(self.ifindexes.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn programmed_addresses(&self) -> Result<Vec<(IpAddr, endpoint_info)>, DatapathError> {
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

    fn drop_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        let n = sluice_abi::sluice_drop_reason::SLUICE_DROP_REASON_MAX as usize * sluice_abi::sluice_obs_point::SLUICE_POINT_MAX as usize;
        Ok(vec![CounterValue::default(); n])
    }

    fn forward_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        let n = sluice_abi::sluice_forward_kind::SLUICE_FWD_KIND_MAX as usize * sluice_abi::sluice_obs_point::SLUICE_POINT_MAX as usize;
        Ok(vec![CounterValue::default(); n])
    }

    fn event_losses(&self) -> Result<Vec<u64>, DatapathError> {
        Ok(vec![0; sluice_abi::sluice_event_loss::SLUICE_LOSS_MAX as usize])
    }

    fn map_pressure(&self) -> Vec<crate::MapPressure> {
        let max = sluice_abi::SLUICE_MAX_ENDPOINTS as usize;
        vec![
            crate::MapPressure { map: "endpoints", entries: self.addresses.len(), capacity: max },
            crate::MapPressure { map: "endpoint_ifaces", entries: self.ifindexes.len(), capacity: max },
        ]
    }
}
