//! The configurations compared side by side, each built fresh with the same two pods (client
//! and server) on one node, and each able to prove after a workload that it is what it claims:
//! the direct veth pair (the limit), Sluice in both host routing modes, the classic bridge CNI
//! with kube-proxy's iptables or nftables rules. `sluice-bpf`, `classic` and `classic-nft` also
//! take N services at once (Sluice's store, kube-proxy's rules) for TCP_CRR to a ClusterIP, and
//! say how long programming them took.

mod classic;
mod counters;
mod guard;
mod kube_proxy;
mod kube_proxy_nft;
mod limit;
mod services;
mod sluice;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use classic::CNI_BIN_DIR;
pub use counters::machine_cpu_ticks;
pub use kube_proxy::{Services, SERVICES};
pub use services::{max_services, SERVICE_CIDR, SERVICE_PORT};

use crate::workloads::Workload;
use crate::BenchError;
use guard::Guard;

/// The pods' interface, and the MTU of every pod link in every configuration.
pub const POD_IFNAME: &str = "eth0";
pub const MTU: u32 = 1500;

/// A counter must move by at least this much to count as "moved" during a workload.
const MOVED: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Configuration {
    #[serde(rename = "limit")]
    Limit,
    #[serde(rename = "sluice-bpf")]
    SluiceBpf,
    /// eBPF host routing with the flow monitor off: what observability costs.
    #[serde(rename = "sluice-bpf-nomon")]
    SluiceBpfNoMonitor,
    /// As sluice-bpf with network policy enforced on both pods: what policy costs.
    #[serde(rename = "sluice-bpf-policy")]
    SluiceBpfPolicy,
    #[serde(rename = "sluice-legacy")]
    SluiceLegacy,
    #[serde(rename = "classic")]
    Classic,
    /// As classic with kube-proxy's nftables mode instead of iptables.
    #[serde(rename = "classic-nft")]
    ClassicNft,
}

/// What every configuration hands the workloads: the pods' namespaces and the server's address.
#[derive(Debug, Clone)]
pub struct Pods {
    pub client: PathBuf,
    pub server: PathBuf,
    pub server_ip: Ipv4Addr,
    /// The client pod's cgroup, where a node's socket hooks see its connect() (Sluice only).
    pub client_cgroup: Option<PathBuf>,
    /// The server on another node, for the cross-node workload.
    pub remote: Option<Remote>,
}

/// A pod on the second node.
#[derive(Debug, Clone)]
pub struct Remote {
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
}

/// Names and places a run's configurations share.
#[derive(Debug, Clone)]
pub struct BuildEnv {
    /// Short and unique per run: part of every namespace and lab name.
    pub run: String,
    /// The `sluice` binary (labs run its agent; `sluice-cni` is beside it).
    pub sluice: PathBuf,
    /// The run's scratch directory (IPAM state, logs).
    pub work_dir: PathBuf,
}

/// Counters read before and after each workload, by name.
pub type Counters = BTreeMap<&'static str, u64>;

const NODE_FORWARDED: &str = "node IpForwDatagrams";
const NODE1_FORWARDED: &str = "node1 IpForwDatagrams";
const SLUICE_FIB_REDIRECTS: &str = "Sluice FIB redirects (node0)";
const NODE1_REDIRECTS: &str = "Sluice local-endpoint redirects (node1)";
const SLUICE_REDIRECTS: &str = "Sluice local-endpoint redirects";
const KUBE_FORWARD: &str = "iptables FORWARD -> KUBE-FORWARD packets";
const KUBE_SERVICES: &str = "iptables nat PREROUTING -> KUBE-SERVICES packets";
const AGENT_CPU_MS: &str = "agent CPU ms";
const POLICY_DROPS: &str = "Sluice policy drops";
const TARGET_SERVICE_DNAT: &str = "iptables nat target KUBE-SVC -> KUBE-SEP packets";
const NFT_FORWARD: &str = "nft filter-forward packets";
const NFT_SERVICES: &str = "nft nat-prerouting -> services packets";
const NFT_TARGET_ENDPOINT: &str = "nft target endpoint chain DNAT packets";
const CLIENT_TX: &str = "client eth0 tx packets";
const SERVER_RX: &str = "server eth0 rx packets";

