//! The agent's configuration file (YAML, camelCase keys like Kubernetes objects). Every field is
//! checked at start; an error names the file and the field and the agent does not start.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What the operator asks for; the agent decides what is in force (see `HostRoutingStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRoutingRequest {
    /// `bpf` when the kernel has the helpers, `legacy` otherwise.
    #[default]
    Auto,
    /// `bpf` when the kernel has the helpers and the host firewall audit is clean; `legacy`
    /// otherwise, with the reason in status and in an event.
    Bpf,
    /// `bpf` even when the audit finds rules pod traffic would skip (they are named in a
    /// warning event).
    #[serde(rename = "bpf-force")]
    BpfForce,
    /// The node's stack routes pod traffic.
    Legacy,
}

impl HostRoutingRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRoutingRequest::Auto => "auto",
            HostRoutingRequest::Bpf => "bpf",
            HostRoutingRequest::BpfForce => "bpf-force",
            HostRoutingRequest::Legacy => "legacy",
        }
    }
}

/// Where the agent's view of the cluster comes from (`state:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateConfig {
    /// `local` (a store file, one machine), `etcd` or `kubernetes` (a cluster).
    #[serde(default = "default_source")]
    pub source: String,
    /// Path of the local store file (`local`).
    pub path: Option<PathBuf>,
    /// The etcd cluster (`etcd`): endpoints, TLS files, key prefix.
    #[serde(default)]
    pub etcd: Option<sluice_state::etcd::EtcdConfig>,
    /// The API server (`kubernetes`): a kubeconfig, or inferred (in-cluster) when unset.
    #[serde(default)]
    pub kubernetes: Option<sluice_kube::KubeAccess>,
    /// Cluster mode: seconds the node's registration outlives its agent (the etcd lease TTL).
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: i64,
    /// Cluster mode: pools the node's pod CIDRs are allocated from when `podCIDRs` is empty
    /// (at most one IPv4 and one IPv6).
    #[serde(default, rename = "clusterPoolCIDRs")]
    pub cluster_pool_cidrs: Vec<IpNet>,
    /// Prefix length of each node's IPv4 pod CIDR taken from the pool.
    #[serde(default = "default_node_mask_v4", rename = "nodeMaskIPv4")]
    pub node_mask_v4: u8,
    /// Prefix length of each node's IPv6 pod CIDR taken from the pool.
    #[serde(default = "default_node_mask_v6", rename = "nodeMaskIPv6")]
    pub node_mask_v6: u8,
    /// Cluster mode: seconds before the pod CIDRs of a vanished node and identities no node
    /// holds are released.
    #[serde(default = "default_release_grace")]
    pub release_grace_seconds: u64,
    /// How long a CNI ADD waits for a pod the agent does not know yet before failing with
    /// "try again later" (CNI code 11) in cluster mode.
    #[serde(default = "default_pod_wait")]
    pub pod_wait_seconds: u64,
    /// Cluster mode: how the node publishes its endpoints, `slices` (batched, the default) or
    /// `per-pod` (one record per pod).
    #[serde(default)]
    pub endpoints: EndpointsMode,
    /// Cluster mode, `endpoints: slices`: most endpoints per slice.
    #[serde(default = "default_endpoints_per_slice")]
    pub endpoints_per_slice: usize,
    /// Cluster mode: milliseconds the node waits after a pod starts or stops before it
    /// publishes its endpoints, so a burst of pod starts is one write per slice touched.
    #[serde(default = "default_endpoints_debounce")]
    pub endpoints_debounce_millis: u64,
}

/// How a node publishes its endpoints in the cluster datastore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointsMode {
    /// Batched into endpoint slices of one namespace and identity.
    #[default]
    Slices,
    /// One endpoint record per pod.
    PerPod,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            source: default_source(),
            path: None,
            etcd: None,
            kubernetes: None,
            lease_seconds: default_lease_seconds(),
            cluster_pool_cidrs: Vec::new(),
            node_mask_v4: default_node_mask_v4(),
            node_mask_v6: default_node_mask_v6(),
            release_grace_seconds: default_release_grace(),
            pod_wait_seconds: default_pod_wait(),
            endpoints: EndpointsMode::default(),
            endpoints_per_slice: default_endpoints_per_slice(),
            endpoints_debounce_millis: default_endpoints_debounce(),
        }
    }
}

