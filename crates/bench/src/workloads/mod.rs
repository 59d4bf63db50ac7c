//! The workloads every configuration runs, client and server pinned to two different CPUs. Real
//! tools where Debian has one (iperf3 for TCP_STREAM, sockperf for TCP_RR); Sluice's own load
//! generator for TCP_CRR, which no Debian package does. TCP_CRR to a ClusterIP runs the same
//! generator against a service address while N services exist on the node.

pub mod crr;
pub mod http;
mod iperf;
mod sockperf;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::Serialize;

use crate::process::Place;
use crate::BenchError;

/// A workload; serialised as its name (`tcp-crr`, `tcp-crr-svc-1000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    TcpStream1,
    TcpStream4,
    /// TCP_STREAM, 1 stream, from a pod on node0 to a pod on node1.
    TcpStreamCrossNode,
    TcpRr,
    /// TCP_RR from a pod on node0 to a pod on node1.
    TcpRrCrossNode,
    TcpCrr,
    /// TCP_CRR to the ClusterIP of one of this many services.
    TcpCrrService(usize),
}

/// What a workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Metric {
    #[serde(rename = "throughput")]
    Throughput,
    #[serde(rename = "transactionsPerSecond")]
    TransactionsPerSecond,
    #[serde(rename = "latencyP50")]
    LatencyP50,
    #[serde(rename = "latencyP99")]
    LatencyP99,
    /// Busy CPU time of the whole machine (both CPUs: user, system, interrupts) per gigabit
    /// received, over the measured seconds of a TCP_STREAM.
    #[serde(rename = "cpuMsPerGbit")]
    CpuPerGbit,
}

/// One measurement: a value per metric of the workload.
pub type Measurement = Vec<(Metric, f64)>;

/// Where one measurement runs.
#[derive(Debug, Clone)]
pub struct Run {
    pub client: Place,
    pub server: Place,
    pub server_ip: Ipv4Addr,
    /// The service address the client connects to, for TCP_CRR to a ClusterIP.
    pub service: Option<SocketAddrV4>,
    pub seconds: u64,
    /// The `sluice` binary, which carries the TCP_CRR load generator.
    pub sluice: PathBuf,
    /// Where servers write their output.
    pub log_dir: PathBuf,
}

/// Bytes of each request and each response in TCP_RR and TCP_CRR.
pub const MESSAGE_BYTES: usize = 64;

// === impl Workload ===

impl Workload {
    /// The pod-to-pod workloads.
    pub const ALL: [Self; 6] =
        [Self::TcpStream1, Self::TcpStream4, Self::TcpStreamCrossNode, Self::TcpRr, Self::TcpRrCrossNode, Self::TcpCrr];

    /// `--only` name of TCP_CRR to a ClusterIP, run once per service count (`--services`).
    pub const SERVICE_FAMILY: &'static str = "tcp-crr-svc";

    pub fn name(self) -> String {
        match self {
            Self::TcpStream1 => "tcp-stream-1".into(),
            Self::TcpStream4 => "tcp-stream-4".into(),
            Self::TcpStreamCrossNode => "tcp-stream-xnode".into(),
            Self::TcpRr => "tcp-rr".into(),
            Self::TcpRrCrossNode => "tcp-rr-xnode".into(),
            Self::TcpCrr => "tcp-crr".into(),
            Self::TcpCrrService(n) => format!("{}-{n}", Self::SERVICE_FAMILY),
        }
    }

