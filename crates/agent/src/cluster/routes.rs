//! Routes between nodes: each other node's pod CIDRs via that node's address on the shared
//! network (native routing), out of the device that reaches it. Computed from the node records
//! and applied as a diff against the routes the agent owns (tagged with its route protocol),
//! so a vanished node's routes go and nothing else is touched.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use sluice_datapath::netlink::{Netlink, NodeRoute};
use sluice_state::NodeRecord;

use crate::error::AgentError;

/// What one reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteReport {
    pub added: Vec<NodeRoute>,
    pub removed: Vec<NodeRoute>,
}

/// The routes this node wants: for every other node, each pod CIDR via that node's address of
/// the same family that lies in one of `local_networks` (the networks of this node's devices,
/// with the device's index).
pub fn desired_routes<'a>(
    me: &str,
    nodes: impl IntoIterator<Item = &'a NodeRecord>,
    local_networks: &[(IpNet, u32)],
) -> BTreeSet<NodeRoute> {
    let mut out = BTreeSet::new();
    for node in nodes.into_iter().filter(|n| n.name != me) {
        for cidr in &node.pod_cidrs {
            let via = node
                .addresses
                .iter()
                .filter(|a| a.is_ipv4() == cidr.addr().is_ipv4() && !is_link_local(a))
                .find_map(|a| local_networks.iter().find(|(net, _)| net.contains(a)).map(|(_, oif)| (*a, *oif)));
            if let Some((gateway, oif)) = via {
                out.insert(NodeRoute { destination: *cidr, gateway, oif });
            }
        }
    }
    out
}

/// Brings the agent's routes to `desired`.
pub async fn reconcile(desired: &BTreeSet<NodeRoute>) -> Result<RouteReport, AgentError> {
    let nl = Netlink::current()?;
    let actual: BTreeSet<NodeRoute> = nl.sluice_routes().await?.into_iter().collect();
    let mut report = RouteReport::default();
    for route in desired.difference(&actual) {
        nl.add_sluice_route(route).await?;
        report.added.push(route.clone());
    }
    for route in actual.difference(desired) {
        nl.delete_sluice_route(route).await?;
        report.removed.push(route.clone());
    }
    Ok(report)
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addrs: &[&str], cidrs: &[&str]) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            host_routing: "bpf".into(),
            health: "ready".into(),
            agent_version: String::new(),
            registered: String::new(),
        }
    }

    #[test]
    fn other_nodes_pod_cidrs_go_via_their_address_on_a_shared_network() {
        let nodes = [
            node("a", &["198.18.0.10", "fd00:18::10"], &["198.19.0.0/24", "fd00:19::/112"]),
            node("b", &["198.18.0.11", "fd00:18::11", "fe80::1"], &["198.19.1.0/24", "fd00:19::1:0/112"]),
            node("c", &["203.0.113.5"], &["198.19.2.0/24"]),
        ];
        let local = [("198.18.0.0/15".parse().unwrap(), 7), ("fd00:18::/64".parse().unwrap(), 7)];
        let routes = desired_routes("a", &nodes, &local);
        let want: BTreeSet<NodeRoute> = [
            NodeRoute { destination: "198.19.1.0/24".parse().unwrap(), gateway: "198.18.0.11".parse().unwrap(), oif: 7 },
            NodeRoute { destination: "fd00:19::1:0/112".parse().unwrap(), gateway: "fd00:18::11".parse().unwrap(), oif: 7 },
        ]
        .into();
        assert_eq!(routes, want, "own CIDRs skipped, b's via its shared-network addresses, c unreachable (no shared network)");
    }

    #[test]
    fn no_nodes_no_routes() {
        assert!(desired_routes("a", &[], &[("198.18.0.0/15".parse().unwrap(), 1)]).is_empty());
    }
}
