//! The workloads every configuration runs, client and server pinned to two different CPUs. Real
//! tools where Debian has one (iperf3 for TCP_STREAM, sockperf for TCP_RR); Sluice's own load
//! generator for TCP_CRR, which no Debian package does.

pub mod crr;
mod iperf;
mod sockperf;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Serialize;

use crate::process::Place;
use crate::BenchError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Workload {
    #[serde(rename = "tcp-stream-1")]
    TcpStream1,
    #[serde(rename = "tcp-stream-4")]
    TcpStream4,
    #[serde(rename = "tcp-rr")]
    TcpRr,
    #[serde(rename = "tcp-crr")]
    TcpCrr,
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
}

/// One measurement: a value per metric of the workload.
pub type Measurement = Vec<(Metric, f64)>;

/// Where one measurement runs.
#[derive(Debug, Clone)]
pub struct Run {
    pub client: Place,
    pub server: Place,
    pub server_ip: Ipv4Addr,
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
    pub const ALL: [Self; 4] = [Self::TcpStream1, Self::TcpStream4, Self::TcpRr, Self::TcpCrr];

    pub fn name(self) -> &'static str {
        match self {
            Self::TcpStream1 => "tcp-stream-1",
            Self::TcpStream4 => "tcp-stream-4",
            Self::TcpRr => "tcp-rr",
            Self::TcpCrr => "tcp-crr",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The name people in the field use.
    pub fn title(self) -> &'static str {
        match self {
            Self::TcpStream1 => "TCP_STREAM, 1 stream",
            Self::TcpStream4 => "TCP_STREAM, 4 streams",
            Self::TcpRr => "TCP_RR",
            Self::TcpCrr => "TCP_CRR",
        }
    }

    /// The tool and how it is run.
    pub fn tool(self) -> String {
        match self {
            Self::TcpStream1 => "iperf3 -c SERVER -P 1 -O 1 -J (first second omitted)".into(),
            Self::TcpStream4 => "iperf3 -c SERVER -P 4 -O 1 -J (first second omitted)".into(),
            Self::TcpRr => format!("sockperf ping-pong --tcp -m {MESSAGE_BYTES} --full-rtt (one connection, one transaction in flight)"),
            Self::TcpCrr => format!(
                "sluice bench crr-client: connect, {MESSAGE_BYTES}-byte request, {MESSAGE_BYTES}-byte response, close; one connection at a time"
            ),
        }
    }

    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Self::TcpStream1 | Self::TcpStream4 => &[Metric::Throughput],
            Self::TcpRr | Self::TcpCrr => &[Metric::TransactionsPerSecond, Metric::LatencyP50, Metric::LatencyP99],
        }
    }

    /// Runs the workload once.
    pub async fn run(self, run: &Run) -> Result<Measurement, BenchError> {
        match self {
            Self::TcpStream1 => iperf::stream(run, 1).await,
            Self::TcpStream4 => iperf::stream(run, 4).await,
            Self::TcpRr => sockperf::ping_pong(run).await,
            Self::TcpCrr => crr::measure(run).await,
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Metric ===

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Self::Throughput => "Gbit/s",
            Self::TransactionsPerSecond => "transactions/s",
            Self::LatencyP50 | Self::LatencyP99 => "µs",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::TransactionsPerSecond => "transactions/s",
            Self::LatencyP50 => "p50 latency",
            Self::LatencyP99 => "p99 latency",
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
