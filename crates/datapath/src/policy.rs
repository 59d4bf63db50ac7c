//! The policy tables: `ipcache` (address prefix -> identity), `ipblocks` (the prefixes of
//! Kubernetes ipBlocks -> identity, for lookups by address), `policy` (per-endpoint entries),
//! `policy_endpoints` (each endpoint's modes, flags and current revision) and `policy_ct` (the
//! policy conntrack). [`PolicyTables`] is what the agent's policy programmer writes through;
//! [`PolicyMaps`] implements it on the pinned maps, [`crate::fake::FakeDatapath`] in memory.

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, MapData};
use aya::Ebpf;
use ipnet::IpNet;
use sluice_abi::{ct_key, ipcache_entry, policy_ct_entry, policy_endpoint, policy_entry, policy_key};

use crate::loader::{ignore_missing, take_map};
use crate::{DatapathError, MapPressure};

/// Writes and reads of the policy tables. Missing entries on removal are not errors.
pub trait PolicyTables: Send {
    fn ipcache(&self) -> Result<Vec<(IpNet, u32)>, DatapathError>;
    fn upsert_ipcache(&mut self, prefix: IpNet, identity: u32) -> Result<(), DatapathError>;
    fn remove_ipcache(&mut self, prefix: IpNet) -> Result<(), DatapathError>;
    fn ipblocks(&self) -> Result<Vec<(IpNet, u32)>, DatapathError>;
    fn upsert_ipblock(&mut self, prefix: IpNet, identity: u32) -> Result<(), DatapathError>;
    fn remove_ipblock(&mut self, prefix: IpNet) -> Result<(), DatapathError>;
    fn policy_entries(&self) -> Result<Vec<(policy_key, policy_entry)>, DatapathError>;
    fn upsert_policy_entry(&mut self, key: &policy_key, value: &policy_entry) -> Result<(), DatapathError>;
    fn remove_policy_entry(&mut self, key: &policy_key) -> Result<(), DatapathError>;
    fn policy_endpoints(&self) -> Result<Vec<(u32, policy_endpoint)>, DatapathError>;
    fn upsert_policy_endpoint(&mut self, endpoint_id: u32, value: &policy_endpoint) -> Result<(), DatapathError>;
    fn remove_policy_endpoint(&mut self, endpoint_id: u32) -> Result<(), DatapathError>;
    fn policy_conntrack(&self) -> Result<Vec<(ct_key, policy_ct_entry)>, DatapathError>;
    fn remove_policy_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError>;
    fn policy_pressure(&self) -> Vec<MapPressure>;
}

/// The `ipcache` key of a prefix.
pub fn ipcache_key(prefix: IpNet) -> sluice_abi::ipcache_key {
    let mut key = sluice_abi::ipcache_key { prefixlen: 32 + u32::from(prefix.prefix_len()), ..Default::default() };
    match prefix.network() {
        IpAddr::V4(a) => {
            key.family = sluice_abi::SLUICE_AF_INET as u8;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = sluice_abi::SLUICE_AF_INET6 as u8;
            key.addr.copy_from_slice(&a.octets());
        }
    }
    key
}

/// The prefix an `ipcache` key stands for; `None` for a key no writer of this crate makes.
pub fn ipcache_prefix(key: &sluice_abi::ipcache_key) -> Option<IpNet> {
    let len = u8::try_from(key.prefixlen.checked_sub(32)?).ok()?;
    let addr: IpAddr = match u32::from(key.family) {
        sluice_abi::SLUICE_AF_INET => IpAddr::from(<[u8; 4]>::try_from(&key.addr[..4]).ok()?),
        sluice_abi::SLUICE_AF_INET6 => IpAddr::from(key.addr),
        _ => return None,
    };
    IpNet::new(addr, len).ok()
}

/// The part of `ipcache_key` after prefixlen, as aya's LPM key data.
#[repr(C)]
#[derive(Clone, Copy)]
struct IpcacheData {
    family: u8,
    pad: [u8; 3],
    addr: [u8; 16],
}
// SAFETY: bytes only.
unsafe impl aya::Pod for IpcacheData {}