/// What a check found: the claim and how much each counter moved.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub claim: &'static str,
    pub deltas: BTreeMap<&'static str, u64>,
}

/// A configuration, built and running.
pub struct Built {
    pub configuration: Configuration,
    pub pods: Pods,
    node: Node,
    guard: Guard,
    services: Option<ProgrammedServices>,
}

/// The services a configuration holds now, and where its checks look for the target's.
#[derive(Debug, Clone)]
struct ProgrammedServices {
    count: usize,
    target: SocketAddrV4,
    /// classic: the target's (KUBE-SVC-*, KUBE-SEP-*) chains; classic-nft: its (service-*,
    /// endpoint-*) chains.
    chains: Option<(String, String)>,
}

/// What sits between the pods, as the checks see it.
enum Node {
    None,
    Sluice(sluice::Node),
    /// The classic nodes and the kube-proxy mode of their rules.
    Classic(classic::ClassicNodes, classic::Proxy),
}

// === impl Configuration ===

impl Configuration {
    pub const ALL: [Self; 7] = [
        Self::Limit,
        Self::SluiceBpf,
        Self::SluiceBpfNoMonitor,
        Self::SluiceBpfPolicy,
        Self::SluiceLegacy,
        Self::Classic,
        Self::ClassicNft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::SluiceBpf => "sluice-bpf",
            Self::SluiceBpfNoMonitor => "sluice-bpf-nomon",
            Self::SluiceBpfPolicy => "sluice-bpf-policy",
            Self::SluiceLegacy => "sluice-legacy",
            Self::Classic => "classic",
            Self::ClassicNft => "classic-nft",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Limit => "a direct veth pair between the client and server namespaces, no node hop: the physical limit",
            Self::SluiceBpf => "a two-node Sluice lab, eBPF host routing (bpf_redirect_peer between the pods' veths); the cross-node server on node1",
            Self::SluiceBpfNoMonitor => "as sluice-bpf (one node) with monitorAggregation off (drop events only): the cost of flow observability",
            Self::SluiceBpfPolicy => {
                "as sluice-bpf with NetworkPolicies selecting both pods (default deny both ways; the client may reach the server on TCP 1024-65535): the cost of policy"
            }
            Self::SluiceLegacy => "a two-node Sluice lab, legacy host routing (the node's IP stack routes); the cross-node server on node1",
            Self::Classic => {
                "Debian's containernetworking-plugins bridge + host-local on a node namespace (br_netfilter on), \
                 with kube-proxy-style iptables rules for 10 dummy services of 3 backends; a second node the same, \
                 routing each other's pod subnet over a link (host-gw)"
            }
            Self::ClassicNft => {
                "as classic with kube-proxy's nftables-mode rules instead of iptables (the services verdict map, \
                 numgen random over endpoint chains) for the same 10 dummy services; no iptables rules on the node"
            }
        }
    }

    /// Whether the configuration balances services (takes part in TCP_CRR to a ClusterIP).
    pub fn has_services(self) -> bool {
        matches!(self, Self::SluiceBpf | Self::Classic | Self::ClassicNft)
    }

    /// Whether the configuration has a second node (takes part in the cross-node workload;
    /// `limit` runs it on its pair, nothing being between the pods).
    pub fn has_second_node(self) -> bool {
        matches!(self, Self::Limit | Self::SluiceBpf | Self::SluiceLegacy | Self::Classic | Self::ClassicNft)
    }

    /// What the check after a cross-node workload proves.
    pub fn cross_node_claim(self) -> &'static str {
        match self {
            Self::SluiceBpf => "node0's datapath hands the packets to the link (FIB redirect), node1's delivers them to the pod; neither node's IP stack forwards",
            Self::SluiceLegacy => "both nodes' IP stacks forward the traffic",
            Self::Classic => "both nodes' IP stacks forward the traffic through iptables FORWARD",
            Self::ClassicNft => "both nodes' IP stacks forward the traffic through the nftables forward hook",
            _ => self.claim(),
        }
    }

    /// What the per-workload check proves.
    pub fn claim(self) -> &'static str {
        match self {
            Self::Limit => "every packet the client sends arrives at the server's end of the pair (nothing in between)",
            Self::SluiceBpf | Self::SluiceBpfNoMonitor => "the datapath redirects pod to pod; the node's IP stack forwards nothing",
            Self::SluiceBpfPolicy => "the datapath redirects pod to pod through both pods' policy lookups; the node's IP stack forwards nothing, policy drops nothing",
            Self::SluiceLegacy => "the node's IP stack forwards the traffic; the datapath redirects nothing",
            Self::Classic => "bridged traffic walks the node's iptables FORWARD rules; new connections walk KUBE-SERVICES",
            Self::ClassicNft => "bridged traffic walks the node's nftables forward hook chain; new connections walk the services verdict map",
        }
    }
}

