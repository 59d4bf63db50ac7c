//! Command-line arguments, kubectl-shaped where the lab mirrors Kubernetes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice: eBPF pod networking for Kubernetes, and its local lab")]
pub struct Cli {
    /// The local lab to act on.
    #[arg(long, global = true, env = "SLUICE_LAB", default_value = "default")]
    pub lab: String,
    /// Talk to the agent on this socket instead of a lab node's.
    #[arg(long, global = true, env = "SLUICE_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Which agent a node command talks to.
pub enum Target {
    Socket(PathBuf),
    Lab(String),
}

impl Cli {
    pub fn target(&self) -> Target {
        match &self.socket {
            Some(s) => Target::Socket(s.clone()),
            None => Target::Lab(self.lab.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// This node's name, in place of the file's `nodeName` (a DaemonSet passes
        /// `$(NODE_NAME)` from the downward API).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Run the node's layer-7 proxy, on the agent's configuration (`proxy.port`, `stateDir`,
    /// `bpffs`). A process of its own: restarting the agent leaves it and its connections alone.
    Proxy {
        #[arg(long)]
        config: PathBuf,
        /// This node's name, in place of the file's `nodeName`, as for `sluice agent`.
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Agent health, host routing mode and why, endpoints and attached programs.
    Status {
        /// Lab node to ask (default: the first).
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Endpoints (pod attachments) of a node.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Services as programmed in a node's datapath.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Network policy: explain a verdict, show a pod's compiled entries.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Flows as the datapath sees them: forwarded and dropped packets, named.
    Observe(ObserveArgs),
    /// The node's metrics (Prometheus text format).
    Metrics {
        #[arg(long)]
        node: Option<String>,
    },
    /// Start a local lab.
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// auto, bpf, bpf-force or legacy.
        #[arg(long, default_value = "auto")]
        host_routing: String,
        /// The agents' firewall guard: off, detect or enforce.
        #[arg(long, default_value = "detect")]
        guard: String,
        /// The agents' monitor aggregation: off, medium or all.
        #[arg(long, default_value = "medium")]
        monitor: String,
        /// Where services get cluster IPs: one CIDR per family, repeat for dual stack; the
        /// first is the family of single-stack services (default 198.18.128.0/20 and
        /// 2001:2:0:fe::/112).
        #[arg(long = "service-cidr", value_name = "CIDR")]
        service_cidrs: Vec<String>,
        /// Node ports of NodePort and LoadBalancer services, FIRST-LAST.
        #[arg(long, default_value = "30000-32767", value_name = "FIRST-LAST")]
        node_port_range: String,
        /// XDP on each node's uplink: off, auto (native where the driver allows, else
        /// generic), native or generic.
        #[arg(long, default_value = "off", value_parser = ["off", "auto", "native", "generic"])]
        xdp: String,
        /// Where the lab keeps its objects: local (a file, no server) or etcd (an etcd server
        /// for the lab, with TLS; agents take pod CIDRs from cluster pools, share identities
        /// and route between nodes themselves).
        #[arg(long, default_value = "local", value_parser = ["local", "etcd"])]
        datastore: String,
        /// On etcd, how the agents publish endpoints: slices (batched per node, namespace and
        /// identity) or per-pod (one record each).
        #[arg(long, default_value = "slices", value_parser = ["slices", "per-pod"])]
        endpoints: String,
    },
    /// Audit the node's netfilter rules: which would pod traffic skip under eBPF host routing?
    /// Exit code 0 when clean, 1 when a rule would be bypassed.
    ///
    /// By default the node's agent audits its own namespace (a lab node's, or `--socket`'s).
    /// With `--local` no agent is needed: the rules of the network namespace this command runs
    /// in are audited, for the pod CIDRs and devices given, before Sluice is installed.
    Preflight {
        /// Lab node to ask (default: the first).
        #[arg(long, conflicts_with = "local")]
        node: Option<String>,
        /// Show harmless rules too.
        #[arg(long)]
        all: bool,
        #[arg(short, long)]
        output: Option<Output>,
        /// Audit this network namespace without an agent; needs the pod CIDRs (`--pod-cidr` or
        /// `--config`).
        #[arg(long)]
        local: bool,
        /// With --local: the agent configuration the node is to run with; its podCIDRs (or
        /// state.clusterPoolCIDRs), devices and nodeName are used.
        #[arg(long, requires = "local", value_name = "FILE")]
        config: Option<PathBuf>,
        /// With --local: a pod CIDR of the node, one per family (repeat for dual stack); replaces
        /// the configuration's.
        #[arg(long = "pod-cidr", requires = "local", value_name = "CIDR")]
        pod_cidrs: Vec<ipnet::IpNet>,
        /// With --local: a device that receives traffic for pods (the uplink), repeatable;
        /// replaces the configuration's.
        #[arg(long = "device", requires = "local", value_name = "DEV")]
        devices: Vec<String>,
    },
    /// The node's events (Kubernetes Event objects): host routing decisions, detected rules,
    /// guard blocks, restarts.
    Events {
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        follow: bool,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Remove the lab and everything it made.
    Down,
    /// Restart a lab node's agent; pods keep their connections.
    RestartAgent {
        #[arg(long, default_value = "node0")]
        node: String,
    },
    /// Restart a lab node's layer-7 proxy; connections that do not pass through it are not
    /// touched, and it enforces the rules the agent left it.
    RestartProxy {
        #[arg(long, default_value = "node0")]
        node: String,
    },
    /// Stop the lab's etcd and start it again on the same data (a control-plane outage);
    /// pods keep their connections.
    RestartEtcd,
    /// Create or update objects from a manifest (Namespace, Pod, Service, EndpointSlice,
    /// NetworkPolicy, SluiceNetworkPolicy, SluiceClusterwideNetworkPolicy).
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// How long to wait for pods to run, e.g. 60s or 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// List objects: nodes, pods, namespaces, services, endpointslices, networkpolicies (netpol),
    /// sluicenetworkpolicies (snp), sluiceclusterwidenetworkpolicies (scnp).
    Get {
        resource: String,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Delete objects from a manifest, or by kind and name (`delete pod web`,
    /// `delete service web`, `delete networkpolicy web`).
    Delete {
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// Kind and name, e.g. `pod web`.
        resource: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Run a command in a pod's network namespace and cgroup.
    Exec {
        /// The pod; omit with --external.
        #[arg(required_unless_present = "external")]
        pod: Option<String>,
        /// Run in the lab's external client (a machine on the nodes' network, outside the
        /// cluster) instead of a pod.
        #[arg(long, conflicts_with = "pod")]
        external: bool,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Benchmarks. Without a subcommand: the datapath comparison (limit, sluice-bpf,
    /// sluice-legacy, classic, classic-nft; TCP_STREAM, TCP_RR, TCP_CRR). Each builds what it
    /// measures.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        bench: Option<BenchCommand>,
        #[command(flatten)]
        datapath: DatapathBenchArgs,
    },
    /// Sluice's custom resource definitions for a Kubernetes cluster, as YAML: printed, or
    /// written one file per definition into a directory (what `deploy/crds/` holds).
    Crds {
        /// Write `sluice.dev_<plural>.yaml` files here instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// A server that answers with its name and the peer it sees (service tests and the demo).
    #[command(hide = true)]
    SvcServer {
        #[arg(long)]
        name: String,
        /// Ports to serve (TCP and UDP each); repeat for several.
        #[arg(long = "port", default_values_t = [8080])]
        ports: Vec<u16>,
    },
    /// Many exchanges at once, as JSON {target: true|false}: `tcp:ADDR:PORT` or `udp:...`
    /// (the policy tests' reachability probes).
    #[command(hide = true)]
    SvcProbe {
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// One exchange with a server: reply, peer address as the socket API shows it, or how it
    /// failed, as JSON.
    #[command(hide = true)]
    SvcClient {
        target: std::net::SocketAddr,
        #[arg(long)]
        udp: bool,
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
        /// Keep the TCP connection and exchange a line every 200 ms until it fails.
        #[arg(long, conflicts_with = "udp")]
        hold: bool,
    },
    /// The pod shim (started by the lab runtime, not by hand).
    #[command(hide = true)]
    LabShim {
        #[arg(long)]
        status: PathBuf,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CNI ADD latency over many pods, agent start-to-ready, agent memory.
    ControlPlane {
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 5)]
        restarts: usize,
        /// Directory for results.json and results.md.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// How many flow events per second the agent's observer decodes, and what it loses, while
    /// one pod floods another with small packets (monitor aggregation `all`).
    Observer {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Directory for results.json and results.md.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// How fast the agent programs many ClusterIP services (one store write, each with an
    /// endpoint slice) and its memory while holding them; then one service's change. Each run
    /// is a fresh one-node lab.
    Services {
        /// Service counts, one measurement point each.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        counts: Vec<usize>,
        /// Backends (endpoints) per service, 1 to 249.
        #[arg(long, default_value_t = 10)]
        backends: usize,
        /// Runs per count, each in a fresh lab.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The lab's datastore: local (its store file) or etcd.
        #[arg(long, default_value = "local", value_parser = ["local", "etcd"])]
        datastore: String,
        /// Directory for results.json and results.md.
        #[arg(long, default_value = "results/services")]
        out: PathBuf,
    },
    /// Control-plane scale: many simulated nodes (the agent's cluster code, a watch each, an
    /// IP-to-identity cache each) against a real etcd while pods start, churn and stop, with
    /// endpoints in slices and per pod, side by side.
    Scale(ScaleArgs),
    /// How long a node takes to compile 1,000 NetworkPolicies over 1,000 pods and to program
    /// its local pods' entries into the kernel maps; then one policy's change.
    Policy {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Directory for results.json and results.md.
        #[arg(long, default_value = "results/policy")]
        out: PathBuf,
    },
    /// A cluster on etcd: how long a pod takes from `apply` to every node's IP-to-identity
    /// cache, and a NetworkPolicy from its write to enforcement on every node. Each run is a
    /// fresh lab.
    Cluster {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 100)]
        pods: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Directory for results.json and results.md.
        #[arg(long, default_value = "results/cluster")]
        out: PathBuf,
    },
    /// HTTP requests per second and latency (wrk) between two pods of one node: no policy, a
    /// layer-4 policy, and HTTP rules through the node's proxy, in interleaved rounds.
    L7 {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Directory for results.json and results.md.
        #[arg(long, default_value = "results/l7")]
        out: PathBuf,
    },
    /// The HTTP server of the layer-7 benchmark (started in the server pod).
    #[command(hide = true)]
    HttpServer {
        #[arg(long)]
        listen: Vec<std::net::SocketAddr>,
    },
    /// The TCP_CRR server (started by the datapath benchmark in the server pod).
    #[command(hide = true)]
    CrrServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// The TCP_CRR client (started by the datapath benchmark in the client pod); prints a
    /// JSON report.
    #[command(hide = true)]
    CrrClient {
        #[arg(long)]
        connect: std::net::SocketAddr,
        #[arg(long)]
        seconds: f64,
    },
}

/// `sluice bench` without a subcommand: the datapath comparison.
#[derive(Debug, Clone, clap::Args)]
pub struct DatapathBenchArgs {
    /// One round of 1 s per workload: checks the harness end to end; not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Only these configurations and/or workloads, comma-separated: limit, sluice-bpf,
    /// sluice-bpf-nomon, sluice-bpf-policy, sluice-legacy, classic, classic-nft; tcp-stream-1, tcp-stream-4,
    /// tcp-rr, tcp-crr, tcp-crr-svc (TCP_CRR to a ClusterIP, sluice-bpf, classic and classic-nft, once per
    /// --services count).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Service counts of tcp-crr-svc, comma-separated (default 10,1000,10000; 10 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<usize>,
    /// Directory for results.json, results.md and results.png.
    #[arg(long, default_value = "results/datapath")]
    pub out: PathBuf,
    /// Rounds (default 5; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds per workload run (default 5; 1 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Only this lab node (default: every node, merged in time order).
    #[arg(long)]
    pub node: Option<String>,
    /// Either side is this pod (`NAME` or `NAMESPACE/NAME`).
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub from_pod: Option<String>,
    #[arg(long)]
    pub to_pod: Option<String>,
    /// Either side is in this namespace.
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub ip: Option<std::net::IpAddr>,
    #[arg(long)]
    pub port: Option<u16>,
    /// tcp, udp, icmp, icmpv4, icmpv6, arp.
    #[arg(long)]
    pub protocol: Option<String>,
    /// FORWARDED, DROPPED, ...
    #[arg(long)]
    pub verdict: Option<String>,
    /// drop, trace, policy-verdict, translation, l7 (HTTP requests through the node's proxy).
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Layer-7 flows with this HTTP method.
    #[arg(long)]
    pub http_method: Option<String>,
    /// Layer-7 flows whose path starts with this (`/api`).
    #[arg(long)]
    pub http_path: Option<String>,
    /// Only flows of the last DURATION (e.g. 30s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only the last N flows.
    #[arg(long)]
    pub last: Option<usize>,
    /// Keep printing flows as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// json: one JSON object a line.
    #[arg(short, long)]
    pub output: Option<Output>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List frontends (address, port, protocol) with their backends and their state.
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        output: Option<Output>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Explain the verdict of a connection: the policies selecting each side, the identities,
    /// the entries the datapath matches and the rules behind them.
    Trace {
        /// Source pod: NAME or NAMESPACE/NAME.
        #[arg(long)]
        from: String,
        /// Destination: a pod (NAME or NAMESPACE/NAME) or an IP address.
        #[arg(long)]
        to: String,
        /// Destination port (ICMP: the type).
        #[arg(long)]
        port: u16,
        /// tcp, udp, sctp or icmp.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Trace over IPv6 instead of IPv4.
        #[arg(long, short = '6')]
        ipv6: bool,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Show a pod's compiled policy entries (from its node's agent).
    Get {
        /// NAME or NAMESPACE/NAME.
        pod: String,
        #[arg(short, long)]
        output: Option<Output>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// List endpoints: pod, IPs, identity, host interface.
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        output: Option<Output>,
    },
}

/// "500ms", "30s", "2m" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration (e.g. 30s, 2m, 500ms)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

/// `sluice bench scale`; unset options take the defaults of a full run, or of `--quick`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Node counts, one measurement point each (default 100,500,1000; --quick: 4,8).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Pods on each node (default 20; --quick: 5).
    #[arg(long)]
    pub pods_per_node: Option<usize>,
    /// Distinct workloads (namespace and identity) among a node's pods (default 4; --quick: 2).
    #[arg(long)]
    pub groups_per_node: Option<usize>,
    /// How the scale-up's pods arrive: each node's together, nodes in turn (node-burst), or one
    /// at a time round-robin over the nodes (spread).
    #[arg(long, value_enum, default_value_t = ScaleArrival::NodeBurst)]
    pub arrival: ScaleArrival,
    /// Pods started or stopped per second, cluster-wide.
    #[arg(long, default_value_t = 200.0)]
    pub pod_rate: f64,
    /// Share of each node's pods replaced, one at a time, after the scale-up.
    #[arg(long, default_value_t = 10)]
    pub churn_percent: usize,
    /// Runs per mode and node count, modes interleaved (default 3; --quick: 1).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Only this mode (default: both).
    #[arg(long, value_parser = ["slices", "per-pod"])]
    pub mode: Option<String>,
    /// The agents' debounce before publishing, milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// The simulated nodes' lease TTL, seconds (longer than an agent's 10 s: their keep-alives
    /// share this machine's cores with every other node's watch).
    #[arg(long, default_value_t = 60)]
    pub lease_seconds: u64,
    /// A small run that checks the harness in CI; not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Measure nothing: merge the results of earlier runs (their output directories, the same
    /// workload settings) into one table and chart in `--out`.
    #[arg(long, value_delimiter = ',')]
    pub merge: Vec<PathBuf>,
    /// Directory for results.json, results.md and results.png.
    #[arg(long, default_value = "results/scale")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScaleArrival {
    NodeBurst,
    Spread,
}
