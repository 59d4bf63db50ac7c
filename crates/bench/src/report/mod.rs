//! What a datapath run produced, in the shapes people read: for each workload, metric and
//! configuration the samples with their median and min-max, ratios of medians against `limit`
//! and `classic` from the same run, the targets, and the checks; JSON, Markdown, PNG.

pub(crate) mod chart;
mod markdown;

pub(crate) use markdown::number as markdown_number;
pub(crate) use markdown::thousands;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::configurations::{Configuration, Evidence};
use crate::workloads::{Measurement, Metric, Workload};
use crate::{BenchError, Machine, Summary};

/// One measurement as the run took it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub round: usize,
    pub configuration: Configuration,
    pub workload: Workload,
    pub measurement: Measurement,
}

/// The check made after one measurement.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    pub round: usize,
    pub configuration: Configuration,
    pub workload: Workload,
    #[serde(flatten)]
    pub evidence: Evidence,
}

/// How long a configuration took to program the services of TCP_CRR to a ClusterIP: Sluice
/// from its store update to the agent reporting every frontend, classic its `iptables-restore`,
/// classic-nft its `nft -f`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgrammingRecord {
    pub configuration: Configuration,
    pub services: usize,
    pub seconds: f64,
}

/// How the run was made, as the report states it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Method {
    pub command: String,
    pub quick: bool,
    pub rounds: usize,
    pub seconds_per_run: u64,
    pub client_cpu: usize,
    pub server_cpu: usize,
    /// /proc/loadavg before the first configuration was built and after the last was removed.
    pub load_average_before: String,
    pub load_average_after: String,
    pub services_on_classic: usize,
    pub backends_per_service: usize,
    /// Service counts of TCP_CRR to a ClusterIP.
    pub service_counts: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigurationInfo {
    pub name: Configuration,
    pub description: &'static str,
    pub claim: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadInfo {
    pub name: Workload,
    pub title: String,
    pub tool: String,
    pub metrics: Vec<Metric>,
}

/// The samples of one workload metric in one configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub workload: Workload,
    pub metric: Metric,
    pub unit: &'static str,
    pub configuration: Configuration,
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Median ÷ the median of `limit` (absent when `limit` did not run).
    pub vs_limit: Option<f64>,
    /// Median ÷ the median of `classic` (absent when `classic` did not run).
    pub vs_classic: Option<f64>,
}

/// A target of the issue and where the run stands.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub description: &'static str,
    pub configuration: Configuration,
    pub workload: Workload,
    pub metric: Metric,
    pub against: Configuration,
    pub minimum_ratio: f64,
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub machine: Machine,
    pub method: Method,
    pub configurations: Vec<ConfigurationInfo>,
    pub workloads: Vec<WorkloadInfo>,
    pub results: Vec<Series>,
    pub targets: Vec<Target>,
    pub checks: Vec<CheckRecord>,
    /// Service programming, one record per configuration and service count.
    pub programming: Vec<ProgrammingRecord>,
    /// What this benchmark does not measure yet, and why.
    pub left_out: Vec<&'static str>,
}

pub const LEFT_OUT: [&str; 3] = [
    "TCP_CRR to a ClusterIP in sluice-legacy and sluice-bpf-nomon: only sluice-bpf, classic and classic-nft get services (service programming time and memory at scale: `sluice bench services`)",
    "cross-node workloads other than TCP_STREAM with 1 stream and TCP_RR, and cross-node in sluice-bpf-nomon and sluice-bpf-policy: they are one-node labs",
    "CPU per gigabit is the whole machine's busy time (/proc/stat): anything else running on the machine during a run is counted too; the load averages before and after are recorded",
];

