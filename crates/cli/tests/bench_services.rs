//! The services benchmark's harness at small scale: `sluice bench services --counts 10 --runs 1`
//! builds a lab, programs ten services, checks the maps hold them, times a one-service change,
//! writes results.json and results.md, and removes its lab.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::process::{Command, Stdio};

use common::{privileged, sluice_bin, text};

#[test]
fn services_benchmark_at_ten_services_writes_positive_figures_and_removes_its_lab() {
    if !privileged("services_benchmark_at_ten_services_writes_positive_figures_and_removes_its_lab") {
        return;
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(sluice_bin())
        .args(["bench", "services", "--counts", "10", "--backends", "3", "--runs", "1", "--out"])
        .arg(out_dir.path())
        .env_remove("SLUICE_LAB")
        .env_remove("SLUICE_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice bench services");
    // The run's labs are named after its process.
    let prefix = format!("bsvc-{}-", child.id() % 100_000);
    let out = child.wait_with_output().expect("wait for sluice bench services");
    assert!(out.status.success(), "sluice bench services failed: {}", text(&out));

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("results.json")).expect("results.json written"))
            .expect("results.json parses");
    let points = json["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "one point for --counts 10: {json}");
    let point = &points[0];
    assert_eq!(point["services"], 10, "the point is 10 services: {point}");
    assert_eq!(point["distinctBackends"], 30, "10 services x 3 distinct backends: {point}");
    for figure in
        ["writeToProgrammedMs", "agentRoundMs", "rssEmptyMib", "rssProgrammedMib", "oneChangeAgentRoundMs", "oneChangeWriteToProgrammedMs"]
    {
        let median = point[figure]["p50"].as_f64().unwrap_or(0.0);
        assert!(median > 0.0, "{figure} is positive: {point}");
    }
    let run = &point["runs"][0];
    assert_eq!(run["mapEntries"]["lb_frontends"], 10, "lb_frontends holds the 10 frontends: {run}");
    assert_eq!(run["mapEntries"]["lb_slots"], 30, "lb_slots holds 10 x 3 slots: {run}");

    let md = std::fs::read_to_string(out_dir.path().join("results.md")).expect("results.md written");
    assert!(md.contains("| services | backends each |"), "results.md has the table: {md}");
    assert!(md.contains("| 10 | 3 | 30 |"), "results.md has the row of 10 services: {md}");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run 1/1"), "progress is printed as it goes: {stderr}");
    let left: Vec<String> = std::fs::read_dir(sluice_lab::names::LABS_DIR)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let left: Vec<&String> = left.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "the benchmark left labs behind: {left:?}");
}
