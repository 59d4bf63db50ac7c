//! An in-memory [`DatapathTables`] for tests of everything above the datapath, without root.
//! It keeps the same tables the kernel maps would, so reconciler tests can inspect them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sluice_abi::{ct_entry, ct_key, endpoint_info, lb_backend, lb_frontend, lb_frontend_key, lb_maglev_chunk, lb_maglev_key, lb_slot_key};

use sluice_abi::{policy_ct_entry, policy_endpoint, policy_entry, policy_key};

use crate::{CounterValue, DatapathError, DatapathTables, EndpointEntry, PolicyTables, ServiceTables};

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
    /// The service maps, keyed by the key's bytes.
    pub lb_frontends: BTreeMap<Vec<u8>, (lb_frontend_key, lb_frontend)>,
    pub lb_backends: BTreeMap<u32, lb_backend>,
    pub lb_slots: BTreeMap<Vec<u8>, (lb_slot_key, u32)>,
    pub lb_maglev: BTreeMap<Vec<u8>, (lb_maglev_key, Box<lb_maglev_chunk>)>,
    pub lb_ct: BTreeMap<Vec<u8>, (ct_key, ct_entry)>,
    /// The policy maps.
    pub ipcache: BTreeMap<ipnet::IpNet, u32>,
    pub ipblocks: BTreeMap<ipnet::IpNet, u32>,
    pub policy: BTreeMap<Vec<u8>, (policy_key, policy_entry)>,
    pub policy_endpoints: BTreeMap<u32, policy_endpoint>,
    pub policy_ct: BTreeMap<Vec<u8>, (ct_key, policy_ct_entry)>,
    /// When set, `lb_backends` holds at most this many entries: a new one past it fails as a
    /// full kernel map does.
    pub lb_backends_capacity: Option<usize>,
}

/// The bytes of an ABI struct (explicitly padded, so every byte is initialised).
pub fn abi_bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: T is one of the ABI's plain C structs: no implicit padding, no pointers; reading
    // its size in bytes from a valid reference is sound.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
}

impl ServiceTables for FakeDatapath {
    fn frontends(&self) -> Result<Vec<(lb_frontend_key, lb_frontend)>, DatapathError> {
        Ok(self.lb_frontends.values().copied().collect())
    }
    fn upsert_frontend(&mut self, key: &lb_frontend_key, value: &lb_frontend) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_frontends.insert(abi_bytes(key), (*key, *value));
        Ok(())
    }
    fn remove_frontend(&mut self, key: &lb_frontend_key) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_frontends.remove(&abi_bytes(key));
        Ok(())
    }
    fn backends(&self) -> Result<Vec<(u32, lb_backend)>, DatapathError> {
        Ok(self.lb_backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_backend(&mut self, id: u32, value: &lb_backend) -> Result<(), DatapathError> {
        if let Some(capacity) = self.lb_backends_capacity.filter(|c| self.lb_backends.len() >= *c && !self.lb_backends.contains_key(&id)) {
            return Err(DatapathError::MapFull { map: "lb_backends", capacity });
        }
        self.writes += 1;
        self.lb_backends.insert(id, *value);
        Ok(())
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_backends.remove(&id);
        Ok(())
    }
    fn slots(&self) -> Result<Vec<(lb_slot_key, u32)>, DatapathError> {
        Ok(self.lb_slots.values().copied().collect())
    }
    fn upsert_slot(&mut self, key: &lb_slot_key, backend_id: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_slots.insert(abi_bytes(key), (*key, backend_id));
        Ok(())
    }
    fn remove_slot(&mut self, key: &lb_slot_key) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_slots.remove(&abi_bytes(key));
        Ok(())
    }
    fn maglev_keys(&self) -> Result<Vec<lb_maglev_key>, DatapathError> {
        Ok(self.lb_maglev.values().map(|(k, _)| *k).collect())
    }
    fn upsert_maglev(&mut self, key: &lb_maglev_key, chunk: &lb_maglev_chunk) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_maglev.insert(abi_bytes(key), (*key, Box::new(*chunk)));
        Ok(())
    }
    fn remove_maglev(&mut self, key: &lb_maglev_key) -> Result<(), DatapathError> {
        self.writes += 1;
        self.lb_maglev.remove(&abi_bytes(key));
        Ok(())
    }
    fn conntrack(&self) -> Result<Vec<(ct_key, ct_entry)>, DatapathError> {
        Ok(self.lb_ct.values().copied().collect())
    }
    fn remove_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError> {
        self.lb_ct.remove(&abi_bytes(key));
        Ok(())
    }
    fn service_pressure(&self) -> Vec<crate::MapPressure> {
        vec![crate::MapPressure { map: "lb_ct", entries: self.lb_ct.len(), capacity: sluice_abi::SLUICE_CT_DEFAULT_ENTRIES as usize }]
    }
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

impl PolicyTables for FakeDatapath {
    fn ipcache(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        Ok(self.ipcache.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_ipcache(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ipcache.insert(prefix, identity);
        Ok(())
    }
    fn remove_ipcache(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ipcache.remove(&prefix);
        Ok(())
    }
    fn ipblocks(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        Ok(self.ipblocks.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_ipblock(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ipblocks.insert(prefix, identity);
        Ok(())
    }
    fn remove_ipblock(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.writes += 1;
        self.ipblocks.remove(&prefix);
        Ok(())
    }
    fn policy_entries(&self) -> Result<Vec<(policy_key, policy_entry)>, DatapathError> {
        Ok(self.policy.values().copied().collect())
    }
    fn upsert_policy_entry(&mut self, key: &policy_key, value: &policy_entry) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy.insert(abi_bytes(key), (*key, *value));
        Ok(())
    }
    fn remove_policy_entry(&mut self, key: &policy_key) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy.remove(&abi_bytes(key));
        Ok(())
    }
    fn policy_endpoints(&self) -> Result<Vec<(u32, policy_endpoint)>, DatapathError> {
        Ok(self.policy_endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn upsert_policy_endpoint(&mut self, endpoint_id: u32, value: &policy_endpoint) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy_endpoints.insert(endpoint_id, *value);
        Ok(())
    }
    fn remove_policy_endpoint(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy_endpoints.remove(&endpoint_id);
        Ok(())
    }
    fn policy_conntrack(&self) -> Result<Vec<(ct_key, policy_ct_entry)>, DatapathError> {
        Ok(self.policy_ct.values().copied().collect())
    }
    fn remove_policy_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError> {
        self.writes += 1;
        self.policy_ct.remove(&abi_bytes(key));
        Ok(())
    }
    fn policy_pressure(&self) -> Vec<crate::MapPressure> {
        vec![
            crate::MapPressure { map: "ipcache", entries: self.ipcache.len(), capacity: sluice_abi::SLUICE_IPCACHE_ENTRIES as usize },
            crate::MapPressure { map: "ipblocks", entries: self.ipblocks.len(), capacity: sluice_abi::SLUICE_IPBLOCK_ENTRIES as usize },
            crate::MapPressure { map: "policy", entries: self.policy.len(), capacity: sluice_abi::SLUICE_POLICY_ENTRIES as usize },
        ]
    }
}