impl std::fmt::Display for Configuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// === impl BuildEnv ===

impl BuildEnv {
    /// A named network namespace of this run.
    pub fn netns_name(&self, what: &str) -> String {
        format!("sluice-bench-{}-{what}", self.run)
    }

    /// A lab name of this run (at most 20 characters).
    pub fn lab_name(&self, mode: &str) -> String {
        format!("bench-{}-{mode}", self.run)
    }
}

// === impl Built ===

impl Built {
    /// Builds a configuration from nothing. A failure part way removes what was made.
    pub async fn build(configuration: Configuration, env: &BuildEnv) -> Result<Self, BenchError> {
        let (pods, node, guard) = match configuration {
            Configuration::Limit => {
                let (pods, guard) = limit::build(env).await?;
                (pods, Node::None, guard)
            }
            Configuration::SluiceBpf | Configuration::SluiceBpfNoMonitor | Configuration::SluiceBpfPolicy | Configuration::SluiceLegacy => {
                let mode = if configuration == Configuration::SluiceLegacy { "legacy" } else { "bpf" };
                let monitor = if configuration == Configuration::SluiceBpfNoMonitor { "off" } else { "medium" };
                let policy = configuration == Configuration::SluiceBpfPolicy;
                let nodes = if configuration.has_second_node() { 2 } else { 1 };
                let (pods, node, guard) = sluice::build(env, mode, monitor, policy, nodes).await?;
                (pods, Node::Sluice(node), guard)
            }
            Configuration::Classic | Configuration::ClassicNft => {
                let proxy = if configuration == Configuration::Classic { classic::Proxy::Iptables } else { classic::Proxy::Nftables };
                let (pods, node, guard) = classic::build(env, proxy).await?;
                (pods, Node::Classic(node, proxy), guard)
            }
        };
        Ok(Self { configuration, pods, node, guard, services: None })
    }

    /// Replaces the benchmark's services with `count` services whose last one has the server
    /// pod as its backend, and returns how long programming took: for Sluice from the store
    /// update to the agent reporting every frontend, for classic the `iptables-restore` of
    /// kube-proxy's rules for them, for classic-nft the `nft -f` of its nftables ruleset.
    pub async fn program_services(&mut self, count: usize) -> Result<Duration, BenchError> {
        if count == 0 || count > services::max_services() {
            return Err(BenchError::Invalid(format!("--services {count}: give 1 to {} services", services::max_services())));
        }
        let list = services::catalogue(count, SocketAddrV4::new(self.pods.server_ip, crate::workloads::crr::PORT));
        let started = Instant::now();
        let chains = match &self.node {
            Node::Sluice(node) => {
                sluice::program_services(node, &list).await?;
                None
            }
            Node::Classic(node, classic::Proxy::Iptables) => {
                kube_proxy::install(&node.node0, &kube_proxy::rules(&list)).await?;
                list.last().and_then(kube_proxy::service_chains)
            }
            Node::Classic(node, classic::Proxy::Nftables) => {
                // Only the target's endpoint chains count: the check reads nothing else.
                let target = list.last().map(|s| s.name.as_str());
                kube_proxy_nft::install(&node.node0, &kube_proxy_nft::ruleset(&list, target)).await?;
                list.last().and_then(kube_proxy_nft::service_chains)
            }
            Node::None => return Err(BenchError::Invalid(format!("{} has no services", self.configuration))),
        };
        let took = started.elapsed();
        self.services = Some(ProgrammedServices { count, target: services::target(count), chains });
        Ok(took)
    }

