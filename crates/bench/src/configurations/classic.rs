//! `classic` and `classic-nft`: the classic CNI datapath. A node namespace where Debian's
//! containernetworking plugins (`bridge` + `host-local`) are called for each pod exactly as a
//! runtime calls them, with the usual bridge configuration, and kube-proxy-style rules on top:
//! iptables (`classic`) or nftables (`classic-nft`). Pods on the bridge reach each other at L2;
//! br_netfilter hands each frame to netfilter and conntrack.

use std::net::Ipv4Addr;
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
    node: String,
    /// (namespace name, container ID) of each pod.
    pods: Vec<(String, String)>,
    ipam_dir: PathBuf,
    config: String,
}

pub async fn build(env: &BuildEnv, proxy: Proxy) -> Result<(Pods, PathBuf, Guard), BenchError> {
    // Both flavours may run side by side: each has namespaces and IPAM state of its own.
    let kind = match proxy {
        Proxy::Iptables => "classic",
        Proxy::Nftables => "classic-nft",
    };
    let node = env.netns_name(&format!("{kind}-node"));
    let client = env.netns_name(&format!("{kind}-client"));
    let server = env.netns_name(&format!("{kind}-server"));
    let ipam_dir = env.work_dir.join(format!("{kind}-ipam"));
    let config = network_config(&ipam_dir);
    let made = Made {
        node: node.clone(),
        pods: vec![(client.clone(), container_id(&client)), (server.clone(), container_id(&server))],
        ipam_dir,
        config: config.clone(),
    };
    let guard = Guard::new(Teardown::Classic(made.clone()));
    let node_path = netns::create_named_netns(&node)?;
    let nl = Netlink::in_netns(&node_path)?;
    let lo = nl.link("lo").await?;
    nl.set_up(lo.index).await?;
    // Kubernetes nodes with the bridge plugin need br_netfilter, so that bridged pod traffic
    // goes through iptables (services and policy would not work otherwise).
    in_netns(&node_path, || {
        netns::write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
            .map_err(|e| BenchError::Check(format!("br_netfilter is not available (modprobe br_netfilter): {e}")))
    })
    .await?;
    let mut ips = Vec::new();
    for (pod, id) in &made.pods {
        let pod_path = netns::create_named_netns(pod)?;
        let result = cni(&node_path, "ADD", id, &pod_path, &config).await?;
        ips.push(first_ipv4(&result).ok_or_else(|| BenchError::tool("bridge", format!("ADD for {pod} gave no IPv4 address: {result}")))?);
    }
    let services = kube_proxy::SERVICES.list();
    match proxy {
        Proxy::Iptables => kube_proxy::install(&node_path, &kube_proxy::rules(&services)).await?,
        Proxy::Nftables => {
            kube_proxy_nft::install(&node_path, &kube_proxy_nft::ruleset(&services, None)).await?;
            kube_proxy_nft::check_alone(&node_path).await?;
        }
    }
    let server_ip = *ips.last().ok_or_else(|| BenchError::Check("the classic node has no pods".into()))?;
    let pods = Pods { client: netns::named_netns_path(&client), server: netns::named_netns_path(&server), server_ip, client_cgroup: None };
    Ok((pods, node_path, guard))
}

/// Removes what [`build`] made: CNI DEL for each pod (the plugin's own cleanup), then the
/// namespaces (the bridge and veths go with the node's) and the IPAM directory.
pub async fn remove(made: Made) -> Result<(), BenchError> {
    let node_path = netns::named_netns_path(&made.node);
    let mut first: Option<BenchError> = None;
    if node_path.exists() {
        for (pod, id) in &made.pods {
            let pod_path = netns::named_netns_path(pod);
            if let Err(e) = cni(&node_path, "DEL", id, &pod_path, &made.config).await {
                first.get_or_insert(e);
            }
        }
    }
    let mut names: Vec<String> = made.pods.iter().map(|(p, _)| p.clone()).collect();
    names.push(made.node.clone());
    for result in [guard::delete_namespaces(&names), guard::remove_dir(&made.ipam_dir)] {
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The usual bridge configuration of a Kubernetes node, with no masquerade (lab traffic never
/// leaves the lab) and the pods' default route to the node, which routes nowhere else.
fn network_config(ipam_dir: &Path) -> String {
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
            "ranges": [[{"subnet": "198.19.0.0/24"}]],
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

/// 64 hex digits, as runtimes make container IDs.
fn container_id(pod: &str) -> String {
    let mut id: String = pod.bytes().map(|b| format!("{b:02x}")).collect();
    id.truncate(64);
    format!("{id:0<64}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_configuration_never_masquerades() {
        let config: serde_json::Value = serde_json::from_str(&network_config(Path::new("/run/x"))).unwrap();
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["ipMasq"], false, "lab traffic must not be masqueraded");
        assert_eq!(config["isGateway"], true);
        assert_eq!(config["hairpinMode"], true);
        assert_eq!(config["ipam"]["dataDir"], "/run/x", "IPAM state stays in the run's directory");
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        let id = container_id("sluice-bench-1-classic-client");
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn the_longest_pod_names_keep_distinct_container_ids() {
        // Run names have up to 5 digits; the ID keeps the first 32 bytes of the name.
        let client = container_id("sluice-bench-99999-classic-nft-client");
        let server = container_id("sluice-bench-99999-classic-nft-server");
        assert_ne!(client, server, "the client and server of classic-nft need distinct IDs");
    }

    #[test]
    fn the_pod_address_comes_from_the_result() {
        let result = serde_json::json!({"ips": [{"interface": 2, "address": "198.19.0.3/24", "gateway": "198.19.0.1"}]});
        assert_eq!(first_ipv4(&result), Some(Ipv4Addr::new(198, 19, 0, 3)));
    }
}
