//! The layer-7 benchmark's harness at small scale: `sluice bench l7 --runs 1 --seconds 1`
//! builds its lab, checks each configuration is what it claims (a POST gets 403 only with
//! HTTP rules), runs wrk in every case and writes results.json and results.md.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use common::{privileged, sluice_bin, text};

#[test]
fn quick_l7_benchmark_measures_every_case_and_writes_its_results() {
    if !privileged("quick_l7_benchmark_measures_every_case_and_writes_its_results") {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args(["bench", "l7", "--runs", "1", "--seconds", "1", "--out"])
        .arg(out_dir.path())
        .env_remove("SLUICE_LAB")
        .output()
        .expect("run sluice bench l7");
    assert!(out.status.success(), "sluice bench l7: {}", text(&out));
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.path().join("results.json")).unwrap()).unwrap();
    let cases = results["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 9, "3 configurations x 3 loads: {results}");
    for configuration in ["direct", "l4-policy", "http-rules"] {
        for (port, connections) in [(80, 1), (80, 16), (81, 16)] {
            let case = cases
                .iter()
                .find(|c| c["configuration"] == configuration && c["port"] == port && c["connections"] == connections)
                .unwrap_or_else(|| panic!("{configuration} port {port}, {connections} connection(s) measured: {results}"));
            let rps = case["requestsPerSecond"]["p50"].as_f64().unwrap_or(0.0);
            assert!(rps > 0.0, "{configuration} port {port}: requests were answered: {case}");
            assert!(case["p99Micros"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "latency measured: {case}");
        }
    }
    let markdown = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    assert!(markdown.contains("| http-rules | 80 | 16 |"), "{markdown}");
    let labs = std::fs::read_dir("/run/sluice/labs")
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("bench-l7-")).count());
    assert_eq!(labs.unwrap_or(0), 0, "the benchmark's lab is removed");
}
