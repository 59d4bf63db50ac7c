//! The datapath benchmark's harness at small scale: `sluice bench --quick` builds every
//! configuration, runs every workload, checks each configuration is what it claims, computes
//! the ratios and writes results.json, results.md and results.png, within two minutes. TCP_CRR to
//! a ClusterIP runs with 10 services in the three configurations that balance services; TCP_STREAM
//! across nodes in the configurations with a second node. Every TCP_STREAM reports its CPU cost
//! per gigabit.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{privileged, sluice_bin, text};

const CONFIGURATIONS: [&str; 7] =
    ["limit", "sluice-bpf", "sluice-bpf-nomon", "sluice-bpf-policy", "sluice-legacy", "classic", "classic-nft"];
const WORKLOADS: [&str; 4] = ["tcp-stream-1", "tcp-stream-4", "tcp-rr", "tcp-crr"];
const SERVICE_CONFIGURATIONS: [&str; 3] = ["sluice-bpf", "classic", "classic-nft"];
const SERVICE_WORKLOAD: &str = "tcp-crr-svc-10";
const CROSS_NODE_CONFIGURATIONS: [&str; 5] = ["limit", "sluice-bpf", "sluice-legacy", "classic", "classic-nft"];
/// The cross-node workloads and the metrics each reports.
const CROSS_NODE_WORKLOADS: [(&str, &[&str]); 2] =
    [("tcp-stream-xnode", &["throughput", "cpuMsPerGbit"]), ("tcp-rr-xnode", &["transactionsPerSecond", "latencyP50", "latencyP99"])];

