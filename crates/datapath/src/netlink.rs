//! rtnetlink in the words the agent and the lab need: links, addresses, routes and neighbours,
//! in the current network namespace or in another one.

use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlag};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo as NlLinkInfo, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::Handle;

use crate::netns::NetnsGuard;
use crate::{DatapathError, Mac};

/// What the agent needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    /// The link's kind (`veth`, `bridge`, ...); `None` for a physical device.
    pub kind: Option<String>,
}

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

// === impl Netlink ===

impl Netlink {
    /// A connection in the calling thread's namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, DatapathError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| DatapathError::os("opening netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection in the namespace at `path`: the socket is opened inside it and stays bound
    /// to it. Needs a tokio runtime.
    pub fn in_netns(path: &Path) -> Result<Self, DatapathError> {
        let guard = NetnsGuard::enter(path)?;
        let made = rtnetlink::new_connection();
        drop(guard);
        let (conn, handle, _) = made.map_err(|e| DatapathError::os(format!("opening netlink socket in {}", path.display()), e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, DatapathError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(DatapathError::netlink(format!("getting link {name}"), e)),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, DatapathError> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links.try_next().await.map_err(|e| DatapathError::netlink("listing links", e))? {
            out.push(link_info(&msg));
        }
        Ok(out)
    }

    pub async fn link(&self, name: &str) -> Result<LinkInfo, DatapathError> {
        self.link_by_name(name).await?.ok_or_else(|| DatapathError::NoSuchInterface(name.to_owned()))
    }

    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .add()
            .veth(name.to_owned(), peer.to_owned())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("creating veth {name}/{peer}"), e))
    }

    /// Creates a veth pair whose `pod` end is made directly inside the namespace at `netns`
    /// (as `ip link add HOST type veth peer name POD netns NS`), both ends with `mtu`, both
    /// down. Making the end in place avoids moving a device between namespaces, which waits
    /// for an RCU grace period.
    pub async fn create_veth_into(&self, host: &str, pod: &str, netns: &Path, mtu: u32) -> Result<(), DatapathError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(netns).map_err(|e| DatapathError::os(format!("opening netns {}", netns.display()), e))?;
        // rtnetlink's veth(a, b) names the request's own link b and the peer a: here the request
        // makes the pod end (with the namespace attribute) and its peer is the host end.
        let mut req = self.handle.link().add().veth(host.to_owned(), pod.to_owned());
        let msg = req.message_mut();
        msg.header.flags.clear();
        msg.header.change_mask.clear();
        msg.attributes.push(LinkAttribute::NetNsFd(file.as_raw_fd()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        for attr in msg.attributes.iter_mut() {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos.iter_mut() {
                    if let NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                        peer.attributes.push(LinkAttribute::Mtu(mtu));
                    }
                }
            }
        }
        req.execute().await.map_err(|e| DatapathError::netlink(format!("creating veth {host} with {pod} in {}", netns.display()), e))
    }

    pub async fn create_bridge(&self, name: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .add()
            .bridge(name.to_owned())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("creating bridge {name}"), e))
    }

    pub async fn delete_link(&self, name: &str) -> Result<bool, DatapathError> {
        let Some(link) = self.link_by_name(name).await? else { return Ok(false) };
        let mut link_handle = self.handle.link();
        match link_handle.del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(DatapathError::netlink(format!("deleting link {name}"), e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<(), DatapathError> {
        self.handle.link().set(index).up().execute().await.map_err(|e| DatapathError::netlink(format!("setting link {index} up"), e))
    }

    pub async fn set_name(&self, index: u32, name: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(index)
            .name(name.to_owned())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("renaming link {index} to {name}"), e))
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<(), DatapathError> {
        self.handle
            .link()
            .set(index)
            .controller(master)
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("attaching link {index} to {master}"), e))
    }

    /// Moves a link into the namespace at `netns`.
    pub async fn move_to_netns(&self, index: u32, netns: &Path) -> Result<(), DatapathError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(netns).map_err(|e| DatapathError::os(format!("opening netns {}", netns.display()), e))?;
        self.handle
            .link()
            .set(index)
            .setns_by_fd(file.as_raw_fd())
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("moving link {index} to {}", netns.display()), e))
    }

    /// Adds an address; `nodad` skips IPv6 duplicate address detection (the agent's IPAM
    /// already guarantees uniqueness, and a tentative address would delay the pod's start).
    pub async fn add_address(&self, index: u32, addr: IpNet, nodad: bool) -> Result<(), DatapathError> {
        let mut req = self.handle.address().add(index, addr.addr(), addr.prefix_len());
        if nodad && addr.addr().is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
        }
        req.execute().await.map_err(|e| DatapathError::netlink(format!("adding address {addr} to link {index}"), e))
    }

    /// Adds (or replaces) a route to `dst` out of `oif`, via `gateway` or directly on the link.
    pub async fn add_route(&self, dst: IpNet, gateway: Option<IpAddr>, oif: u32) -> Result<(), DatapathError> {
        let action = format!("adding route {dst} via {gateway:?} dev {oif}");
        let base = self.handle.route().add().output_interface(oif);
        let base = if gateway.is_none() { base.scope(RouteScope::Link) } else { base };
        // `replace` after the family: choosing one starts a new request without it.
        let result = match (dst, gateway) {
            (IpNet::V4(d), gw) => {
                let mut r = base.v4().replace().destination_prefix(d.addr(), d.prefix_len());
                if let Some(IpAddr::V4(g)) = gw {
                    r = r.gateway(g);
                }
                r.execute().await
            }
            (IpNet::V6(d), gw) => {
                let mut r = base.v6().replace().destination_prefix(d.addr(), d.prefix_len());
                if let Some(IpAddr::V6(g)) = gw {
                    r = r.gateway(g);
                }
                r.execute().await
            }
        };
        result.map_err(|e| DatapathError::netlink(action, e))
    }

    /// Adds (or replaces) a route to another node's pod CIDR, tagged with [`SLUICE_ROUTE_PROTOCOL`]
    /// so that [`Netlink::sluice_routes`] finds exactly the routes the agent owns.
    pub async fn add_sluice_route(&self, route: &NodeRoute) -> Result<(), DatapathError> {
        let action = format!("adding route {} via {} dev {}", route.destination, route.gateway, route.oif);
        let base = self.handle.route().add().output_interface(route.oif).protocol(RouteProtocol::Other(SLUICE_ROUTE_PROTOCOL));
        // `replace` after the family: choosing one starts a new request without it.
        let result = match (route.destination, route.gateway) {
            (IpNet::V4(d), IpAddr::V4(g)) => base.v4().replace().destination_prefix(d.addr(), d.prefix_len()).gateway(g).execute().await,
            (IpNet::V6(d), IpAddr::V6(g)) => base.v6().replace().destination_prefix(d.addr(), d.prefix_len()).gateway(g).execute().await,
            _ => return Err(DatapathError::netlink(action, rtnetlink::Error::RequestFailed)),
        };
        result.map_err(|e| DatapathError::netlink(action, e))
    }

    /// The routes the agent added ([`SLUICE_ROUTE_PROTOCOL`]), both families, main table.
    pub async fn sluice_routes(&self) -> Result<Vec<NodeRoute>, DatapathError> {
        let mut out = Vec::new();
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut stream = self.handle.route().get(version).execute();
            while let Some(msg) = stream.try_next().await.map_err(|e| DatapathError::netlink("listing routes", e))? {
                if msg.header.protocol != RouteProtocol::Other(SLUICE_ROUTE_PROTOCOL) {
                    continue;
                }
                if let Some(route) = node_route(&msg) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Removes a route the agent added.
    pub async fn delete_sluice_route(&self, route: &NodeRoute) -> Result<(), DatapathError> {
        let action = format!("deleting route {} via {}", route.destination, route.gateway);
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut stream = self.handle.route().get(version).execute();
            while let Some(msg) = stream.try_next().await.map_err(|e| DatapathError::netlink(action.clone(), e))? {
                if msg.header.protocol == RouteProtocol::Other(SLUICE_ROUTE_PROTOCOL) && node_route(&msg).as_ref() == Some(route) {
                    return self.handle.route().del(msg).execute().await.map_err(|e| DatapathError::netlink(action, e));
                }
            }
        }
        Ok(())
    }

    /// The node's policy routing for the layer-7 proxy, both families: packets marked
    /// `SLUICE_MARK_TO_PROXY` are delivered locally whatever their destination (a rule to
    /// [`PROXY_ROUTE_TABLE`], which holds one `local` default route on the loopback device).
    /// Idempotent: what is already there is left as it is.
    pub async fn ensure_proxy_routing(&self) -> Result<(), DatapathError> {
        let lo = self.link("lo").await?.index;
        let mark = sluice_abi::SLUICE_MARK_TO_PROXY;
        let mask = sluice_abi::SLUICE_MARK_MASK;
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let v6 = version == rtnetlink::IpVersion::V6;
            let family = if v6 { "IPv6" } else { "IPv4" };
            let mut present = false;
            let mut rules = self.handle.rule().get(version.clone()).execute();
            while let Some(rule) = rules.try_next().await.map_err(|e| DatapathError::netlink(format!("listing {family} rules"), e))? {
                let has = |a: &RuleAttribute| rule.attributes.contains(a);
                present |=
                    has(&RuleAttribute::FwMark(mark)) && has(&RuleAttribute::FwMask(mask)) && has(&RuleAttribute::Table(PROXY_ROUTE_TABLE));
            }
            if !present {
                let base = self
                    .handle
                    .rule()
                    .add()
                    .fw_mark(mark)
                    .table_id(PROXY_ROUTE_TABLE)
                    .priority(PROXY_RULE_PRIORITY)
                    .action(RuleAction::ToTable);
                let result = if v6 {
                    let mut rule = base.v6();
                    rule.message_mut().attributes.push(RuleAttribute::FwMask(mask));
                    rule.execute().await
                } else {
                    let mut rule = base.v4();
                    rule.message_mut().attributes.push(RuleAttribute::FwMask(mask));
                    rule.execute().await
                };
                result.map_err(|e| DatapathError::netlink(format!("adding the proxy's {family} rule"), e))?;
            }
            let route =
                self.handle.route().add().output_interface(lo).table_id(PROXY_ROUTE_TABLE).kind(RouteType::Local).scope(RouteScope::Host);
            // `replace` after the family: choosing one starts a new request without it.
            let result = if v6 {
                route.v6().replace().destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0).execute().await
            } else {
                route.v4().replace().destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0).execute().await
            };
            result.map_err(|e| DatapathError::netlink(format!("adding the proxy's {family} local route"), e))?;
        }
        Ok(())
    }

    /// A permanent neighbour entry: the node knows the pod's MAC without asking.
    pub async fn add_neighbour(&self, index: u32, ip: IpAddr, mac: Mac) -> Result<(), DatapathError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_local_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| DatapathError::netlink(format!("adding neighbour {ip} on link {index}"), e))
    }

    /// The networks of a link's addresses (address with its prefix length).
    pub async fn networks(&self, index: u32) -> Result<Vec<IpNet>, DatapathError> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) =
            stream.try_next().await.map_err(|e| DatapathError::netlink(format!("listing addresses of link {index}"), e))?
        {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(a) = attr {
                    if let Ok(net) = IpNet::new(*a, msg.header.prefix_len) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, DatapathError> {
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) =
            stream.try_next().await.map_err(|e| DatapathError::netlink(format!("listing addresses of link {index}"), e))?
        {
            for attr in msg.attributes {
                if let AddressAttribute::Address(a) = attr {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }
}

/// The route protocol number that marks routes the agent owns (`ip route show proto 197`);
/// above the kernel's and routing daemons' numbers.
pub const SLUICE_ROUTE_PROTOCOL: u8 = 197;

/// The routing table of the layer-7 proxy's `local` default routes (the mark's value).
pub const PROXY_ROUTE_TABLE: u32 = 0x5100;
/// Priority of the rule that sends marked packets there: after the `local` table's rule (0),
/// long before `main` (32766).
pub const PROXY_RULE_PRIORITY: u32 = 100;

/// A route to another node's pod CIDR via that node's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub destination: IpNet,
    pub gateway: IpAddr,
    pub oif: u32,
}

fn node_route(msg: &RouteMessage) -> Option<NodeRoute> {
    let (mut dst, mut gw, mut oif) = (None, None, None);
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = addr(a),
            RouteAttribute::Gateway(a) => gw = addr(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let destination = IpNet::new(dst?, msg.header.destination_prefix_length).ok()?;
    Some(NodeRoute { destination, gateway: gw?, oif: oif? })
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo { index: msg.header.index, name: String::new(), mac: Mac::default(), mtu: 0, kind: None };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(kind) = i {
                        info.kind = Some(kind.to_string());
                    }
                }
            }
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(a);
                info.mac = Mac(m);
            }
            _ => {}
        }
    }
    info
}
