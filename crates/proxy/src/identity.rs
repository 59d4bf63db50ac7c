//! Security identities of addresses, as the datapath sees them: the pinned `ipcache` LPM trie,
//! behind [`IdentitySource`] so the proxy's logic can be tested without maps.

use std::net::IpAddr;
use std::path::Path;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Map, MapData, MapError};
use sluice_abi::ipcache_entry;
use thiserror::Error;

/// Failures opening or reading the ipcache.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The pinned map could not be opened or is not an LPM trie of the expected layout.
    #[error("opening the ipcache map {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<MapError>,
    },
    /// A lookup failed for another reason than a miss.
    #[error("looking up {addr} in the ipcache: {source}")]
    Lookup {
        addr: IpAddr,
        #[source]
        source: Box<MapError>,
    },
}

/// Gives the identity of an address; an address under no prefix is world.
pub trait IdentitySource: Send + Sync {
    fn identity(&self, addr: IpAddr) -> Result<u32, IdentityError>;
}

/// The part of `ipcache_key` after prefixlen, as aya's LPM key data.
#[repr(C)]
#[derive(Clone, Copy)]
struct IpcacheData {
    family: u8,
    pad: [u8; 3],
    addr: [u8; 16],
}
// SAFETY: bytes only, no padding the compiler adds.
unsafe impl aya::Pod for IpcacheData {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct IpcacheValue(ipcache_entry);
// SAFETY: a plain C struct from the ABI header: integers with explicit padding, so every bit
// pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for IpcacheValue {}

/// The full-length `ipcache` key of one address (IPv4 in the first 4 bytes).
pub fn ipcache_key(addr: IpAddr) -> sluice_abi::ipcache_key {
    let mut key = sluice_abi::ipcache_key::default();
    match crate::rules::canonical(addr) {
        IpAddr::V4(a) => {
            key.prefixlen = 32 + 32;
            key.family = sluice_abi::SLUICE_AF_INET as u8;
            key.addr[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.prefixlen = 32 + 128;
            key.family = sluice_abi::SLUICE_AF_INET6 as u8;
            key.addr = a.octets();
        }
    }
    key
}

/// The datapath's pinned `ipcache`.
pub struct Ipcache {
    trie: LpmTrie<MapData, IpcacheData, IpcacheValue>,
}

impl Ipcache {
    /// Opens `{bpffs}/ipcache`.
    pub fn open(bpffs: &Path) -> Result<Ipcache, IdentityError> {
        let path = bpffs.join("ipcache");
        let open_err = |source| IdentityError::Open { path: path.display().to_string(), source: Box::new(source) };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        let trie = LpmTrie::try_from(Map::LpmTrie(data)).map_err(open_err)?;
        Ok(Ipcache { trie })
    }
}

impl IdentitySource for Ipcache {
    fn identity(&self, addr: IpAddr) -> Result<u32, IdentityError> {
        let key = ipcache_key(addr);
        let lpm = LpmKey::new(key.prefixlen, IpcacheData { family: key.family, pad: [0; 3], addr: key.addr });
        match self.trie.get(&lpm, 0) {
            Ok(v) => Ok(v.0.identity),
            Err(MapError::KeyNotFound) => Ok(sluice_abi::SLUICE_IDENTITY_WORLD),
            Err(e) => Err(IdentityError::Lookup { addr, source: Box::new(e) }),
        }
    }
}

/// Every address is world: for a proxy run without the datapath's maps.
pub struct World;

impl IdentitySource for World {
    fn identity(&self, _addr: IpAddr) -> Result<u32, IdentityError> {
        Ok(sluice_abi::SLUICE_IDENTITY_WORLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_key_of_v4_and_v6() {
        let k = ipcache_key("10.244.1.7".parse().unwrap());
        assert_eq!(k.prefixlen, 64, "an IPv4 host key covers family, pad and 32 bits");
        assert_eq!(u32::from(k.family), sluice_abi::SLUICE_AF_INET);
        assert_eq!(&k.addr[..4], &[10, 244, 1, 7]);
        assert_eq!(&k.addr[4..], &[0; 12], "the rest of an IPv4 key is zero");
        let k = ipcache_key("fd00::7".parse().unwrap());
        assert_eq!(k.prefixlen, 160);
        assert_eq!(u32::from(k.family), sluice_abi::SLUICE_AF_INET6);
        let k = ipcache_key("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(u32::from(k.family), sluice_abi::SLUICE_AF_INET, "a v4-mapped address is looked up as IPv4");
    }
}
