//! The control-plane scale benchmark's harness at small scale: `sluice bench scale --quick`
//! starts a real etcd per run (Debian's `etcd-server`), joins simulated nodes with the agent's
//! own cluster code in both endpoint modes, and writes results.json, results.md and results.png.
//! Every pod reached every node with its identity (the benchmark fails otherwise), and the
//! figures show what batching is for: fewer writes and watch events with slices.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::process::Command;

use common::{sluice_bin, text};

fn etcd_on_path() -> bool {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("etcd").is_file()));
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs the etcd binary (Debian package etcd-server)");
        eprintln!("note: no etcd binary on PATH (Debian package etcd-server); skipping");
    }
    found
}

#[test]
fn quick_scale_benchmark_runs_both_modes_against_etcd_and_writes_its_results() {
    if !etcd_on_path() {
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(sluice_bin())
        .args(["bench", "scale", "--quick", "--nodes", "3,6", "--pods-per-node", "6", "--groups-per-node", "2", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "sluice bench scale --quick failed: {}", text(&out));
    for file in ["results.json", "results.md", "results.png"] {
        assert!(out_dir.path().join(file).is_file(), "{file} written");
    }
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.path().join("results.json")).unwrap()).unwrap();
    let points = results["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "two node counts x two modes: {results}");
    let figure = |nodes: u64, mode: &str, name: &str| {
        let p = points.iter().find(|p| p["nodes"] == nodes && p["mode"] == mode).unwrap();
        p["median"][name].as_f64().unwrap()
    };
    for nodes in [3, 6] {
        for mode in ["slices", "per-pod"] {
            let run = &points.iter().find(|p| p["nodes"] == nodes && p["mode"] == mode).unwrap()["runs"][0];
            // 6 pods per node, 1 of them replaced: 7 started per node.
            assert_eq!(run["podsStarted"], 7 * nodes, "{mode} at {nodes}: {run}");
            assert_eq!(run["writeErrors"], 0, "{mode} at {nodes}: {run}");
            assert_eq!(run["leasesRevoked"], 0.0, "no node lost its lease: {run}");
            assert!(run["unsettled"].is_null(), "every phase settled: {run}");
            assert!(run["etcdCpuSeconds"].as_f64().unwrap() > 0.0, "etcd's CPU is read: {run}");
            assert!(run["etcdSentBytes"].as_f64().unwrap() > 0.0, "etcd's metrics are read: {run}");
        }
        // Per pod: a start and a stop each, one event per node for each.
        assert_eq!(figure(nodes, "per-pod", "writesPerPod"), 2.0);
        assert_eq!(figure(nodes, "per-pod", "eventsPerPod"), 2.0 * nodes as f64);
        // Slices: each node's six pods of two workloads arrive together: two slice writes, not six.
        assert!(figure(nodes, "slices", "writesPerPod") < 1.5, "slices batch the burst: {results}");
        assert!(figure(nodes, "slices", "eventsPerPod") < figure(nodes, "per-pod", "eventsPerPod"));
    }
    let md = std::fs::read_to_string(out_dir.path().join("results.md")).unwrap();
    assert!(md.contains("| 6 | slices |") && md.contains("Per-pod over slices"), "{md}");
}