    /// A pod-to-pod workload, or `tcp-crr-svc-N`.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(n) = name.strip_prefix(Self::SERVICE_FAMILY).and_then(|rest| rest.strip_prefix('-')) {
            return n.parse().ok().filter(|n| *n > 0).map(Self::TcpCrrService);
        }
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// How many services must exist while the workload runs (none for pod to pod).
    pub fn services(self) -> Option<usize> {
        match self {
            Self::TcpCrrService(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the server is on the other node.
    pub fn cross_node(self) -> bool {
        matches!(self, Self::TcpStreamCrossNode | Self::TcpRrCrossNode)
    }

    /// The name people in the field use.
    pub fn title(self) -> String {
        match self {
            Self::TcpStream1 => "TCP_STREAM, 1 stream".into(),
            Self::TcpStream4 => "TCP_STREAM, 4 streams".into(),
            Self::TcpStreamCrossNode => "TCP_STREAM across nodes, 1 stream".into(),
            Self::TcpRr => "TCP_RR".into(),
            Self::TcpRrCrossNode => "TCP_RR across nodes".into(),
            Self::TcpCrr => "TCP_CRR".into(),
            Self::TcpCrrService(n) => format!("TCP_CRR to a ClusterIP, {} services", crate::report::thousands(n as u64)),
        }
    }

    /// The tool and how it is run.
    pub fn tool(self) -> String {
        match self {
            Self::TcpStream1 => "iperf3 -c SERVER -P 1 -O 1 -J (first second omitted)".into(),
            Self::TcpStream4 => "iperf3 -c SERVER -P 4 -O 1 -J (first second omitted)".into(),
            Self::TcpStreamCrossNode => "iperf3 -c SERVER -P 1 -O 1 -J to a server pod on node1 (limit: its one pair, the same as tcp-stream-1)".into(),
            Self::TcpRr => format!("sockperf ping-pong --tcp -m {MESSAGE_BYTES} --full-rtt (one connection, one transaction in flight)"),
            Self::TcpRrCrossNode => format!(
                "sockperf ping-pong --tcp -m {MESSAGE_BYTES} --full-rtt to a server pod on node1 (limit: its one pair, the same as tcp-rr)"
            ),
            Self::TcpCrr => format!(
                "sluice bench crr-client: connect, {MESSAGE_BYTES}-byte request, {MESSAGE_BYTES}-byte response, close; one connection at a time"
            ),
            Self::TcpCrrService(n) => format!(
                "sluice bench crr-client in the client pod's cgroup to ClusterIP:{} of the last of {n} services (its one backend: the server pod); \
                 the others have 1-10 dummy backends each",
                crate::configurations::SERVICE_PORT
            ),
        }
    }

    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Self::TcpStream1 | Self::TcpStream4 | Self::TcpStreamCrossNode => &[Metric::Throughput, Metric::CpuPerGbit],
            Self::TcpRr | Self::TcpRrCrossNode | Self::TcpCrr | Self::TcpCrrService(_) => {
                &[Metric::TransactionsPerSecond, Metric::LatencyP50, Metric::LatencyP99]
            }
        }
    }

    /// Runs the workload once.
    pub async fn run(self, run: &Run) -> Result<Measurement, BenchError> {
        match self {
            Self::TcpStream1 | Self::TcpStreamCrossNode => iperf::stream(run, 1).await,
            Self::TcpStream4 => iperf::stream(run, 4).await,
            Self::TcpRr | Self::TcpRrCrossNode => sockperf::ping_pong(run).await,
            Self::TcpCrr => crr::measure(run).await,
            Self::TcpCrrService(_) => {
                let service =
                    run.service.ok_or_else(|| BenchError::Invalid(format!("{self}: the configuration has no services programmed")))?;
                crr::measure_to(run, service.into()).await
            }
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

// === impl Metric ===

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::TransactionsPerSecond => "transactions/s",
            Self::LatencyP50 | Self::LatencyP99 => "µs",
            Self::CpuPerGbit => "CPU ms/Gbit",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::TransactionsPerSecond => "transactions/s",
            Self::LatencyP50 => "p50 latency",
            Self::LatencyP99 => "p99 latency",
            Self::CpuPerGbit => "CPU per Gbit",
        }
    }

    /// The label with its unit, when the unit says something the label does not.
    pub fn heading(self) -> String {
        if self.label() == self.unit() {
            self.label().to_owned()
        } else {
            format!("{} ({})", self.label(), self.unit())
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Throughput | Self::TransactionsPerSecond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_workloads_carry_their_count_in_the_name() {
        assert_eq!(Workload::TcpCrrService(1000).name(), "tcp-crr-svc-1000");
        assert_eq!(Workload::parse("tcp-crr-svc-1000"), Some(Workload::TcpCrrService(1000)), "the name parses back");
        assert_eq!(Workload::parse("tcp-crr-svc-0"), None, "zero services is not a workload");
        assert_eq!(Workload::parse("tcp-crr"), Some(Workload::TcpCrr));
        assert_eq!(serde_json::to_value(Workload::TcpCrrService(10)).unwrap(), "tcp-crr-svc-10", "serialised as its name");
    }
}
