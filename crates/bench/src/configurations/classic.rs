//! `classic` and `classic-nft`: the classic CNI datapath. A node namespace where Debian's
//! containernetworking plugins (`bridge` + `host-local`) are called for each pod exactly as a
//! runtime calls them, with the usual bridge configuration, and kube-proxy-style rules on top:
//! iptables (`classic`) or nftables (`classic-nft`). Pods on the bridge reach each other at L2;
//! br_netfilter hands each frame to netfilter and conntrack.
//! A second node, the same again with its own pod subnet, holds the server of the cross-node
//! workload; the nodes route each other's pod subnet over a link between them, as flannel's
//! host-gw or Calico without overlay do.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_datapath::netlink::Netlink;
use sluice_datapath::netns;

use super::guard::{self, Guard, Teardown};
use super::{kube_proxy, kube_proxy_nft, BuildEnv, Pods, MTU, POD_IFNAME};
use crate::process::{self, in_netns, Place};
use crate::BenchError;

/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Which of kube-proxy's modes writes the node's service rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    Iptables,
    Nftables,
}

/// What the classic configuration made, for its teardown.
#[derive(Debug, Clone)]
pub struct Made {
    nodes: Vec<MadeNode>,
    ipam_dir: PathBuf,
}

/// One node: its namespace, network configuration and (namespace name, container ID) of each pod.
#[derive(Debug, Clone)]
struct MadeNode {
    netns: String,
    config: String,
    pods: Vec<(String, String)>,
}

/// The two nodes' pod subnets and their addresses on the link between them.
const POD_SUBNETS: [&str; 2] = ["198.19.0.0/24", "198.19.1.0/24"];
const NODE_LINK_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 255, 1), Ipv4Addr::new(198, 18, 255, 2)];
const NODE_LINK: &str = "node-link";

/// The classic nodes as the checks see them: node0 (client and server pods) and node1 (the
/// cross-node server).
#[derive(Debug, Clone)]
pub struct ClassicNodes {
    pub node0: PathBuf,
    pub node1: PathBuf,
}

pub async fn build(env: &BuildEnv, proxy: Proxy) -> Result<(Pods, ClassicNodes, Guard), BenchError> {
    // Both flavours may run side by side: each has namespaces and IPAM state of its own.
    let kind = match proxy {
        Proxy::Iptables => "classic",
        Proxy::Nftables => "classic-nft",
    };
    let ipam_dir = env.work_dir.join(format!("{kind}-ipam"));
    let pod = |name: &str| {
        let ns = env.netns_name(&format!("{kind}-{name}"));
        let id = container_id(&ns);
        (ns, id)
    };
    let made = Made {
        nodes: vec![
            MadeNode {
                netns: env.netns_name(&format!("{kind}-node")),
                config: network_config(&ipam_dir.join("node0"), POD_SUBNETS[0]),
                pods: vec![pod("client"), pod("server")],
            },
            MadeNode {
                netns: env.netns_name(&format!("{kind}-node1")),
                config: network_config(&ipam_dir.join("node1"), POD_SUBNETS[1]),
                pods: vec![pod("remote")],
            },
        ],
        ipam_dir,
    };
    let guard = Guard::new(Teardown::Classic(made.clone()));
    let mut paths = Vec::new();
    let mut ips = Vec::new();
    for node in &made.nodes {
        let node_path = node_namespace(&node.netns).await?;
        for (pod, id) in &node.pods {
            let pod_path = netns::create_named_netns(pod)?;
            let result = cni(&node_path, "ADD", id, &pod_path, &node.config).await?;
            ips.push(
                first_ipv4(&result).ok_or_else(|| BenchError::tool("bridge", format!("ADD for {pod} gave no IPv4 address: {result}")))?,
            );
        }
        // Every node runs kube-proxy: the same rules on both.
        let services = kube_proxy::SERVICES.list();
        match proxy {
            Proxy::Iptables => kube_proxy::install(&node_path, &kube_proxy::rules(&services)).await?,
            Proxy::Nftables => {
                kube_proxy_nft::install(&node_path, &kube_proxy_nft::ruleset(&services, None)).await?;
                kube_proxy_nft::check_alone(&node_path).await?;
            }
        }
        paths.push(node_path);
    }
    link_nodes(&paths[0], &paths[1]).await?;
    let (Some(&server_ip), Some(&remote_ip)) = (ips.get(1), ips.get(2)) else {
        return Err(BenchError::Check(format!("the classic nodes have pods {ips:?}, three expected")));
    };
    let pods = Pods {
        client: netns::named_netns_path(&made.nodes[0].pods[0].0),
        server: netns::named_netns_path(&made.nodes[0].pods[1].0),
        server_ip,
        client_cgroup: None,
        remote: Some(super::Remote { netns: netns::named_netns_path(&made.nodes[1].pods[0].0), ip: remote_ip }),
    };
    Ok((pods, ClassicNodes { node0: paths[0].clone(), node1: paths[1].clone() }, guard))
}

