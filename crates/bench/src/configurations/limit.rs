//! `limit`: the physical limit on this machine. Client and server namespaces joined by one veth
//! pair, addresses on the link, no node in between: what any pod network adds is measured
//! against this.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use sluice_datapath::netlink::Netlink;
use sluice_datapath::netns;

use super::guard::{Guard, Teardown};
use super::{BuildEnv, Pods, MTU, POD_IFNAME};
use crate::BenchError;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);

pub async fn build(env: &BuildEnv) -> Result<(Pods, Guard), BenchError> {
    let client = env.netns_name("limit-client");
    let server = env.netns_name("limit-server");
    let guard = Guard::new(Teardown::Namespaces(vec![client.clone(), server.clone()]));
    let client_path = netns::create_named_netns(&client)?;
    let server_path = netns::create_named_netns(&server)?;
    // A netlink socket bound in the client's namespace makes the pair there, with the peer
    // created directly in the server's namespace: both ends are the pods' eth0.
    Netlink::in_netns(&client_path)?.create_veth_into(POD_IFNAME, POD_IFNAME, &server_path, MTU).await?;
    configure(&client_path, CLIENT_IP).await?;
    configure(&server_path, SERVER_IP).await?;
    Ok((Pods { client: client_path, server: server_path, server_ip: SERVER_IP, client_cgroup: None, remote: None }, guard))
}

/// Address on eth0 (a /24 on the link: the peer is a neighbour), eth0 and lo up.
async fn configure(netns: &Path, ip: Ipv4Addr) -> Result<(), BenchError> {
    let nl = Netlink::in_netns(netns)?;
    let eth0 = nl.link(POD_IFNAME).await?;
    let net = Ipv4Net::new(ip, 24).map_err(|e| BenchError::Invalid(e.to_string()))?;
    nl.add_address(eth0.index, IpNet::V4(net), false).await?;
    nl.set_up(eth0.index).await?;
    let lo = nl.link("lo").await?;
    nl.set_up(lo.index).await?;
    Ok(())
}