impl StateConfig {
    /// Whether the agent is one node of a cluster (etcd, Kubernetes) rather than a machine on
    /// its own.
    pub fn is_cluster(&self) -> bool {
        self.source == "etcd" || self.is_kubernetes()
    }

    /// Whether the cluster is run by Kubernetes.
    pub fn is_kubernetes(&self) -> bool {
        self.source == "kubernetes"
    }
}

fn default_lease_seconds() -> i64 {
    10
}
fn default_node_mask_v4() -> u8 {
    24
}
fn default_node_mask_v6() -> u8 {
    112
}
fn default_release_grace() -> u64 {
    300
}
fn default_pod_wait() -> u64 {
    5
}
fn default_endpoints_per_slice() -> usize {
    sluice_model::endpoint_slices::DEFAULT_MAX_ENDPOINTS_PER_SLICE
}

fn default_endpoints_debounce() -> u64 {
    100
}

/// Longest debounce accepted: beyond, pods would wait for their addresses to reach other nodes
/// longer than the cluster round that heals a missed change anyway.
pub const MAX_ENDPOINTS_DEBOUNCE_MILLIS: u64 = 1000;

fn default_source() -> String {
    "local".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name (a DNS-1123 subdomain, as Kubernetes names nodes); `sluice agent
    /// --node-name` overrides it.
    #[serde(default)]
    pub node_name: String,
    /// Directory of the agent's database.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The API socket (mode 0600: root only).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Pin directory for maps and links; a private bpffs is mounted there unless it already
    /// lies on one.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// Pod CIDRs of this node: at most one IPv4 and one IPv6. Required unless the cluster hands
    /// them out (etcd with `state.clusterPoolCIDRs`; Kubernetes, from the Node).
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    #[serde(default)]
    pub host_routing: HostRoutingRequest,
    /// Node devices that receive traffic for pods (the uplink); from-netdev is attached there.
    #[serde(default)]
    pub devices: Vec<String>,
    /// MTU of pod interfaces unless the CNI configuration says otherwise.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub state: StateConfig,
    /// Seconds between full reconciles of the datapath against the database.
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// Which forwarded packets make flow events: `off` (drops only), `medium` (first packet of
    /// each flow and TCP flag changes) or `all`.
    #[serde(default)]
    pub monitor_aggregation: MonitorLevel,
    /// Drop events each CPU may report per second; beyond, they are counted as lost.
    #[serde(default = "default_drop_events")]
    pub drop_events_per_second: u32,
    /// Size of the events ring buffer in bytes (a power of two, at least 4096).
    #[serde(default = "default_events_buffer")]
    pub events_buffer_bytes: u32,
    /// Recent flows kept for `sluice observe`.
    #[serde(default = "default_flow_buffer")]
    pub flow_buffer: usize,
    /// Address of the Prometheus endpoint (`GET /metrics`), e.g. `127.0.0.1:9962`; none when
    /// unset.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// After bpf host routing is active: `off`, `detect` (an event for every new rule pod
    /// traffic would skip, within 2 s) or `enforce` (also refuse iptables-legacy rule installs
    /// from the guarded cgroup).
    #[serde(default)]
    pub guard: GuardMode,
    /// The cgroup v2 directory whose processes the guard refuses rule installs to; default: the
    /// parent of the agent's own cgroup.
    #[serde(default)]
    pub guard_cgroup: Option<PathBuf>,
    /// Node events kept (oldest dropped first).
    #[serde(default = "default_event_history")]
    pub event_history: usize,
    /// Service load balancing settings.
    #[serde(default)]
    pub services: ServicesConfig,
    /// The node's layer-7 proxy (`sluice proxy`, a process of its own).
    #[serde(default)]
    pub proxy: ProxyConfig,
}

/// The layer-7 proxy (`proxy:` in the agent configuration). The agent writes the rules the
/// proxy enforces to `<stateDir>/proxy/rules.json`; `sluice proxy --config` reads the same
/// configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// TCP port of the proxy's listeners on 127.0.0.1 and ::1, where the datapath hands it
    /// the connections that layer-7 rules cover.
    #[serde(default = "default_proxy_port")]
    pub port: u16,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self { port: default_proxy_port() }
    }
}

