//! Messages of the agent API. Field names are camelCase on the wire, like Kubernetes objects.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One attachment, as the container runtime names it in a CNI call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRequest {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME: the interface name inside the pod.
    pub ifname: String,
    /// CNI_NETNS: path of the pod's network namespace; may be empty on DEL.
    #[serde(default)]
    pub netns: String,
    /// Pod namespace from CNI_ARGS (K8S_POD_NAMESPACE), when the runtime gives it.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Pod name from CNI_ARGS (K8S_POD_NAME), when the runtime gives it.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// MTU asked for by the network configuration; the agent's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// What ADD programmed: the CNI result before version-specific encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniAddResult {
    /// Host side first, then the pod side (with `sandbox`).
    pub interfaces: Vec<CniInterface>,
    pub ips: Vec<CniIpConfig>,
    pub routes: Vec<CniRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniInterface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// The netns path for interfaces inside the pod; absent for host-side interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniIpConfig {
    /// Address with the prefix length the pod sees.
    pub address: IpNet,
    pub gateway: IpAddr,
    /// Index into `interfaces`.
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRoute {
    pub dst: IpNet,
    pub gw: IpAddr,
}

/// CNI GC: every attachment not listed is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniGcRequest {
    pub valid_attachments: Vec<CniAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniGcResult {
    /// Attachments the agent released.
    pub released: Vec<CniAttachment>,
}

/// Error body of every non-2xx answer. `code` follows the CNI specification's error codes so the
/// plugin can pass it through (3 unknown container, 7 invalid config, 11 try again later, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub code: u32,
    pub message: String,
    #[serde(default)]
    pub details: String,
}

/// Agent health and datapath summary (`sluice status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node_name: String,
    pub healthy: bool,
    pub version: String,
    pub host_routing: HostRoutingStatus,
    pub endpoint_count: usize,
    pub pod_cidrs: Vec<IpNet>,
    pub programs: Vec<AttachedProgram>,
    /// Packets dropped by the datapath, by drop reason name.
    pub drops: Vec<DropCount>,
    /// Packets the from-pod program forwarded, by decision (local endpoint, fib redirect, to
    /// stack, ARP reply, ND reply).
    #[serde(default)]
    pub forwards: Vec<DropCount>,
    /// Seconds since the agent started.
    pub uptime_seconds: u64,
    /// Entries in use against capacity of the datapath's maps (map pressure).
    #[serde(default)]
    pub maps: Vec<MapUsage>,
    /// What needs attention: every map [`MAP_WARN_PERCENT`] full or more.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Service load balancing, when the agent programs services.
    #[serde(default)]
    pub services: Option<ServicesStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MapUsage {
    pub map: String,
    pub entries: usize,
    pub capacity: usize,
}

/// A map this full (percent of its capacity) or more is warned about.
pub const MAP_WARN_PERCENT: usize = 90;

impl MapUsage {
    /// The warning for a map [`MAP_WARN_PERCENT`] full or more, naming the map, its fill and
    /// what a full one does.
    pub fn warning(&self) -> Option<String> {
        if self.capacity == 0 || self.entries * 100 < self.capacity * MAP_WARN_PERCENT {
            return None;
        }
        let state = if self.entries >= self.capacity { "full" } else { "nearly full" };
        let consequence = match self.map.as_str() {
            "lb_ct" | "policy_ct" => "idle flows are evicted to make room; raise services.conntrackEntries",
            "trace_flows" | "lb_affinity" | "lb_sock_revnat" => "least recently used entries are evicted",
            _ => "new entries will be refused",
        };
        Some(format!(
            "map {} is {state}: {} of {} entries ({}%); {consequence}",
            self.map,
            self.entries,
            self.capacity,
            self.entries * 100 / self.capacity
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesStatus {
    /// Socket-level load balancing attached (to this cgroup), or why not.
    pub socket_lb: String,
    pub frontends: usize,
    /// Duration of the last programming round.
    pub last_program_micros: u64,
    pub last_error: Option<String>,
    pub conntrack_collected: u64,
    pub sockets_destroyed: u64,
    /// Generation of the cluster store the services were last programmed from: whoever
    /// changed the store can wait until every node has caught up.
    #[serde(default)]
    pub store_generation: Option<u64>,
    /// Services whose tables the last round computed again (the others were unchanged).
    #[serde(default)]
    pub last_recomputed: usize,
}

/// One frontend as the datapath holds it (`sluice service list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceFrontend {
    /// `namespace/name`, when the agent knows which service the frontend belongs to.
    pub service: Option<String>,
    pub port_name: Option<String>,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub protocol: String,
    /// `ClusterIP`, `NodePort`, `ExternalIP` (external IPs and load-balancer addresses).
    pub kind: String,
    /// `external` or `internal`.
    pub scope: String,
    /// Flags of the entry: `local-only`, `affinity`, `maglev`.
    pub flags: Vec<String>,
    pub backends: Vec<ServiceBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    pub address: std::net::IpAddr,
    pub port: u16,
    /// `active` (takes new connections) or `terminating` (established ones only).
    pub state: String,
    /// The backend is a pod on this node.
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRoutingStatus {
    /// `bpf` or `legacy`: what is in force.
    pub mode: String,
    /// What the configuration asked for: `auto`, `bpf` or `legacy`.
    pub requested: String,
    /// Why the mode in force was chosen.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedProgram {
    /// Program name in the datapath object (`from_pod`, `from_netdev`).
    pub program: String,
    pub interface: String,
    /// `tcx/ingress`, ...
    pub attach: String,
    /// How many interfaces carry it.
    pub count: usize,
}

/// A named packet and byte counter (a drop reason or a forwarding decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCount {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One pod attachment as the agent knows it (`sluice endpoint list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Small per-node number, stable for the endpoint's life.
    pub id: u32,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The pod interface's MAC.
    pub mac: String,
    /// Host-side interface name and index.
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// Host-side MAC: the pod's gateway MAC.
    pub host_mac: String,
    /// Security identity of the pod's label set.
    pub identity: u32,
    /// Labels the identity was derived from (pod labels plus namespace labels).
    pub labels: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(map: &str, entries: usize, capacity: usize) -> MapUsage {
        MapUsage { map: map.into(), entries, capacity }
    }

    #[test]
    fn a_map_is_warned_about_from_ninety_percent() {
        assert_eq!(usage("lb_backends", 89, 100).warning(), None, "below the threshold");
        assert_eq!(usage("endpoints", 0, 0).warning(), None, "a map without capacity is not divided by");
        let w = usage("lb_backends", 90, 100).warning().expect("at the threshold");
        assert_eq!(w, "map lb_backends is nearly full: 90 of 100 entries (90%); new entries will be refused");
        let w = usage("lb_ct", 1024, 1024).warning().expect("full");
        assert!(w.starts_with("map lb_ct is full: 1024 of 1024 entries (100%); idle flows are evicted"), "{w}");
    }
}
