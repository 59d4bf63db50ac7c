//! The lab's network: a bridge in the root namespace as the underlay (no address there, so the
//! machine itself is not on it), and one namespace per node with an uplink veth on the bridge.
//! Nodes route each other's pod CIDRs over the underlay; nothing routes anywhere else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_datapath::netlink::Netlink;
use sluice_datapath::netns::{self, NetnsGuard};

use crate::names::{self, LabNames};
use crate::LabError;

/// Creates the bridge; IPv6 is disabled on it so the root namespace gets no link-local address
/// on the lab's wire.
pub async fn create_bridge(names: &LabNames) -> Result<String, LabError> {
    let root = Netlink::current()?;
    let bridge = names.bridge();
    root.delete_link(&bridge).await?;
    root.create_bridge(&bridge).await?;
    let _ = netns::write_sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "1");
    let link = root.link(&bridge).await?;
    root.set_up(link.index).await?;
    Ok(bridge)
}

/// A host on the underlay: namespace `netns_name` with one link, `eth0`, whose other end
/// (`outer`, in the root namespace) is a port of the lab's bridge, with the given addresses.
/// Returns a netlink handle in the namespace and eth0's index.
async fn underlay_host(names: &LabNames, netns_name: &str, outer: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<(Netlink, u32), LabError> {
    let root = Netlink::current()?;
    let path = netns::create_named_netns(netns_name)?;
    let tmp = format!("{outer}p");
    root.delete_link(outer).await?;
    root.create_veth(outer, &tmp).await?;
    let bridge = root.link(&names.bridge()).await?;
    let outer_link = root.link(outer).await?;
    root.set_master(outer_link.index, bridge.index).await?;
    root.set_up(outer_link.index).await?;
    let inner = root.link(&tmp).await?;
    root.move_to_netns(inner.index, &path).await?;

    let host = Netlink::in_netns(&path)?;
    let link = host.link(&tmp).await?;
    host.set_name(link.index, "eth0").await?;
    {
        let _ns = NetnsGuard::enter(&path)?;
        netns::write_sysctl("net/ipv6/conf/eth0/accept_dad", "0")?;
    }
    host.set_up(link.index).await?;
    if let Some(lo) = host.link_by_name("lo").await? {
        host.set_up(lo.index).await?;
    }
    let invalid = |e: ipnet::PrefixLenError| LabError::Invalid(e.to_string());
    host.add_address(link.index, IpNet::V4(Ipv4Net::new(v4, names::UNDERLAY_V4_PREFIX).map_err(invalid)?), false).await?;
    host.add_address(link.index, IpNet::V6(Ipv6Net::new(v6, names::UNDERLAY_V6_PREFIX).map_err(invalid)?), true).await?;
    Ok((host, link.index))
}

/// Creates node `index`: its namespace, uplink (eth0) with underlay addresses, and routes to the
/// pod CIDRs of the other `nodes - 1` nodes via their uplink addresses.
pub async fn create_node(names: &LabNames, index: usize, nodes: usize, netns_name: &str) -> Result<(), LabError> {
    let (node, uplink) =
        underlay_host(names, netns_name, &names.uplink_root_side(index), names::node_ipv4(index), names::node_ipv6(index)).await?;
    for other in (0..nodes).filter(|o| *o != index) {
        node.add_route(IpNet::V4(names::pod_cidr_v4(other)), Some(IpAddr::V4(names::node_ipv4(other))), uplink).await?;
        node.add_route(IpNet::V6(names::pod_cidr_v6(other)), Some(IpAddr::V6(names::node_ipv6(other))), uplink).await?;
    }
    Ok(())
}

/// Creates the external client: a namespace with one link on the underlay and its default
/// routes via node 0, so that service addresses outside the underlay (external IPs,
/// load-balancer addresses) reach the cluster as they would from a router. The namespace has no
/// other link: nothing it sends can leave the lab.
pub async fn create_external(names: &LabNames, netns_name: &str) -> Result<(), LabError> {
    let (ext, link) = underlay_host(names, netns_name, &names.external_root_side(), names::EXTERNAL_IPV4, names::EXTERNAL_IPV6).await?;
    let any4 = IpNet::V4(Ipv4Net::default());
    let any6 = IpNet::V6(Ipv6Net::default());
    ext.add_route(any4, Some(IpAddr::V4(names::node_ipv4(0))), link).await?;
    ext.add_route(any6, Some(IpAddr::V6(names::node_ipv6(0))), link).await?;
    Ok(())
}

/// Creates the control-plane host: a namespace with one link on the underlay and no routes
/// beyond it, where the lab's etcd listens.
pub async fn create_control_plane(names: &LabNames, netns_name: &str) -> Result<(), LabError> {
    underlay_host(names, netns_name, &names.control_plane_root_side(), names::CONTROL_PLANE_IPV4, names::CONTROL_PLANE_IPV6).await?;
    Ok(())
}

/// Removes a node's uplink and namespace; what is already gone is skipped.
pub async fn delete_node(uplink_root_side: &str, netns_name: &str) -> Result<(), LabError> {
    Netlink::current()?.delete_link(uplink_root_side).await?;
    netns::delete_named_netns(netns_name)?;
    Ok(())
}

pub async fn delete_bridge(bridge: &str) -> Result<(), LabError> {
    Netlink::current()?.delete_link(bridge).await?;
    Ok(())
}