/// The part of `policy_key` after prefixlen.
#[repr(C)]
#[derive(Clone, Copy)]
struct PolicyData {
    endpoint_id: u32,
    identity: u32,
    direction: u8,
    revision: u8,
    pad: u8,
    proto: u8,
    port: u16,
    pad2: [u8; 2],
}
// SAFETY: integers and bytes with explicit padding.
unsafe impl aya::Pod for PolicyData {}

macro_rules! pod_wrapper {
    ($($name:ident($ty:ty),)+) => {$(
        #[repr(transparent)]
        #[derive(Clone, Copy)]
        struct $name($ty);
        // SAFETY: a plain C struct from the ABI header with explicit padding.
        unsafe impl aya::Pod for $name {}
    )+};
}

pod_wrapper! {
    IpcacheValue(ipcache_entry),
    PolicyValue(policy_entry),
    EndpointValue(policy_endpoint),
    CtKey(ct_key),
    CtValue(policy_ct_entry),
}

fn to_ipcache(key: &sluice_abi::ipcache_key) -> LpmKey<IpcacheData> {
    LpmKey::new(key.prefixlen, IpcacheData { family: key.family, pad: [0; 3], addr: key.addr })
}

fn to_policy(key: &policy_key) -> LpmKey<PolicyData> {
    LpmKey::new(
        key.prefixlen,
        PolicyData {
            endpoint_id: key.endpoint_id,
            identity: key.identity,
            direction: key.direction,
            revision: key.revision,
            pad: 0,
            proto: key.proto,
            port: key.port,
            pad2: [0; 2],
        },
    )
}

fn from_policy(key: &LpmKey<PolicyData>) -> policy_key {
    let d = key.data();
    policy_key {
        prefixlen: key.prefix_len(),
        endpoint_id: d.endpoint_id,
        identity: d.identity,
        direction: d.direction,
        revision: d.revision,
        pad: 0,
        proto: d.proto,
        port: d.port,
        pad2: [0; 2],
    }
}

/// The ipcache as pinned under `pin_dir`, read from outside the agent (tools, benchmarks):
/// prefix -> identity.
pub fn pinned_ipcache(pin_dir: &std::path::Path) -> Result<Vec<(IpNet, u32)>, DatapathError> {
    let path = pin_dir.join("ipcache");
    let data = MapData::from_pin(&path).map_err(map_err("ipcache"))?;
    let trie: LpmTrie<MapData, IpcacheData, IpcacheValue> = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).map_err(map_err("ipcache"))?;
    read_ipcache(&trie, "ipcache")
}

/// Every entry of an ipcache-shaped trie (`ipcache`, `ipblocks`): prefix -> identity.
fn read_ipcache(trie: &LpmTrie<MapData, IpcacheData, IpcacheValue>, map: &'static str) -> Result<Vec<(IpNet, u32)>, DatapathError> {
    let mut out = Vec::new();
    for r in trie.iter() {
        let (k, v) = r.map_err(map_err(map))?;
        let d = k.data();
        let key = sluice_abi::ipcache_key { prefixlen: k.prefix_len(), family: d.family, pad: [0; 3], addr: d.addr };
        if let Some(prefix) = ipcache_prefix(&key) {
            out.push((prefix, v.0.identity));
        }
    }
    Ok(out)
}

/// The pinned `ipcache` opened from outside the agent, for lookups by address (the layer-7
/// proxy's view of identities).
pub struct PinnedIpcache {
    trie: LpmTrie<MapData, IpcacheData, IpcacheValue>,
}

impl PinnedIpcache {
    pub fn open(pin_dir: &std::path::Path) -> Result<Self, DatapathError> {
        let data = MapData::from_pin(pin_dir.join("ipcache")).map_err(map_err("ipcache"))?;
        let trie = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).map_err(map_err("ipcache"))?;
        Ok(Self { trie })
    }

    /// The identity of the longest prefix holding `addr`; `None` under no prefix (world).
    pub fn identity(&self, addr: IpAddr) -> Result<Option<u32>, DatapathError> {
        match self.trie.get(&to_ipcache(&ipcache_key(IpNet::from(addr))), 0) {
            Ok(v) => Ok(Some(v.0.identity)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map { map: "ipcache", source: Box::new(source) }),
        }
    }
}

/// The pinned `policy_ct` opened from outside the agent: the layer-7 proxy adds the entries of
/// its upstream connections and removes them when they close.
pub struct PinnedPolicyConntrack {
    map: HashMap<MapData, CtKey, CtValue>,
}

