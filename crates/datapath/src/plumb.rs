//! Pod interface plumbing: the veth pair, the pod side's addresses and its routes via the
//! link-local gateway, and the node side's routes to the pod. Programs and maps are the
//! reconciler's business, not this module's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netlink::Netlink;
use crate::netns::{write_sysctl, NetnsGuard};
use crate::{DatapathError, Mac};

/// The pod's IPv4 gateway (answered by the datapath), from the ABI header.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::from_bits(sluice_abi::SLUICE_GATEWAY_IPV4);
/// The pod's IPv6 gateway (answered by the datapath), from the ABI header.
pub const GATEWAY_V6: Ipv6Addr =
    Ipv6Addr::from_bits(((sluice_abi::SLUICE_GATEWAY_IPV6_WORD0 as u128) << 96) | sluice_abi::SLUICE_GATEWAY_IPV6_WORD3 as u128);

#[derive(Debug, Clone)]
pub struct PlumbRequest {
    pub netns: PathBuf,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Host-side interface name (at most 15 bytes, unique on the node).
    pub host_ifname: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plumbed {
    pub host_ifindex: u32,
    pub host_mac: Mac,
    pub pod_mac: Mac,
}

/// Creates (or re-creates) the pod's interface pair and configures both sides. Idempotent: a
/// repeated call first removes what an earlier one left. Same as [`create_pair`] then
/// [`configure_pair`].
pub async fn plumb_endpoint(req: &PlumbRequest) -> Result<Plumbed, DatapathError> {
    let plumbed = create_pair(req).await?;
    configure_pair(req).await?;
    Ok(plumbed)
}

/// Step one: the veth pair, the pod end made directly in the pod's namespace. After this the
/// host end exists (programs can be attached to it, its ifindex and both MACs are known) but
/// nothing is up.
pub async fn create_pair(req: &PlumbRequest) -> Result<Plumbed, DatapathError> {
    let node = Netlink::current()?;
    node.delete_link(&req.host_ifname).await?;
    node.create_veth_into(&req.host_ifname, &req.ifname, &req.netns, req.mtu).await?;
    let found = async {
        let host = node.link(&req.host_ifname).await?;
        let pod = Netlink::in_netns(&req.netns)?.link(&req.ifname).await?;
        Ok::<_, DatapathError>(Plumbed { host_ifindex: host.index, host_mac: host.mac, pod_mac: pod.mac })
    };
    match found.await {
        Ok(p) => Ok(p),
        Err(e) => {
            let _ = node.delete_link(&req.host_ifname).await;
            Err(e)
        }
    }
}

/// Step two: addresses and routes in the pod, routes and neighbours to the pod on the node,
/// both ends up. Removes the pair when it fails.
pub async fn configure_pair(req: &PlumbRequest) -> Result<(), DatapathError> {
    let node = Netlink::current()?;
    let result = configure(&node, req).await;
    if result.is_err() {
        let _ = node.delete_link(&req.host_ifname).await;
    }
    result
}

async fn configure(node: &Netlink, req: &PlumbRequest) -> Result<(), DatapathError> {
    let host = node.link(&req.host_ifname).await?;
    let pod = Netlink::in_netns(&req.netns)?;
    let peer = pod.link(&req.ifname).await?;
    {
        // Duplicate address detection would hold the link-local address tentative for a
        // second, and with it the first neighbour solicitation for the gateway.
        let _ns = NetnsGuard::enter(&req.netns)?;
        if req.ipv6.is_some() {
            write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", req.ifname), "0")?;
        }
    }
    pod.set_up(peer.index).await?;
    if let Some(lo) = pod.link_by_name("lo").await? {
        pod.set_up(lo.index).await?;
    }
    if let Some(v4) = req.ipv4 {
        pod.add_address(peer.index, IpNet::V4(Ipv4Net::from(v4)), false).await?;
        pod.add_route(IpNet::V4(Ipv4Net::from(GATEWAY_V4)), None, peer.index).await?;
        pod.add_route(IpNet::V4(Ipv4Net::default()), Some(IpAddr::V4(GATEWAY_V4)), peer.index).await?;
    }
    if let Some(v6) = req.ipv6 {
        pod.add_address(peer.index, IpNet::V6(Ipv6Net::from(v6)), true).await?;
        pod.add_route(IpNet::V6(Ipv6Net::default()), Some(IpAddr::V6(GATEWAY_V6)), peer.index).await?;
    }

    node.set_up(host.index).await?;
    for addr in [req.ipv4.map(IpAddr::V4), req.ipv6.map(IpAddr::V6)].into_iter().flatten() {
        node.add_route(IpNet::from(addr), None, host.index).await?;
        node.add_neighbour(host.index, addr, peer.mac).await?;
    }
    Ok(())
}

/// Removes the pod's interface pair from the node side (routes and neighbours go with it).
/// Returns whether there was anything to remove.
pub async fn unplumb_endpoint(host_ifname: &str) -> Result<bool, DatapathError> {
    Netlink::current()?.delete_link(host_ifname).await
}

/// Checks that the pod side still carries its addresses: for CNI CHECK.
pub async fn check_endpoint(req: &PlumbRequest) -> Result<(), String> {
    let node = Netlink::current().map_err(|e| e.to_string())?;
    match node.link_by_name(&req.host_ifname).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(format!("host interface {} is missing", req.host_ifname)),
        Err(e) => return Err(e.to_string()),
    }
    let pod = Netlink::in_netns(&req.netns).map_err(|e| e.to_string())?;
    let link = pod.link(&req.ifname).await.map_err(|e| e.to_string())?;
    let addrs = pod.addresses(link.index).await.map_err(|e| e.to_string())?;
    for want in [req.ipv4.map(IpAddr::V4), req.ipv6.map(IpAddr::V6)].into_iter().flatten() {
        if !addrs.contains(&want) {
            return Err(format!("address {want} is missing from {} in the pod", req.ifname));
        }
    }
    Ok(())
}