/// (workload, issue's words, configuration, reference, minimum ratio of medians).
const TARGETS: [(&str, Workload, Metric, Configuration, f64); 6] = [
    ("same-node TCP_STREAM (1 stream) within 5% of limit", Workload::TcpStream1, Metric::Throughput, Configuration::Limit, 0.95),
    ("same-node TCP_STREAM (4 streams) within 5% of limit", Workload::TcpStream4, Metric::Throughput, Configuration::Limit, 0.95),
    ("same-node TCP_RR transactions/s within 5% of limit", Workload::TcpRr, Metric::TransactionsPerSecond, Configuration::Limit, 0.95),
    ("TCP_RR transactions/s at least 1.27x classic", Workload::TcpRr, Metric::TransactionsPerSecond, Configuration::Classic, 1.27),
    (
        "cross-node TCP_RR transactions/s above classic (the source documents claim up to 3x)",
        Workload::TcpRrCrossNode,
        Metric::TransactionsPerSecond,
        Configuration::Classic,
        1.0,
    ),
    (
        "TCP_CRR to a ClusterIP with 10,000 services at least 3x classic",
        Workload::TcpCrrService(10_000),
        Metric::TransactionsPerSecond,
        Configuration::Classic,
        3.0,
    ),
];

// === impl Report ===

impl Report {
    pub fn build(
        machine: Machine,
        method: Method,
        configurations: &[Configuration],
        workloads: &[Workload],
        samples: &[Sample],
        checks: Vec<CheckRecord>,
        programming: Vec<ProgrammingRecord>,
    ) -> Self {
        let mut values: BTreeMap<(Workload, Metric, Configuration), Vec<f64>> = BTreeMap::new();
        for s in samples {
            for (metric, value) in &s.measurement {
                values.entry((s.workload, *metric, s.configuration)).or_default().push(*value);
            }
        }
        let median = |w: Workload, m: Metric, c: Configuration| values.get(&(w, m, c)).and_then(|v| Summary::of(v)).map(|s| s.p50);
        let mut results = Vec::new();
        for &w in workloads {
            for &m in w.metrics() {
                for &c in configurations {
                    let Some(samples) = values.get(&(w, m, c)) else { continue };
                    let Some(summary) = Summary::of(samples) else { continue };
                    let ratio = |reference: Configuration| median(w, m, reference).filter(|r| *r > 0.0).map(|r| summary.p50 / r);
                    results.push(Series {
                        workload: w,
                        metric: m,
                        unit: m.unit(),
                        configuration: c,
                        samples: samples.clone(),
                        median: summary.p50,
                        min: summary.min,
                        max: summary.max,
                        vs_limit: ratio(Configuration::Limit),
                        vs_classic: ratio(Configuration::Classic),
                    });
                }
            }
        }
        let targets = TARGETS
            .iter()
            .map(|&(description, workload, metric, against, minimum_ratio)| {
                let ratio = results
                    .iter()
                    .find(|s| s.workload == workload && s.metric == metric && s.configuration == Configuration::SluiceBpf)
                    .and_then(|s| if against == Configuration::Limit { s.vs_limit } else { s.vs_classic });
                Target {
                    description,
                    configuration: Configuration::SluiceBpf,
                    workload,
                    metric,
                    against,
                    minimum_ratio,
                    ratio,
                    met: ratio.map(|r| r >= minimum_ratio),
                }
            })
            .collect();
        Self {
            machine,
            method,
            configurations: configurations
                .iter()
                .map(|&c| ConfigurationInfo { name: c, description: c.description(), claim: c.claim() })
                .collect(),
            workloads: workloads
                .iter()
                .map(|&w| WorkloadInfo { name: w, title: w.title(), tool: w.tool(), metrics: w.metrics().to_vec() })
                .collect(),
            results,
            targets,
            checks,
            programming,
            left_out: LEFT_OUT.to_vec(),
        }
    }

    pub fn series(&self, workload: Workload, metric: Metric, configuration: Configuration) -> Option<&Series> {
        self.results.iter().find(|s| s.workload == workload && s.metric == metric && s.configuration == configuration)
    }

    pub fn configuration_names(&self) -> Vec<Configuration> {
        self.configurations.iter().map(|c| c.name).collect()
    }

    /// The Markdown table of the run.
    pub fn markdown(&self) -> String {
        markdown::render(self)
    }

    /// Writes results.json, results.md and results.png into `dir`; the chart last, so a
    /// drawing failure never loses the figures.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        write_results(dir, self, &self.markdown())?;
        chart::draw(self, &dir.join("results.png"))
    }
}