#[test]
fn quick_datapath_benchmark_measures_every_configuration_and_writes_its_results() {
    if !privileged("quick_datapath_benchmark_measures_every_configuration_and_writes_its_results") {
        return;
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let child = Command::new(sluice_bin())
        .args(["bench", "--quick", "--out"])
        .arg(out_dir.path())
        .env_remove("SLUICE_LAB")
        .env_remove("SLUICE_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice bench");
    // The run's namespaces and labs are named after its process.
    let run = child.id() % 100_000;
    let out = child.wait_with_output().expect("wait for sluice bench");
    let took = started.elapsed();
    assert!(out.status.success(), "sluice bench --quick failed: {}", text(&out));
    assert!(took < Duration::from_secs(120), "the quick benchmark took {took:?}, more than 2 minutes");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("results.json")).expect("results.json written"))
            .expect("results.json parses");
    let built: Vec<&str> = json["configurations"].as_array().expect("configurations").iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(built, CONFIGURATIONS, "every configuration was built");

    let results = json["results"].as_array().expect("results");
    for config in CONFIGURATIONS {
        for workload in WORKLOADS {
            let series: Vec<&serde_json::Value> =
                results.iter().filter(|s| s["configuration"] == config && s["workload"] == workload).collect();
            assert!(!series.is_empty(), "{workload} produced numbers in {config}");
            for s in series {
                let median = s["median"].as_f64().expect("median");
                assert!(median > 0.0, "{workload} {} in {config} is positive: {s}", s["metric"]);
                assert!(s["vsLimit"].as_f64().is_some(), "ratio against limit computed for {config} {workload}: {s}");
                assert!(s["vsClassic"].as_f64().is_some(), "ratio against classic computed for {config} {workload}: {s}");
            }
        }
    }
    for config in SERVICE_CONFIGURATIONS {
        let series: Vec<&serde_json::Value> =
            results.iter().filter(|s| s["configuration"] == config && s["workload"] == SERVICE_WORKLOAD).collect();
        assert_eq!(series.len(), 3, "{SERVICE_WORKLOAD} gave transactions/s, p50 and p99 in {config}");
        for s in series {
            assert!(s["median"].as_f64().expect("median") > 0.0, "{SERVICE_WORKLOAD} {} in {config} is positive: {s}", s["metric"]);
            assert!(s["vsClassic"].as_f64().is_some(), "ratio against classic computed for {config} {SERVICE_WORKLOAD}: {s}");
        }
    }
    for (workload, want) in CROSS_NODE_WORKLOADS {
        for config in CROSS_NODE_CONFIGURATIONS {
            let metrics: Vec<&str> = results
                .iter()
                .filter(|s| s["configuration"] == config && s["workload"] == workload)
                .inspect(|s| assert!(s["median"].as_f64().expect("median") > 0.0, "{workload} in {config} is positive: {s}"))
                .map(|s| s["metric"].as_str().unwrap())
                .collect();
            assert_eq!(metrics, want, "{workload} gave {want:?} in {config}");
        }
        let runs = results.iter().filter(|s| s["workload"] == workload).count();
        assert_eq!(runs, CROSS_NODE_CONFIGURATIONS.len() * want.len(), "only configurations with a second node run {workload}");
    }
    for workload in ["tcp-stream-1", "tcp-stream-4"] {
        let with_cpu = results.iter().filter(|s| s["workload"] == workload && s["metric"] == "cpuMsPerGbit").count();
        assert_eq!(with_cpu, CONFIGURATIONS.len(), "{workload} reports CPU per gigabit in every configuration");
    }
    let service_runs = results.iter().filter(|s| s["workload"] == SERVICE_WORKLOAD).count();
    assert_eq!(service_runs, SERVICE_CONFIGURATIONS.len() * 3, "only sluice-bpf, classic and classic-nft run {SERVICE_WORKLOAD}");
    let programming = json["programming"].as_array().expect("programming");
    assert_eq!(programming.len(), SERVICE_CONFIGURATIONS.len(), "one programming time per configuration: {programming:?}");
    assert!(
        programming.iter().all(|p| p["services"] == 10 && p["seconds"].as_f64().is_some_and(|s| s > 0.0)),
        "programming times of 10 services: {programming:?}"
    );

    let checks = json["checks"].as_array().expect("checks");
    assert_eq!(
        checks.len(),
        CONFIGURATIONS.len() * WORKLOADS.len()
            + SERVICE_CONFIGURATIONS.len()
            + CROSS_NODE_CONFIGURATIONS.len() * CROSS_NODE_WORKLOADS.len(),
        "one passed check per run: {checks:?}"
    );
    let targets = json["targets"].as_array().expect("targets");
    for t in targets {
        let measured = t["workload"] != "tcp-crr-svc-10000";
        assert_eq!(t["ratio"].as_f64().is_some(), measured, "a target has a ratio exactly when --quick measures its workload: {t}");
    }

    let md = std::fs::read_to_string(out_dir.path().join("results.md")).expect("results.md written");
    assert!(
        md.contains(
            "| workload | metric | limit | sluice-bpf | sluice-bpf-nomon | sluice-bpf-policy | sluice-legacy | classic | classic-nft |"
        ),
        "results.md has the table: {md}"
    );
    assert!(md.contains("| services | sluice-bpf | classic | classic-nft |"), "results.md has the programming times: {md}");
    let png = std::fs::read(out_dir.path().join("results.png")).expect("results.png written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "results.png is a PNG");
    assert!(png.len() > 10_000, "results.png has a chart in it ({} bytes)", png.len());

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("round 1/1"), "progress is printed as it goes: {stderr}");
    for config in CONFIGURATIONS {
        assert!(stderr.contains(&format!("{config} removed")), "{config} was removed: {stderr}");
    }
    let namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let left: Vec<&String> = namespaces.iter().filter(|n| n.starts_with(&format!("sluice-bench-{run}-"))).collect();
    assert!(left.is_empty(), "the benchmark left namespaces behind: {left:?}");
    for mode in ["bpf", "legacy"] {
        let lab = format!("/run/sluice/labs/bench-{run}-{mode}");
        assert!(!std::path::Path::new(&lab).exists(), "the benchmark left lab {lab} behind");
    }
}
