//! Names and addresses of a lab's parts, derived from the lab name so that several labs (one per
//! test) coexist on one machine: their bridges, root-side veths, namespaces, cgroups and
//! directories never collide.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

/// Where labs keep their state.
pub const LABS_DIR: &str = "/run/sluice/labs";

/// A lab name: 1 to 20 characters of lowercase letters, digits and '-'.
pub fn validate_lab_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid lab name {name:?}: use 1-20 lowercase letters, digits and '-', not at either end"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNames {
    pub lab: String,
    hash: String,
}

impl LabNames {
    pub fn new(lab: &str) -> Self {
        let hash = hex::encode(Sha256::digest(lab.as_bytes()))[..8].to_owned();
        Self { lab: lab.to_owned(), hash }
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(LABS_DIR).join(&self.lab)
    }

    /// The lab's bridge in the root namespace: the underlay.
    pub fn bridge(&self) -> String {
        format!("slb{}", self.hash)
    }

    /// Root-side end of node `index`'s uplink.
    pub fn uplink_root_side(&self, index: usize) -> String {
        format!("sln{}{}", &self.hash[..6], index)
    }

    /// Root-side end of the external client's link.
    pub fn external_root_side(&self) -> String {
        format!("slx{}", &self.hash[..6])
    }

    /// Root-side end of the control-plane host's link.
    pub fn control_plane_root_side(&self) -> String {
        format!("slc{}", &self.hash[..6])
    }

    /// The control-plane host: a namespace on the underlay where the lab's etcd runs.
    pub fn control_plane_netns(&self) -> String {
        format!("sluice-{}-cp", self.lab)
    }

    /// The lab's external client: a namespace on the underlay outside every node, standing for
    /// a machine on the nodes' network (NodePort, external IPs, load-balancer addresses).
    pub fn external_netns(&self) -> String {
        format!("sluice-{}-ext", self.lab)
    }

    pub fn node_name(index: usize) -> String {
        format!("node{index}")
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("sluice-{}-{}", self.lab, node)
    }

    pub fn pod_netns(&self, uid: &str) -> String {
        format!("sluice-{}-pod-{}", self.lab, &uid[..12.min(uid.len())])
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.dir().join("pods").join(uid)
    }
}

/// The node's address on the underlay.
pub fn node_ipv4(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + index as u8)
}

pub fn node_ipv6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 10 + index as u16)
}

/// The external client's underlay addresses.
pub const EXTERNAL_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 250);
pub const EXTERNAL_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0xfa);

/// The control-plane host (the lab's etcd) on the underlay.
pub const CONTROL_PLANE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 240);
pub const CONTROL_PLANE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0xf0);
/// etcd's client port on the control-plane host.
pub const ETCD_CLIENT_PORT: u16 = 2379;

/// Pools the nodes of an etcd lab take their pod CIDRs from (a /24 and a /64 each).
pub const POD_POOL_V4: &str = "198.19.0.0/16";
pub const POD_POOL_V6: &str = "2001:2::/48";

pub const UNDERLAY_V4_PREFIX: u8 = 24;
pub const UNDERLAY_V6_PREFIX: u8 = 64;

/// The node's pod CIDRs: 198.19.<index>.0/24 and 2001:2:0:<index>::/64 (benchmarking ranges,
/// RFC 2544 and RFC 5180, never routed on a real network).
pub fn pod_cidr_v4(index: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 19, index as u8, 0), 24).unwrap_or_default()
}

pub fn pod_cidr_v6(index: usize) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0x2001, 2, 0, index as u16, 0, 0, 0, 0), 64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_differ_between_labs() {
        let a = LabNames::new("test-a");
        let b = LabNames::new("test-b");
        assert!(a.bridge().len() <= 15 && a.uplink_root_side(9).len() <= 15);
        assert_ne!(a.bridge(), b.bridge(), "two labs must not share a bridge");
        assert_ne!(a.uplink_root_side(0), b.uplink_root_side(0));
    }

    #[test]
    fn lab_names_are_checked() {
        assert!(validate_lab_name("default").is_ok());
        assert!(validate_lab_name("Bad").is_err());
        assert!(validate_lab_name("").is_err());
        assert!(validate_lab_name("-x").is_err());
        assert!(validate_lab_name(&"a".repeat(21)).is_err());
    }

    #[test]
    fn node_ranges_are_disjoint() {
        assert_ne!(pod_cidr_v4(0), pod_cidr_v4(1));
        assert_eq!(pod_cidr_v4(1).to_string(), "198.19.1.0/24");
        assert_eq!(pod_cidr_v6(1).to_string(), "2001:2:0:1::/64");
        assert!(!pod_cidr_v4(0).contains(&node_ipv4(0)));
    }
}