impl PinnedPolicyConntrack {
    pub fn open(pin_dir: &std::path::Path) -> Result<Self, DatapathError> {
        let data = MapData::from_pin(pin_dir.join("policy_ct")).map_err(map_err("policy_ct"))?;
        let map = HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err("policy_ct"))?;
        Ok(Self { map })
    }

    /// Adds an entry; fails when the tuple already has one (BPF_NOEXIST).
    pub fn insert_new(&mut self, key: &ct_key, value: &policy_ct_entry) -> Result<(), DatapathError> {
        const BPF_NOEXIST: u64 = 1;
        self.map.insert(CtKey(*key), CtValue(*value), BPF_NOEXIST).map_err(map_err("policy_ct"))
    }

    /// Removes an entry; one already gone (evicted, collected) is not an error.
    pub fn remove(&mut self, key: &ct_key) -> Result<(), DatapathError> {
        ignore_missing(self.map.remove(&CtKey(*key)), "policy_ct")
    }
}

/// Each endpoint's policy modes and revision as pinned under `pin_dir` (`policy_endpoints`),
/// read from outside the agent.
pub fn pinned_policy_endpoints(pin_dir: &std::path::Path) -> Result<Vec<(u32, policy_endpoint)>, DatapathError> {
    let data = MapData::from_pin(pin_dir.join("policy_endpoints")).map_err(map_err("policy_endpoints"))?;
    let map: HashMap<MapData, u32, EndpointValue> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(map_err("policy_endpoints"))?;
    map.iter().map(|r| r.map(|(k, v)| (k, v.0)).map_err(map_err("policy_endpoints"))).collect()
}

/// Handles to the pinned policy maps.
pub struct PolicyMaps {
    ipcache: LpmTrie<MapData, IpcacheData, IpcacheValue>,
    ipblocks: LpmTrie<MapData, IpcacheData, IpcacheValue>,
    policy: LpmTrie<MapData, PolicyData, PolicyValue>,
    endpoints: HashMap<MapData, u32, EndpointValue>,
    conntrack: HashMap<MapData, CtKey, CtValue>, // an LRU hash; aya reads both kinds the same way
    conntrack_capacity: usize,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source: Box::new(source) }
}

// === impl PolicyMaps ===

impl PolicyMaps {
    pub(crate) fn take(ebpf: &mut Ebpf, conntrack_capacity: u32) -> Result<Self, DatapathError> {
        Ok(Self {
            ipcache: take_map(ebpf, "ipcache", LpmTrie::try_from)?,
            ipblocks: take_map(ebpf, "ipblocks", LpmTrie::try_from)?,
            policy: take_map(ebpf, "policy", LpmTrie::try_from)?,
            endpoints: take_map(ebpf, "policy_endpoints", HashMap::try_from)?,
            conntrack: take_map(ebpf, "policy_ct", HashMap::try_from)?,
            conntrack_capacity: conntrack_capacity as usize,
        })
    }
}