/// A node namespace with lo up, forwarding on, and br_netfilter handing bridged frames to
/// iptables, as Kubernetes nodes with the bridge plugin need (services and policy would not
/// work otherwise).
async fn node_namespace(name: &str) -> Result<PathBuf, BenchError> {
    let node_path = netns::create_named_netns(name)?;
    let nl = Netlink::in_netns(&node_path)?;
    let lo = nl.link("lo").await?;
    nl.set_up(lo.index).await?;
    in_netns(&node_path, || {
        netns::write_sysctl("net/ipv4/ip_forward", "1")?;
        netns::write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
            .map_err(|e| BenchError::Check(format!("br_netfilter is not available (modprobe br_netfilter): {e}")))
    })
    .await?;
    Ok(node_path)
}

/// A veth pair between the two nodes, a /30 on it, and each node's route to the other's pod
/// subnet through it.
async fn link_nodes(node0: &Path, node1: &Path) -> Result<(), BenchError> {
    Netlink::in_netns(node0)?.create_veth_into(NODE_LINK, NODE_LINK, node1, MTU).await?;
    for (i, (here, other)) in [(node0, 1usize), (node1, 0usize)].into_iter().enumerate() {
        let nl = Netlink::in_netns(here)?;
        let link = nl.link(NODE_LINK).await?;
        let net = Ipv4Net::new(NODE_LINK_IPS[i], 30).map_err(|e| BenchError::Invalid(e.to_string()))?;
        nl.add_address(link.index, IpNet::V4(net), true).await?;
        nl.set_up(link.index).await?;
        let subnet: IpNet = POD_SUBNETS[other].parse().map_err(|e| BenchError::Invalid(format!("{e}")))?;
        nl.add_route(subnet, Some(IpAddr::V4(NODE_LINK_IPS[other])), link.index).await?;
    }
    Ok(())
}

/// Removes what [`build`] made: CNI DEL for each pod (the plugin's own cleanup), then the
/// namespaces (the bridges and veths go with the nodes') and the IPAM directory.
pub async fn remove(made: Made) -> Result<(), BenchError> {
    let mut first: Option<BenchError> = None;
    let mut names = Vec::new();
    for node in &made.nodes {
        let node_path = netns::named_netns_path(&node.netns);
        if node_path.exists() {
            for (pod, id) in &node.pods {
                let pod_path = netns::named_netns_path(pod);
                if let Err(e) = cni(&node_path, "DEL", id, &pod_path, &node.config).await {
                    first.get_or_insert(e);
                }
            }
        }
        names.extend(node.pods.iter().map(|(p, _)| p.clone()));
        names.push(node.netns.clone());
    }
    for result in [guard::delete_namespaces(&names), guard::remove_dir(&made.ipam_dir)] {
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The usual bridge configuration of a Kubernetes node, with no masquerade (lab traffic never
/// leaves the lab) and the pods' default route to the node, which routes nowhere else.
fn network_config(ipam_dir: &Path, subnet: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench-classic",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": MTU,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })
    .to_string()
}

/// One plugin call as containerd makes it: in the node's namespace, CNI_* variables, the
/// configuration on stdin.
async fn cni(node: &Path, command: &str, container_id: &str, pod: &Path, config: &str) -> Result<serde_json::Value, BenchError> {
    let plugin = Path::new(CNI_BIN_DIR).join("bridge");
    if !plugin.is_file() {
        return Err(BenchError::MissingTool { tool: plugin.display().to_string(), package: "containernetworking-plugins" });
    }
    let place = Place::node(node);
    let mut cmd = process::command(&plugin, &[], &place)?;
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", CNI_BIN_DIR);
    let out = process::output(cmd, &format!("bridge CNI {command}"), Some(config), Duration::from_secs(30)).await?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&out).map_err(|e| BenchError::tool("bridge", format!("printed invalid JSON ({e}): {out}")))
}

fn first_ipv4(result: &serde_json::Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
}

/// 64 hex digits, as runtimes make container IDs: the SHA-256 of the pod's namespace name.
fn container_id(pod: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(pod.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_configuration_never_masquerades() {
        let config: serde_json::Value = serde_json::from_str(&network_config(Path::new("/run/x"), "198.19.1.0/24")).unwrap();
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["ipMasq"], false, "lab traffic must not be masqueraded");
        assert_eq!(config["isGateway"], true);
        assert_eq!(config["hairpinMode"], true);
        assert_eq!(config["ipam"]["dataDir"], "/run/x", "IPAM state stays in the run's directory");
        assert_eq!(config["ipam"]["ranges"][0][0]["subnet"], "198.19.1.0/24", "each node its own pod subnet");
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        let id = container_id("sluice-bench-1-classic-client");
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn the_longest_pod_names_keep_distinct_container_ids() {
        let names = ["client", "server", "remote"].map(|p| container_id(&format!("sluice-bench-99999-classic-nft-{p}")));
        assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2], "every pod its own ID: {names:?}");
    }

    #[test]
    fn the_pod_address_comes_from_the_result() {
        let result = serde_json::json!({"ips": [{"interface": 2, "address": "198.19.0.3/24", "gateway": "198.19.0.1"}]});
        assert_eq!(first_ipv4(&result), Some(Ipv4Addr::new(198, 19, 0, 3)));
    }
}
