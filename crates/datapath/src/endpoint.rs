//! An endpoint as the datapath's maps hold it, in Rust types, and its conversion to the ABI.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sluice_abi::{endpoint_info, endpoint_key};

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(Mac(out))
    }
}

/// One pod attachment in the datapath: written to `endpoints` once per address and to
/// `endpoint_ifaces` under its host ifindex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub endpoint_id: u32,
    pub host_ifindex: u32,
    pub host_ifname: String,
    pub identity: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The pod interface's MAC.
    pub mac: Mac,
    /// The host side's MAC, which the pod uses as its gateway's.
    pub node_mac: Mac,
}

// === impl EndpointEntry ===

impl EndpointEntry {
    /// The map value, identical under every key of this endpoint.
    pub fn info(&self) -> endpoint_info {
        let mut flags = 0;
        let mut info = endpoint_info {
            ifindex: self.host_ifindex,
            identity: self.identity,
            endpoint_id: self.endpoint_id,
            mac: self.mac.0,
            node_mac: self.node_mac.0,
            ..Default::default()
        };
        if let Some(v4) = self.ipv4 {
            info.ipv4 = v4.octets();
            flags |= sluice_abi::SLUICE_EP_HAS_IPV4;
        }
        if let Some(v6) = self.ipv6 {
            info.ipv6 = v6.octets();
            flags |= sluice_abi::SLUICE_EP_HAS_IPV6;
        }
        info.flags = flags;
        info
    }

    /// Keys of the `endpoints` map: one per address.
    pub fn keys(&self) -> Vec<endpoint_key> {
        let mut keys = Vec::with_capacity(2);
        if let Some(v4) = self.ipv4 {
            keys.push(key_v4(v4));
        }
        if let Some(v6) = self.ipv6 {
            keys.push(key_v6(v6));
        }
        keys
    }
}

pub fn key_v4(addr: Ipv4Addr) -> endpoint_key {
    let mut key = endpoint_key { family: sluice_abi::SLUICE_AF_INET as u8, ..Default::default() };
    key.addr[..4].copy_from_slice(&addr.octets());
    key
}

pub fn key_v6(addr: Ipv6Addr) -> endpoint_key {
    endpoint_key { addr: addr.octets(), family: sluice_abi::SLUICE_AF_INET6 as u8, ..Default::default() }
}

/// The address a key stands for, when it is well formed.
pub fn key_addr(key: &endpoint_key) -> Option<std::net::IpAddr> {
    match key.family as u32 {
        sluice_abi::SLUICE_AF_INET => {
            let b = key.addr;
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into())
        }
        sluice_abi::SLUICE_AF_INET6 => Some(Ipv6Addr::from(key.addr).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EndpointEntry {
        EndpointEntry {
            endpoint_id: 7,
            host_ifindex: 42,
            host_ifname: "lxc0".into(),
            identity: 256,
            ipv4: Some(Ipv4Addr::new(198, 19, 0, 5)),
            ipv6: Some("2001:2::5".parse().unwrap()),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            node_mac: "02:00:00:00:00:02".parse().unwrap(),
        }
    }

    #[test]
    fn info_carries_both_families_and_flags() {
        let info = entry().info();
        assert_eq!(info.ipv4, [198, 19, 0, 5]);
        assert_eq!(info.flags, sluice_abi::SLUICE_EP_HAS_IPV4 | sluice_abi::SLUICE_EP_HAS_IPV6);
        assert_eq!(info.ifindex, 42);
        assert_eq!(info.mac, [2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn keys_round_trip_to_addresses() {
        let e = entry();
        let addrs: Vec<_> = e.keys().iter().filter_map(key_addr).collect();
        assert_eq!(addrs, vec![std::net::IpAddr::from(e.ipv4.unwrap()), e.ipv6.unwrap().into()]);
    }

    #[test]
    fn mac_parse_and_print() {
        let m: Mac = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b".parse::<Mac>().is_err(), "a short MAC must be rejected");
    }
}