    /// The service address of the target, when `count` services are programmed.
    pub fn service_target(&self, count: usize) -> Option<SocketAddrV4> {
        self.services.as_ref().filter(|s| s.count == count).map(|s| s.target)
    }

    /// The counters the check compares.
    pub async fn counters(&self) -> Result<Counters, BenchError> {
        let mut c = Counters::new();
        match &self.node {
            Node::None => {
                c.insert(CLIENT_TX, counters::link_packets(&self.pods.client, POD_IFNAME).await?.1);
                c.insert(SERVER_RX, counters::link_packets(&self.pods.server, POD_IFNAME).await?.0);
            }
            Node::Sluice(node) => {
                c.insert(NODE_FORWARDED, counters::ip_forwarded(&node.netns).await?);
                c.insert(SLUICE_REDIRECTS, counters::sluice_forwards(&node.socket, "local endpoint").await?);
                c.insert(POLICY_DROPS, counters::sluice_policy_drops(&node.socket).await?);
                // Not part of the claim: what the agent itself costs while pods talk.
                if let Some(pid) = node.agent_pid {
                    c.insert(AGENT_CPU_MS, counters::process_cpu_ms(pid)?);
                }
                if let Some((netns, socket)) = &node.node1 {
                    c.insert(SLUICE_FIB_REDIRECTS, counters::sluice_forwards(&node.socket, "fib redirect").await?);
                    c.insert(NODE1_FORWARDED, counters::ip_forwarded(netns).await?);
                    c.insert(NODE1_REDIRECTS, counters::sluice_forwards(socket, "local endpoint").await?);
                }
            }
            Node::Classic(nodes, proxy) => {
                let node = &nodes.node0;
                c.insert(NODE1_FORWARDED, counters::ip_forwarded(&nodes.node1).await?);
                c.insert(NODE_FORWARDED, counters::ip_forwarded(node).await?);
                let target = self.services.as_ref().and_then(|s| s.chains.as_ref());
                match proxy {
                    classic::Proxy::Iptables => {
                        c.insert(KUBE_FORWARD, kube_proxy::jump_packets(node, "filter", "FORWARD", "KUBE-FORWARD").await?);
                        c.insert(KUBE_SERVICES, kube_proxy::jump_packets(node, "nat", "PREROUTING", "KUBE-SERVICES").await?);
                        if let Some((svc, sep)) = target {
                            c.insert(TARGET_SERVICE_DNAT, kube_proxy::jump_packets(node, "nat", svc, sep).await?);
                        }
                    }
                    classic::Proxy::Nftables => {
                        c.insert(NFT_FORWARD, kube_proxy_nft::chain_packets(node, kube_proxy_nft::FORWARD_CHAIN).await?);
                        c.insert(NFT_SERVICES, kube_proxy_nft::chain_packets(node, kube_proxy_nft::SERVICES_JUMP_CHAIN).await?);
                        if let Some((_, endpoint)) = target {
                            c.insert(NFT_TARGET_ENDPOINT, kube_proxy_nft::chain_packets(node, endpoint).await?);
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// Whether the counters moved as this configuration claims; the error says how not.
    pub fn verify(&self, workload: Workload, before: &Counters, after: &Counters) -> Result<Evidence, String> {
        let deltas: BTreeMap<&'static str, u64> =
            after.iter().map(|(k, v)| (*k, v.saturating_sub(before.get(k).copied().unwrap_or(0)))).collect();
        let d = |key: &str| deltas.get(key).copied().unwrap_or(0);
        let claim = if workload.cross_node() { self.configuration.cross_node_claim() } else { self.configuration.claim() };
        let evidence = Evidence { claim, deltas: deltas.clone() };
        let cross_node = workload.cross_node() && self.configuration != Configuration::Limit;
        let failure = match self.configuration {
            Configuration::SluiceBpf if cross_node => match (d(NODE_FORWARDED), d(NODE1_FORWARDED), d(SLUICE_FIB_REDIRECTS), d(NODE1_REDIRECTS)) {
                (0, 0, f, r) if f >= MOVED && r >= MOVED => None,
                (f0, f1, f, r) => Some(format!(
                    "IpForwDatagrams moved by {f0} on node0 and {f1} on node1 (must stay still), FIB redirects on node0 by {f} and local-endpoint redirects on node1 by {r} (must move)"
                )),
            },
            Configuration::SluiceLegacy | Configuration::Classic | Configuration::ClassicNft if cross_node => match (d(NODE_FORWARDED), d(NODE1_FORWARDED)) {
                (f0, f1) if f0 >= MOVED && f1 >= MOVED => None,
                (f0, f1) => Some(format!("IpForwDatagrams moved by {f0} on node0 and {f1} on node1 (both must move)")),
            },
            Configuration::Limit => {
                let (tx, rx) = (d(CLIENT_TX), d(SERVER_RX));
                // Counters are read one after the other; a trailing ACK may fall in between.
                (tx < MOVED || tx.abs_diff(rx) > 10.max(tx / 100)).then(|| format!("client sent {tx} packets, server received {rx}"))
            }
            Configuration::SluiceBpf | Configuration::SluiceBpfNoMonitor => match (d(NODE_FORWARDED), d(SLUICE_REDIRECTS)) {
                (0, r) if r >= MOVED => None,
                (f, r) => Some(format!("node IpForwDatagrams moved by {f} (must stay still), datapath redirects moved by {r} (must move)")),
            },
            // The pods' enforcement modes were checked when the policies were programmed.
            Configuration::SluiceBpfPolicy => match (d(NODE_FORWARDED), d(SLUICE_REDIRECTS), d(POLICY_DROPS)) {
                (0, r, 0) if r >= MOVED => None,
                (f, r, p) => Some(format!("node IpForwDatagrams moved by {f} (must stay still), datapath redirects by {r} (must move), policy drops by {p} (must stay still)")),
            },
            Configuration::SluiceLegacy => match (d(NODE_FORWARDED), d(SLUICE_REDIRECTS)) {
                (f, 0) if f >= MOVED => None,
                (f, r) => Some(format!("node IpForwDatagrams moved by {f} (must move), datapath redirects moved by {r} (must stay still)")),
            },
            Configuration::Classic => match (d(KUBE_FORWARD), d(KUBE_SERVICES)) {
                (f, s) if f >= MOVED && s >= 1 => None,
                (f, s) => Some(format!("KUBE-FORWARD saw {f} packets (must move), KUBE-SERVICES {s} new connections (must move)")),
            },
            Configuration::ClassicNft => match (d(NFT_FORWARD), d(NFT_SERVICES)) {
                (f, s) if f >= MOVED && s >= 1 => None,
                (f, s) => Some(format!("nft filter-forward counted {f} packets (must move), the jump to services {s} new connections (must move)")),
            },
        };
        // To a ClusterIP, classic must also have translated through the target's own chains:
        // every connection walked KUBE-SERVICES (or the services map) to them.
        let failure = failure.or_else(|| {
            let to_service = workload.services().is_some();
            match self.configuration {
                Configuration::Classic if to_service && d(TARGET_SERVICE_DNAT) < MOVED => {
                    Some(format!("the target service's KUBE-SEP saw {} new connections (must move)", d(TARGET_SERVICE_DNAT)))
                }
                Configuration::ClassicNft if to_service && d(NFT_TARGET_ENDPOINT) < MOVED => {
                    Some(format!("the target service's endpoint chain DNATed {} new connections (must move)", d(NFT_TARGET_ENDPOINT)))
                }
                _ => None,
            }
        });
        match failure {
            None => Ok(evidence),
            Some(why) => Err(format!("{} is not what it claims ({claim}): {why}", self.configuration)),
        }
    }

    /// Removes the configuration.
    pub async fn teardown(self) -> Result<(), BenchError> {
        self.guard.run().await
    }
}
