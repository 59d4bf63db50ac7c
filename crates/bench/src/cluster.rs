//! The cluster benchmark: a lab of several nodes on etcd, as a user would run one. How long a
//! pod takes from `apply` until its address is in every node's IP-to-identity cache (the
//! pinned `ipcache` map, read from outside the agents) with the same identity everywhere; and
//! how long a NetworkPolicy takes from its write to etcd until every node enforces it (every
//! pod's ingress mode in the pinned `policy_endpoints` map). Each run builds a fresh lab and
//! removes it, also on failure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Serialize;
use sluice_lab::{Lab, UpOptions};

use crate::{BenchError, Machine, Summary};

/// How often the nodes' maps are read while waiting.
const POLL: Duration = Duration::from_millis(2);
/// Longest wait for one pod or the policy to reach every node.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub sluice: PathBuf,
    pub nodes: usize,
    pub pods: usize,
    pub runs: usize,
    /// Labs are named `<prefix>-<k>`.
    pub lab_prefix: String,
    /// How the run was started, quoted in the report.
    pub command: String,
}

impl ClusterOptions {
    pub fn new(sluice: PathBuf) -> Self {
        Self {
            sluice,
            nodes: 3,
            pods: 100,
            runs: 3,
            lab_prefix: format!("bcl-{}", std::process::id() % 100_000),
            command: "sluice bench cluster".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterResult {
    pub machine: Machine,
    pub command: String,
    pub nodes: usize,
    pub pods: usize,
    pub runs: Vec<ClusterRun>,
    /// `apply` of one pod until its address is in every node's ipcache, all runs together.
    pub pod_to_every_ipcache_ms: Summary,
    /// The part after the pod runs with its address (CNI ADD returned): the control plane's
    /// own latency, etcd to every agent.
    pub address_to_every_ipcache_ms: Summary,
    /// A NetworkPolicy's write until every node enforces it on every selected pod.
    pub policy_to_every_node_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRun {
    pub pod_to_every_ipcache_ms: Summary,
    pub address_to_every_ipcache_ms: Summary,
    pub policy_to_every_node_ms: f64,
    /// Distinct identities the pods got (the same number on every node is checked).
    pub identities: usize,
}

pub async fn cluster(opts: &ClusterOptions, progress: &mut dyn FnMut(&str)) -> Result<ClusterResult, BenchError> {
    if opts.nodes < 2 || opts.pods == 0 {
        return Err(BenchError::Invalid(format!(
            "--nodes {} and --pods {}: a cluster needs two nodes or more and one pod or more",
            opts.nodes, opts.pods
        )));
    }
    let mut runs = Vec::new();
    let (mut all_pod, mut all_addr, mut all_policy) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=opts.runs.max(1) {
        let name = format!("{}-{run}", opts.lab_prefix);
        progress(&format!("run {run}/{}: lab {name}, {} nodes on etcd, {} pods", opts.runs.max(1), opts.nodes, opts.pods));
        let up = UpOptions { nodes: opts.nodes, datastore: "etcd".into(), ..UpOptions::new(&name, opts.sluice.clone()) };
        let mut lab = Lab::up(up, &mut |_| {}).await?;
        let result = measure(&mut lab, opts, progress).await;
        drop(lab);
        let down = Lab::down(&name, &mut |_| {}).await;
        let (run, pod, addr, policy) = result?;
        down?;
        progress(&format!(
            "  pod applied -> every ipcache p50 {:.0} ms p99 {:.0} ms (address -> every ipcache p50 {:.1} ms p99 {:.1} ms); policy -> every node {:.0} ms",
            run.pod_to_every_ipcache_ms.p50, run.pod_to_every_ipcache_ms.p99, run.address_to_every_ipcache_ms.p50, run.address_to_every_ipcache_ms.p99, run.policy_to_every_node_ms
        ));
        all_pod.extend(pod);
        all_addr.extend(addr);
        all_policy.push(policy);
        runs.push(run);
    }
    let summary = |v: &[f64]| Summary::of(v).ok_or_else(|| BenchError::Check("no samples".into()));
    Ok(ClusterResult {
        machine: Machine::describe(),
        command: opts.command.clone(),
        nodes: opts.nodes,
        pods: opts.pods,
        pod_to_every_ipcache_ms: summary(&all_pod)?,
        address_to_every_ipcache_ms: summary(&all_addr)?,
        policy_to_every_node_ms: summary(&all_policy)?,
        runs,
    })
}

type Samples = (ClusterRun, Vec<f64>, Vec<f64>, f64);

async fn measure(lab: &mut Lab, opts: &ClusterOptions, progress: &mut dyn FnMut(&str)) -> Result<Samples, BenchError> {
    let pins: Vec<(String, PathBuf)> = lab.state().nodes.iter().map(|n| (n.name.clone(), n.bpffs.clone())).collect();
    let (mut pod_ms, mut addr_ms) = (Vec::new(), Vec::new());
    let mut identities = BTreeMap::new();
    for i in 0..opts.pods {
        let node = format!("node{}", i % opts.nodes);
        // Ten label sets: pods share identities as replicas of a deployment do.
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: bench-{i}, namespace: default, labels: {{app: bench-{}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, command: [sleep, infinity]}}]\n",
            i % 10
        );
        let started = Instant::now();
        lab.apply("bench.yaml", &manifest, TIMEOUT, &mut |_| {}).await?;
        let running = started.elapsed();
        let pod = lab
            .pods(Some("default"))?
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(&format!("bench-{i}")))
            .ok_or_else(|| BenchError::Check(format!("pod bench-{i} not listed")))?;
        let ip: IpAddr = pod
            .status
            .and_then(|s| s.pod_ip)
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| BenchError::Check(format!("pod bench-{i} has no address")))?;
        let prefix = IpNet::from(ip);
        let ids = wait_in_every_ipcache(&pins, prefix).await?;
        let everywhere = started.elapsed();
        let first = ids[0];
        if ids.iter().any(|id| *id != first) {
            return Err(BenchError::Check(format!(
                "pod bench-{i} ({ip}) has identities {ids:?} on the nodes: not one cluster-wide number"
            )));
        }
        identities.insert(first, ());
        pod_ms.push(everywhere.as_secs_f64() * 1e3);
        addr_ms.push((everywhere - running).as_secs_f64() * 1e3);
        if (i + 1) % 25 == 0 {
            progress(&format!("  {} pods", i + 1));
        }
    }