impl PolicyTables for PolicyMaps {
    fn ipcache(&self) -> Result<Vec<(IpNet, u32)>, DatapathError> {
        read_ipcache(&self.ipcache, "ipcache")
    }
    fn upsert_ipcache(&mut self, prefix: IpNet, identity: u32) -> Result<(), DatapathError> {
        let value = IpcacheValue(ipcache_entry { identity, pad: 0 });
        self.ipcache
            .insert(&to_ipcache(&ipcache_key(prefix)), value, 0)
            .map_err(DatapathError::map_write("ipcache", sluice_abi::SLUICE_IPCACHE_ENTRIES))
    }
    fn remove_ipcache(&mut self, prefix: IpNet) -> Result<(), DatapathError> {
        ignore_missing(self.ipcache.remove(&to_ipcache(&ipcache_key(prefix))), "ipcache")
    }
    fn ipblocks(&self) -> Result<Vec<(IpNet, u32)>, DatapathError> {
        read_ipcache(&self.ipblocks, "ipblocks")
    }
    fn upsert_ipblock(&mut self, prefix: IpNet, identity: u32) -> Result<(), DatapathError> {
        let value = IpcacheValue(ipcache_entry { identity, pad: 0 });
        self.ipblocks
            .insert(&to_ipcache(&ipcache_key(prefix)), value, 0)
            .map_err(DatapathError::map_write("ipblocks", sluice_abi::SLUICE_IPBLOCK_ENTRIES))
    }
    fn remove_ipblock(&mut self, prefix: IpNet) -> Result<(), DatapathError> {
        ignore_missing(self.ipblocks.remove(&to_ipcache(&ipcache_key(prefix))), "ipblocks")
    }
    fn policy_entries(&self) -> Result<Vec<(policy_key, policy_entry)>, DatapathError> {
        self.policy.iter().map(|r| r.map(|(k, v)| (from_policy(&k), v.0)).map_err(map_err("policy"))).collect()
    }
    fn upsert_policy_entry(&mut self, key: &policy_key, value: &policy_entry) -> Result<(), DatapathError> {
        self.policy
            .insert(&to_policy(key), PolicyValue(*value), 0)
            .map_err(DatapathError::map_write("policy", sluice_abi::SLUICE_POLICY_ENTRIES))
    }
    fn remove_policy_entry(&mut self, key: &policy_key) -> Result<(), DatapathError> {
        ignore_missing(self.policy.remove(&to_policy(key)), "policy")
    }
    fn policy_endpoints(&self) -> Result<Vec<(u32, policy_endpoint)>, DatapathError> {
        self.endpoints.iter().map(|r| r.map(|(k, v)| (k, v.0)).map_err(map_err("policy_endpoints"))).collect()
    }
    fn upsert_policy_endpoint(&mut self, endpoint_id: u32, value: &policy_endpoint) -> Result<(), DatapathError> {
        self.endpoints
            .insert(endpoint_id, EndpointValue(*value), 0)
            .map_err(DatapathError::map_write("policy_endpoints", sluice_abi::SLUICE_MAX_ENDPOINTS))
    }
    fn remove_policy_endpoint(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        ignore_missing(self.endpoints.remove(&endpoint_id), "policy_endpoints")
    }
    fn policy_conntrack(&self) -> Result<Vec<(ct_key, policy_ct_entry)>, DatapathError> {
        self.conntrack.iter().map(|r| r.map(|(k, v)| (k.0, v.0)).map_err(map_err("policy_ct"))).collect()
    }
    fn remove_policy_conntrack(&mut self, key: &ct_key) -> Result<(), DatapathError> {
        ignore_missing(self.conntrack.remove(&CtKey(*key)), "policy_ct")
    }
    fn policy_pressure(&self) -> Vec<MapPressure> {
        vec![
            MapPressure { map: "ipcache", entries: self.ipcache.keys().count(), capacity: sluice_abi::SLUICE_IPCACHE_ENTRIES as usize },
            MapPressure { map: "ipblocks", entries: self.ipblocks.keys().count(), capacity: sluice_abi::SLUICE_IPBLOCK_ENTRIES as usize },
            MapPressure { map: "policy", entries: self.policy.keys().count(), capacity: sluice_abi::SLUICE_POLICY_ENTRIES as usize },
            MapPressure {
                map: "policy_endpoints",
                entries: self.endpoints.keys().count(),
                capacity: sluice_abi::SLUICE_MAX_ENDPOINTS as usize,
            },
            MapPressure { map: "policy_ct", entries: self.conntrack.keys().count(), capacity: self.conntrack_capacity },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_key_of_v4_and_v6_hosts() {
        let k = ipcache_key("10.244.1.7/32".parse().expect("prefix"));
        assert_eq!(k.prefixlen, 64, "an IPv4 host key covers family, pad and 32 bits");
        assert_eq!(u32::from(k.family), sluice_abi::SLUICE_AF_INET);
        assert_eq!(&k.addr[..4], &[10, 244, 1, 7]);
        assert_eq!(&k.addr[4..], &[0; 12], "the rest of an IPv4 key is zero");
        let k = ipcache_key("fd00::7/128".parse().expect("prefix"));
        assert_eq!(k.prefixlen, 160);
        assert_eq!(u32::from(k.family), sluice_abi::SLUICE_AF_INET6);
        assert_eq!(ipcache_prefix(&k), Some("fd00::7/128".parse().expect("prefix")), "and back");
    }
}