/// Writes `results.json` (the figures) and `results.md` (`markdown`) into `dir`.
pub fn write_results(dir: &Path, figures: &impl Serialize, markdown: &str) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
    let json = serde_json::to_vec_pretty(figures).map_err(|e| BenchError::io("encoding results.json", e))?;
    std::fs::write(dir.join("results.json"), json).map_err(|e| BenchError::io("writing results.json", e))?;
    std::fs::write(dir.join("results.md"), markdown).map_err(|e| BenchError::io("writing results.md", e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_report() -> Report {
        let mut samples = Vec::new();
        let figures = [
            (Configuration::Limit, 50.0, 70_000.0),
            (Configuration::SluiceBpf, 48.0, 66_000.0),
            (Configuration::SluiceLegacy, 40.0, 55_000.0),
            (Configuration::Classic, 35.0, 50_000.0),
        ];
        for round in 1..=3 {
            for &(c, gbps, tps) in &figures {
                let wiggle = round as f64 - 2.0;
                samples.push(Sample {
                    round,
                    configuration: c,
                    workload: Workload::TcpStream1,
                    measurement: vec![(Metric::Throughput, gbps + wiggle)],
                });
                samples.push(Sample {
                    round,
                    configuration: c,
                    workload: Workload::TcpRr,
                    measurement: vec![
                        (Metric::TransactionsPerSecond, tps + wiggle * 100.0),
                        (Metric::LatencyP50, 1e6 / tps),
                        (Metric::LatencyP99, 2e6 / tps),
                    ],
                });
            }
        }
        let method = Method {
            command: "sluice bench --quick".into(),
            quick: true,
            rounds: 3,
            seconds_per_run: 1,
            client_cpu: 0,
            server_cpu: 1,
            load_average_before: "0.1 0.2 0.3".into(),
            load_average_after: "0.4 0.5 0.6".into(),
            services_on_classic: 10,
            backends_per_service: 3,
            service_counts: vec![10],
        };
        Report::build(
            Machine::describe(),
            method,
            &Configuration::ALL,
            &[Workload::TcpStream1, Workload::TcpRr],
            &samples,
            Vec::new(),
            vec![
                ProgrammingRecord { configuration: Configuration::SluiceBpf, services: 10, seconds: 0.05 },
                ProgrammingRecord { configuration: Configuration::Classic, services: 10, seconds: 0.02 },
            ],
        )
    }

    #[test]
    fn medians_and_ratios_come_from_the_same_run() {
        let r = sample_report();
        let bpf = r.series(Workload::TcpStream1, Metric::Throughput, Configuration::SluiceBpf).unwrap();
        assert_eq!((bpf.min, bpf.median, bpf.max), (47.0, 48.0, 49.0), "median with min-max of three rounds");
        assert_eq!(bpf.vs_limit, Some(48.0 / 50.0), "ratio of medians against limit");
        assert_eq!(bpf.vs_classic, Some(48.0 / 35.0), "ratio of medians against classic");
        let limit = r.series(Workload::TcpStream1, Metric::Throughput, Configuration::Limit).unwrap();
        assert_eq!(limit.vs_limit, Some(1.0));
    }

    #[test]
    fn targets_are_judged_on_sluice_bpf() {
        let r = sample_report();
        let stream = r.targets.iter().find(|t| t.workload == Workload::TcpStream1).unwrap();
        assert_eq!(stream.met, Some(true), "48 of 50 Gbit/s is within 5%");
        let rr_limit = r.targets.iter().find(|t| t.workload == Workload::TcpRr && t.against == Configuration::Limit).unwrap();
        assert_eq!(rr_limit.met, Some(false), "66k of 70k transactions/s is not within 5%");
        let rr_classic = r.targets.iter().find(|t| t.against == Configuration::Classic).unwrap();
        assert_eq!(rr_classic.met, Some(true), "66k is 1.32x 50k");
        let absent = r.targets.iter().find(|t| t.workload == Workload::TcpStream4).unwrap();
        assert_eq!(absent.met, None, "a workload that did not run is not judged");
    }

    #[test]
    fn results_are_written_as_json_markdown_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample_report();
        match r.write(dir.path()) {
            Ok(()) => {}
            // A machine without a TrueType font cannot draw the chart; the figures are written.
            Err(BenchError::Chart(e)) if e.contains("font") => eprintln!("chart skipped: {e}"),
            Err(e) => panic!("writing results: {e}"),
        }
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["results"].as_array().unwrap().len(), 16, "4 configurations x (1 + 3) metrics");
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.contains("| TCP_RR | transactions/s |"), "{md}");
    }
}
