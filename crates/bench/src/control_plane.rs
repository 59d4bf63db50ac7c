//! The control-plane benchmark: CNI ADD latency as the container runtime sees it (plugin start
//! to result) over many pods, agent start-to-ready with no endpoint and with all of them, and
//! the agent's resident memory.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sluice_lab::{Lab, UpOptions};

use crate::{BenchError, Machine, Summary};

#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    pub sluice: PathBuf,
    pub lab: String,
    pub pods: usize,
    /// Agent restarts measured, with no endpoint and with `pods` endpoints.
    pub restarts: usize,
}

impl ControlPlaneOptions {
    pub fn new(sluice: PathBuf) -> Self {
        // A lab of its own per run: never touch a lab someone else is using.
        Self { sluice, lab: format!("bench-cp-{}", std::process::id()), pods: 100, restarts: 5 }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneResult {
    pub machine: Machine,
    pub pods: usize,
    pub cni_add_ms: Summary,
    pub ready_empty_ms: Summary,
    pub ready_loaded_ms: Summary,
    pub rss_empty_mib: f64,
    pub rss_loaded_mib: f64,
    pub rss_after_restart_mib: f64,
}

pub async fn control_plane(opts: &ControlPlaneOptions, progress: &mut dyn FnMut(&str)) -> Result<ControlPlaneResult, BenchError> {
    let mut lab = Lab::up(UpOptions::new(&opts.lab, opts.sluice.clone()), &mut |_| {}).await?;
    let result = measure(&mut lab, opts, progress).await;
    drop(lab);
    Lab::down(&opts.lab, &mut |_| {}).await?;
    result
}

async fn measure(lab: &mut Lab, opts: &ControlPlaneOptions, progress: &mut dyn FnMut(&str)) -> Result<ControlPlaneResult, BenchError> {
    let ready_empty = restarts(lab, opts.restarts, 0).await?;
    let rss_empty_mib = agent_rss_mib(lab)?;
    progress(&format!("agent start-to-ready, no endpoint: p50 {:.1} ms", ready_empty.p50));

    let manifest = pods_manifest(opts.pods);
    lab.apply("bench-pods.yaml", &manifest, Duration::from_secs(300), &mut |_| {}).await?;
    let adds: Vec<f64> = lab.state().pods.values().filter_map(|p| p.cni_add_micros).map(|us| us as f64 / 1000.0).collect();
    if adds.len() != opts.pods {
        return Err(BenchError::Check(format!("{} of {} pods report a CNI ADD time", adds.len(), opts.pods)));
    }
    let cni_add_ms = Summary::of(&adds).ok_or_else(|| BenchError::Check("no CNI ADD sample".into()))?;
    progress(&format!("CNI ADD over {} pods: p50 {:.1} ms, p99 {:.1} ms", opts.pods, cni_add_ms.p50, cni_add_ms.p99));
    let rss_loaded_mib = agent_rss_mib(lab)?;

    let ready_loaded = restarts(lab, opts.restarts, opts.pods).await?;
    progress(&format!("agent start-to-ready, {} endpoints: p50 {:.1} ms", opts.pods, ready_loaded.p50));
    let rss_after_restart_mib = agent_rss_mib(lab)?;
    progress(&format!("agent RSS: {rss_empty_mib:.1} MiB empty, {rss_loaded_mib:.1} MiB with {} endpoints", opts.pods));

    Ok(ControlPlaneResult {
        machine: Machine::describe(),
        pods: opts.pods,
        cni_add_ms,
        ready_empty_ms: ready_empty,
        ready_loaded_ms: ready_loaded,
        rss_empty_mib,
        rss_loaded_mib,
        rss_after_restart_mib,
    })
}

/// Restarts node0's agent `n` times; checks each restored `endpoints` endpoints.
async fn restarts(lab: &mut Lab, n: usize, endpoints: usize) -> Result<Summary, BenchError> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let (status, ready) = lab.restart_agent("node0", Duration::from_secs(30)).await?;
        if status.endpoint_count != endpoints {
            return Err(BenchError::Check(format!("restarted agent reports {} endpoints, expected {endpoints}", status.endpoint_count)));
        }
        samples.push(ready.as_secs_f64() * 1000.0);
    }
    Summary::of(&samples).ok_or_else(|| BenchError::Check("no restart sample".into()))
}

pub(crate) fn agent_rss_mib(lab: &Lab) -> Result<f64, BenchError> {
    let pid = lab.state().nodes.first().and_then(|n| n.agent_pid).ok_or_else(|| BenchError::Check("node0 has no agent".into()))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::Check(format!("reading the agent's memory: {e}")))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Check("no VmRSS in /proc/<agent>/status".into()))?;
    Ok((kib / 1024.0 * 10.0).round() / 10.0)
}

fn pods_manifest(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i:03}\n  labels: {{app: bench, shard: \"s{}\"}}\nspec:\n  containers:\n  - name: main\n    command: [sleep, infinity]\n",
                i % 10
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

// === impl ControlPlaneResult ===

impl ControlPlaneResult {
    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &Summary, target: &str| {
            format!("| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {target} |\n", s.count, s.min, s.p50, s.p99, s.max)
        };
        let mut out = String::new();
        out.push_str(&format!("Machine: {}\n\n", self.machine));
        out.push_str("| measurement (ms) | samples | min | p50 | p99 | max | target |\n|---|---|---|---|---|---|---|\n");
        out.push_str(&row(&format!("CNI ADD, {} pods, runtime's view", self.pods), &self.cni_add_ms, "p99 < 50"));
        out.push_str(&row("agent start-to-ready, 0 endpoints", &self.ready_empty_ms, "< 1000"));
        out.push_str(&row(&format!("agent start-to-ready, {} endpoints", self.pods), &self.ready_loaded_ms, "< 1000"));
        out.push_str("\n| agent resident memory (MiB) | value | target |\n|---|---|---|\n");
        out.push_str(&format!("| 0 endpoints | {:.1} | |\n", self.rss_empty_mib));
        out.push_str(&format!("| {} endpoints | {:.1} | < 30 |\n", self.pods, self.rss_loaded_mib));
        out.push_str(&format!("| {} endpoints, after a restart | {:.1} | < 30 |\n", self.pods, self.rss_after_restart_mib));
        out
    }
}