fn default_proxy_port() -> u16 {
    15080
}

/// Service load balancing (`services:` in the agent configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicesConfig {
    /// Translate service addresses at connect()/sendmsg() for the node's processes (socket LB);
    /// when off, pod traffic to ClusterIPs is translated per packet in tc.
    #[serde(default = "default_true", rename = "socketLB")]
    pub socket_lb: bool,
    /// The cgroup v2 directory the socket-LB hooks attach to; default: the parent of the
    /// agent's own cgroup (the node's subtree).
    #[serde(default)]
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Entries of each Maglev table (a prime).
    #[serde(default = "default_maglev")]
    pub maglev_table_size: u32,
    /// Capacity of the service conntrack table.
    #[serde(default = "default_conntrack")]
    pub conntrack_entries: u32,
    /// Seconds an idle established TCP flow is kept.
    #[serde(default = "default_ct_tcp")]
    pub conntrack_tcp_timeout: u64,
    /// Seconds a TCP flow is kept after its FIN or RST.
    #[serde(default = "default_ct_closing")]
    pub conntrack_tcp_closing_timeout: u64,
    /// Seconds an idle UDP flow is kept.
    #[serde(default = "default_ct_other")]
    pub conntrack_other_timeout: u64,
    /// Seconds between conntrack garbage collections.
    #[serde(default = "default_ct_gc")]
    pub conntrack_gc_seconds: u64,
    /// XDP on the node's devices: `off`, `auto` (native where the driver allows, generic
    /// otherwise), `native` or `generic`.
    #[serde(default)]
    pub xdp: XdpSetting,
    /// With XDP: drop packets for the NodePort range of the node's addresses that no frontend
    /// matches.
    #[serde(default)]
    pub xdp_drop_unmatched: bool,
    /// The cluster's NodePort range (for `xdpDropUnmatched`), `FIRST-LAST`.
    #[serde(default = "default_node_ports")]
    pub node_port_range: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpSetting {
    #[default]
    Off,
    Auto,
    Native,
    Generic,
}

impl ServicesConfig {
    /// `nodePortRange` as numbers (checked at load).
    pub fn node_ports(&self) -> Option<(u16, u16)> {
        let (a, b) = self.node_port_range.split_once('-')?;
        let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a <= b && a > 0).then_some((a, b))
    }
}