    // A policy selecting every bench pod: each node flips its pods' ingress to enforcing.
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: default}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n";
    let started = Instant::now();
    lab.apply("bench-policy.yaml", policy, TIMEOUT, &mut |_| {}).await?;
    wait_enforced(&pins, opts.pods).await?;
    let policy_ms = started.elapsed().as_secs_f64() * 1e3;

    let summary = |v: &[f64]| Summary::of(v).ok_or_else(|| BenchError::Check("no samples".into()));
    let run = ClusterRun {
        pod_to_every_ipcache_ms: summary(&pod_ms)?,
        address_to_every_ipcache_ms: summary(&addr_ms)?,
        policy_to_every_node_ms: policy_ms,
        identities: identities.len(),
    };
    Ok((run, pod_ms, addr_ms, policy_ms))
}

/// Waits until `prefix` is in every node's ipcache; returns its identity on each node.
async fn wait_in_every_ipcache(pins: &[(String, PathBuf)], prefix: IpNet) -> Result<Vec<u32>, BenchError> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut ids = Vec::new();
        for (_, pin) in pins {
            let cache = sluice_datapath::policy::pinned_ipcache(pin)?;
            if let Some((_, id)) = cache.iter().find(|(p, _)| *p == prefix) {
                ids.push(*id);
            }
        }
        if ids.len() == pins.len() {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Check(format!("{prefix} reached {} of {} nodes' ipcache within {TIMEOUT:?}", ids.len(), pins.len())));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the nodes enforce ingress policy on `pods` endpoints in all.
async fn wait_enforced(pins: &[(String, PathBuf)], pods: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut enforced = 0;
        for (_, pin) in pins {
            enforced += sluice_datapath::policy::pinned_policy_endpoints(pin)?
                .iter()
                .filter(|(_, e)| u32::from(e.ingress_mode) == sluice_abi::SLUICE_POLICY_MODE_ENFORCE)
                .count();
        }
        if enforced >= pods {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Check(format!("{enforced} of {pods} pods enforce the policy within {TIMEOUT:?}")));
        }
        tokio::time::sleep(POLL).await;
    }
}

// === impl ClusterResult ===

impl ClusterResult {
    pub fn markdown(&self) -> String {
        let cell = |s: &Summary| format!("{:.1} / {:.1} (max {:.1})", s.p50, s.p99, s.max);
        let mut out = String::new();
        out.push_str(&format!("Machine: {}\n\nCommand: `{}`\n\n", self.machine, self.command));
        out.push_str(&format!(
            "{} run{}, each a fresh lab of {} nodes on etcd (TLS), {} pods applied one at a time (ten label sets), then one NetworkPolicy selecting them all. p50 / p99 over every pod of every run.\n\n",
            self.runs.len(),
            if self.runs.len() == 1 { "" } else { "s" },
            self.nodes,
            self.pods
        ));
        out.push_str("| measure | p50 / p99 (ms) |\n|---|---|\n");
        out.push_str(&format!("| pod applied → in every node's ipcache | {} |\n", cell(&self.pod_to_every_ipcache_ms)));
        out.push_str(&format!(
            "| pod has its address (CNI ADD done) → in every node's ipcache | {} |\n",
            cell(&self.address_to_every_ipcache_ms)
        ));
        out.push_str(&format!("| policy written → enforced on every node (per run) | {} |\n", cell(&self.policy_to_every_node_ms)));
        out.push_str("\nEvery pod had the same identity number in every node's ipcache (checked for each pod).\n");
        out
    }

    /// Writes results.json and results.md into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> Result<(), BenchError> {
        crate::report::write_results(dir, self, &self.markdown())
    }
}
