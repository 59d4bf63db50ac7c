//! Security identities of addresses, as the datapath sees them: the pinned `ipcache` LPM trie,
//! behind [`IdentitySource`] so the proxy's logic can be tested without maps.

use std::net::IpAddr;
use std::path::Path;

use sluice_datapath::DatapathError;
use thiserror::Error;

/// Failures opening or reading the ipcache.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The pinned map could not be opened or is not an LPM trie of the expected layout.
    #[error("opening the ipcache map {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<DatapathError>,
    },
    /// A lookup failed for another reason than a miss.
    #[error("looking up {addr} in the ipcache: {source}")]
    Lookup {
        addr: IpAddr,
        #[source]
        source: Box<DatapathError>,
    },
}

/// Gives the identity of an address; an address under no prefix is world.
pub trait IdentitySource: Send + Sync {
    fn identity(&self, addr: IpAddr) -> Result<u32, IdentityError>;
}

/// The datapath's pinned `ipcache`.
pub struct Ipcache {
    map: sluice_datapath::PinnedIpcache,
}

impl Ipcache {
    /// Opens `{bpffs}/ipcache`.
    pub fn open(bpffs: &Path) -> Result<Ipcache, IdentityError> {
        let map = sluice_datapath::PinnedIpcache::open(bpffs)
            .map_err(|source| IdentityError::Open { path: bpffs.join("ipcache").display().to_string(), source: Box::new(source) })?;
        Ok(Ipcache { map })
    }
}

impl IdentitySource for Ipcache {
    fn identity(&self, addr: IpAddr) -> Result<u32, IdentityError> {
        match self.map.identity(crate::rules::canonical(addr)) {
            Ok(id) => Ok(id.unwrap_or(sluice_abi::SLUICE_IDENTITY_WORLD)),
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