fn default_node_ports() -> String {
    "30000-32767".into()
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            socket_lb: true,
            socket_lb_cgroup: None,
            maglev_table_size: default_maglev(),
            conntrack_entries: default_conntrack(),
            conntrack_tcp_timeout: default_ct_tcp(),
            conntrack_tcp_closing_timeout: default_ct_closing(),
            conntrack_other_timeout: default_ct_other(),
            conntrack_gc_seconds: default_ct_gc(),
            xdp: XdpSetting::Off,
            xdp_drop_unmatched: false,
            node_port_range: default_node_ports(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_maglev() -> u32 {
    sluice_abi::SLUICE_MAGLEV_DEFAULT_SIZE
}
fn default_conntrack() -> u32 {
    sluice_abi::SLUICE_CT_DEFAULT_ENTRIES
}
fn default_ct_tcp() -> u64 {
    21600
}
fn default_ct_closing() -> u64 {
    10
}
fn default_ct_other() -> u64 {
    60
}
fn default_ct_gc() -> u64 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    Off,
    #[default]
    Detect,
    Enforce,
}

fn default_event_history() -> usize {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorLevel {
    Off,
    #[default]
    Medium,
    All,
}

fn default_drop_events() -> u32 {
    1000
}
fn default_events_buffer() -> u32 {
    1 << 20
}
fn default_flow_buffer() -> usize {
    4096
}

fn default_state_dir() -> PathBuf {
    "/var/lib/sluice".into()
}
fn default_socket() -> PathBuf {
    "/run/sluice/agent.sock".into()
}
fn default_bpffs() -> PathBuf {
    "/sys/fs/bpf/sluice".into()
}
fn default_mtu() -> u32 {
    1500
}
fn default_resync() -> u64 {
    30
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or a field has the wrong type.
    #[error("{path}: {field}: {message}")]
    Parse { path: PathBuf, field: String, message: String },
    /// A field has a value the agent cannot use.
    #[error("{path}: {field}: {message}")]
    Invalid { path: PathBuf, field: &'static str, message: String },
}

// === impl AgentConfig ===

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for_node(path, None)
    }

    /// Reads the file with `nodeName` replaced by `node_name` when given (a DaemonSet passes
    /// the node's name from the downward API, so one ConfigMap serves every node).
    pub fn load_for_node(path: &Path, node_name: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse_for_node(path, &text, node_name)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_for_node(path, text, None)
    }

    /// [`AgentConfig::parse`] with `nodeName` replaced by `node_name` when given.
    pub fn parse_for_node(path: &Path, text: &str, node_name: Option<&str>) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: AgentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Parse {
                path: path.into(),
                field: if field == "." { "(document)".into() } else { field },
                message: e.into_inner().to_string(),
            }
        })?;
        if let Some(name) = node_name {
            config.node_name = name.to_owned();
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Where the agent writes the layer-7 proxy's rules, and the proxy reads them.
    pub fn proxy_rules_path(&self) -> PathBuf {
        self.state_dir.join("proxy").join("rules.json")
    }

    /// Where the layer-7 proxy streams its flows (one JSON flow per line) to the agent.
    pub fn proxy_flows_path(&self) -> PathBuf {
        self.state_dir.join("proxy").join("flows.sock")
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| Err(ConfigError::Invalid { path: path.into(), field, message });
        if self.node_name.is_empty() {
            return invalid("nodeName", "required (in the file, or sluice agent --node-name)".into());
        }
        // Kubernetes' rule for Node names: clouds name nodes like `ip-10-0-0-1.ec2.internal`.
        if let Err(e) = sluice_model::labels::validate_dns1123_subdomain(&self.node_name) {
            return invalid("nodeName", e);
        }
        let from_pools = self.state.source == "etcd" && !self.state.cluster_pool_cidrs.is_empty();
        if self.pod_cidrs.is_empty() && !from_pools && !self.state.is_kubernetes() {
            return invalid(
                "podCIDRs",
                "at least one pod CIDR is required (or, with state.source etcd, state.clusterPoolCIDRs; with kubernetes, the Node's)"
                    .into(),
            );
        }
        for (field, cidrs) in [("podCIDRs", &self.pod_cidrs), ("state.clusterPoolCIDRs", &self.state.cluster_pool_cidrs)] {
            let v4 = cidrs.iter().filter(|c| matches!(c, IpNet::V4(_))).count();
            if v4 > 1 || cidrs.len() - v4 > 1 {
                return invalid(field, "at most one IPv4 and one IPv6 CIDR".into());
            }
        }
        for pool in &self.state.cluster_pool_cidrs {
            let mask = if pool.addr().is_ipv4() { self.state.node_mask_v4 } else { self.state.node_mask_v6 };
            let (field, max) = if pool.addr().is_ipv4() { ("state.nodeMaskIPv4", 30) } else { ("state.nodeMaskIPv6", 126) };
            if mask < pool.prefix_len() || mask > max {
                return invalid(field, format!("/{mask} does not fit pool {pool} (between /{} and /{max})", pool.prefix_len()));
            }
        }
        for c in self.pod_cidrs.iter().chain(&self.state.cluster_pool_cidrs) {
            if c.trunc() != *c {
                return invalid("podCIDRs", format!("{c} has host bits set; did you mean {}?", c.trunc()));
            }
        }
        if self.proxy.port == 0 {
            return invalid("proxy.port", "must be a port number from 1 to 65535".into());
        }
        if !(1280..=65535).contains(&self.mtu) {
            return invalid("mtu", format!("{} is outside 1280..=65535 (IPv6 needs at least 1280)", self.mtu));
        }
        for (field, p) in [("stateDir", &self.state_dir), ("socket", &self.socket), ("bpffs", &self.bpffs)] {
            if !p.is_absolute() {
                return invalid(field, format!("{} must be an absolute path", p.display()));
            }
        }
        match self.state.source.as_str() {
            "local" => {}
            "etcd" => match &self.state.etcd {
                None => return invalid("state.etcd", "state.source etcd needs state.etcd with at least one endpoint".into()),
                Some(e) if e.endpoints.is_empty() => return invalid("state.etcd.endpoints", "at least one endpoint is required".into()),
                Some(_) if self.state.lease_seconds < 2 => {
                    return invalid("state.leaseSeconds", format!("{} is below the minimum 2", self.state.lease_seconds))
                }
                Some(_) => {}
            },
            "kubernetes" => {
                if let Some(path) = self.state.kubernetes.as_ref().and_then(|k| k.kubeconfig.as_ref()) {
                    if !path.is_absolute() {
                        return invalid("state.kubernetes.kubeconfig", format!("{} must be an absolute path", path.display()));
                    }
                }
            }
            other => return invalid("state.source", format!("{other:?} is not supported (supported: local, etcd, kubernetes)")),
        }
        if self.state.endpoints_per_slice == 0 {
            return invalid("state.endpointsPerSlice", "0 is below the minimum 1".into());
        }
        if self.state.endpoints_debounce_millis > MAX_ENDPOINTS_DEBOUNCE_MILLIS {
            return invalid(
                "state.endpointsDebounceMillis",
                format!("{} is above the maximum {MAX_ENDPOINTS_DEBOUNCE_MILLIS}", self.state.endpoints_debounce_millis),
            );
        }
        if self.events_buffer_bytes < 4096 || !self.events_buffer_bytes.is_power_of_two() {
            return invalid("eventsBufferBytes", format!("{} must be a power of two of at least 4096", self.events_buffer_bytes));
        }
        if self.flow_buffer == 0 || self.flow_buffer > 1_000_000 {
            return invalid("flowBuffer", format!("{} is outside 1..=1000000", self.flow_buffer));
        }
        if self.resync_seconds == 0 {
            return invalid("resyncSeconds", "must be at least 1".into());
        }
        let m = self.services.maglev_table_size;
        if !sluice_services::maglev::is_prime(m) || !(7..=sluice_services::maglev::MAX_TABLE_SIZE).contains(&m) {
            return invalid(
                "services.maglevTableSize",
                format!("{m} must be a prime between 7 and {}", sluice_services::maglev::MAX_TABLE_SIZE),
            );
        }
        if self.services.conntrack_entries < 1024 {
            return invalid("services.conntrackEntries", format!("{} is below the minimum 1024", self.services.conntrack_entries));
        }
        if self.services.node_ports().is_none() {
            return invalid(
                "services.nodePortRange",
                format!("{:?} is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535", self.services.node_port_range),
            );
        }
        if self.services.conntrack_gc_seconds == 0 {
            return invalid("services.conntrackGcSeconds", "must be at least 1".into());
        }
        Ok(())
    }

    pub fn ipv4_cidr(&self) -> Option<ipnet::Ipv4Net> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    pub fn ipv6_cidr(&self) -> Option<ipnet::Ipv6Net> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.yaml"), text)
    }

    const GOOD: &str = "nodeName: node0\npodCIDRs: [198.19.0.0/24, \"2001:2::/64\"]\n";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.host_routing, HostRoutingRequest::Auto);
        assert_eq!(c.socket, PathBuf::from("/run/sluice/agent.sock"));
        assert_eq!(c.mtu, 1500);
        assert_eq!(c.ipv4_cidr().unwrap().to_string(), "198.19.0.0/24");
        assert_eq!(c.ipv6_cidr().unwrap().to_string(), "2001:2::/64");
        assert_eq!((c.state.endpoints, c.state.endpoints_per_slice), (EndpointsMode::Slices, 100), "endpoints in slices of 100");
        assert_eq!(c.state.endpoints_debounce_millis, 100, "published 100 ms after a change");
    }

    #[test]
    fn endpoints_can_be_published_per_pod() {
        let c = parse(&format!("{GOOD}state: {{endpoints: per-pod, endpointsPerSlice: 7}}\n")).unwrap();
        assert_eq!((c.state.endpoints, c.state.endpoints_per_slice), (EndpointsMode::PerPod, 7));
        let err = parse(&format!("{GOOD}state: {{endpoints: batched}}\n")).unwrap_err().to_string();
        assert!(err.contains("batched"), "an unknown mode is named: {err}");
    }

    #[test]
    fn the_node_name_may_come_from_the_command_line() {
        let path = Path::new("agent.yaml");
        let text = "podCIDRs: [198.19.0.0/24]\n";
        let err = AgentConfig::parse(path, text).unwrap_err().to_string();
        assert!(err.contains("nodeName") && err.contains("--node-name"), "{err}");
        assert_eq!(AgentConfig::parse_for_node(path, text, Some("worker-3")).unwrap().node_name, "worker-3");
        let replaced = AgentConfig::parse_for_node(path, &format!("nodeName: old\n{text}"), Some("new")).unwrap();
        assert_eq!(replaced.node_name, "new");
        assert!(AgentConfig::parse_for_node(path, text, Some("Bad_Name")).is_err(), "the given name is validated too");
        let cloud = AgentConfig::parse_for_node(path, text, Some("ip-10-0-0-1.ec2.internal")).unwrap();
        assert_eq!(cloud.node_name, "ip-10-0-0-1.ec2.internal", "dotted node names, as clouds give them");
    }

    #[test]
    fn on_kubernetes_the_pod_cidrs_may_come_from_the_node() {
        let c = parse("nodeName: node0\npodCIDRs: []\nstate: {source: kubernetes}\n").unwrap();
        assert!(c.state.is_cluster() && c.state.is_kubernetes());
        assert!(c.state.kubernetes.is_none(), "inferred (in-cluster) access by default");
        let c = parse(
            "nodeName: node0\nstate: {source: kubernetes, kubernetes: {kubeconfig: /etc/sluice/kubeconfig, podCidrWaitSeconds: 5}}\n",
        )
        .unwrap();
        let access = c.state.kubernetes.unwrap();
        assert_eq!((access.kubeconfig.unwrap(), access.pod_cidr_wait_seconds), (PathBuf::from("/etc/sluice/kubeconfig"), 5));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases = [
            ("nodeName: Node_0\npodCIDRs: [198.19.0.0/24]\n", "nodeName"),
            ("nodeName: n\npodCIDRs: []\n", "podCIDRs"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24, 198.20.0.0/24]\n", "podCIDRs"),
            ("nodeName: n\npodCIDRs: [198.19.0.1/24]\n", "podCIDRs"),
            ("nodeName: n\npodCIDRs: [not-a-cidr]\n", "podCIDRs"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nmtu: 100\n", "mtu"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nhostRouting: fast\n", "hostRouting"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nsocket: rel/agent.sock\n", "socket"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nbogus: 1\n", "bogus"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nstate: {source: kube}\n", "state.source"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nstate: {endpointsPerSlice: 0}\n", "state.endpointsPerSlice"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nstate: {endpointsDebounceMillis: 1001}\n", "state.endpointsDebounceMillis"),
            ("nodeName: n\npodCIDRs: [198.19.0.0/24]\nstate: {source: etcd}\n", "state.etcd"),
            ("nodeName: n\npodCIDRs: []\nstate: {source: kubernetes, kubernetes: {kubeconfig: admin.conf}}\n", "state.kubernetes.kubeconfig"),
            ("nodeName: n\npodCIDRs: []\nstate: {source: kubernetes, kubernetes: {context: x}}\n", "context"),
            ("nodeName: n\npodCIDRs: []\nstate: {source: etcd, etcd: {endpoints: [\"http://127.0.0.1:2379\"]}}\n", "podCIDRs"),
            ("nodeName: n\npodCIDRs: []\nstate: {source: etcd, etcd: {endpoints: [\"http://127.0.0.1:2379\"]}, clusterPoolCIDRs: [198.19.0.0/16], nodeMaskIPv4: 8}\n", "state.nodeMaskIPv4"),
        ];
        for (text, field) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with("agent.yaml:"), "error must name the file: {err}");
            assert!(err.contains(field), "error for {text:?} must name {field}: {err}");
        }
    }
}
