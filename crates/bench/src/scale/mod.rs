//! The control-plane scale benchmark (`sluice bench scale`): many simulated nodes, each with
//! its own connection and watch, against a real etcd (Debian's `etcd-server`, started fresh
//! for every run), while pods are started, churned and stopped; in both endpoint modes
//! (`slices`, `per-pod`), side by side in one invocation.
//!
//! Each simulated node runs the agent's own cluster code (join, lease, endpoint publication in
//! the mode under test, with the agent's debounce) and keeps the IP-to-identity cache a node
//! keeps, from its own watch of the endpoint kind. Reported per mode and node count: writes,
//! watch events and bytes per pod started; the LIST of the endpoint kind (an etcd range read);
//! propagation from a pod's start to every node holding its address; etcd's CPU and peak
//! memory; and the simulator's own CPU, kept apart.

mod probe;
mod report;
mod sim;
pub mod workload;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use sluice_agent::config::EndpointsMode;
use sluice_state::etcd::{EtcdServer, EtcdServerOptions, EtcdStore};

pub use report::{ScaleFigures, ScalePoint, ScaleResult};
use sim::{Change, NodeSettings, SimNode, Tally};
use workload::{Arrival, Shape, Step};

use crate::{BenchError, Summary};

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub nodes: Vec<usize>,
    pub pods_per_node: usize,
    pub groups_per_node: usize,
    pub arrival: Arrival,
    /// Pods started (or stopped) per second, cluster-wide.
    pub pod_rate: f64,
    /// Share of each node's pods replaced in the churn phase.
    pub churn_percent: usize,
    pub runs: usize,
    pub modes: Vec<EndpointsMode>,
    pub endpoints_per_slice: usize,
    pub debounce: Duration,
    /// The simulated nodes' lease TTL. Longer than an agent's default (10 s): a thousand
    /// nodes' keep-alives share this machine's cores with their watches and etcd, which a
    /// real node's do not; leases that expire anyway are counted in the results.
    pub lease_seconds: u64,
    /// Range reads of the endpoint kind after the scale-up.
    pub list_reads: usize,
    /// Longest wait for every node to catch up after a phase.
    pub settle_timeout: Duration,
    pub quick: bool,
    pub command: String,
}

impl ScaleOptions {
    pub fn new(quick: bool) -> Self {
        Self {
            nodes: if quick { vec![4, 8] } else { vec![100, 500, 1000] },
            pods_per_node: if quick { 5 } else { 20 },
            groups_per_node: if quick { 2 } else { 4 },
            arrival: Arrival::NodeBurst,
            pod_rate: 200.0,
            churn_percent: 10,
            runs: if quick { 1 } else { 3 },
            modes: vec![EndpointsMode::Slices, EndpointsMode::PerPod],
            endpoints_per_slice: sluice_model::endpoint_slices::DEFAULT_MAX_ENDPOINTS_PER_SLICE,
            debounce: Duration::from_millis(100),
            lease_seconds: 60,
            list_reads: if quick { 5 } else { 20 },
            settle_timeout: Duration::from_secs(300),
            quick,
            command: "sluice bench scale".into(),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Invalid(m));
        if self.nodes.is_empty() || self.nodes.iter().any(|&n| n == 0 || n > workload::MAX_NODES) {
            return bad(format!("--nodes {:?}: each count must be 1 to {}", self.nodes, workload::MAX_NODES));
        }
        if self.pods_per_node == 0 || self.pods_per_node > workload::MAX_PODS_PER_NODE {
            return bad(format!("--pods-per-node {}: must be 1 to {}", self.pods_per_node, workload::MAX_PODS_PER_NODE));
        }
        if self.groups_per_node == 0 || self.groups_per_node > self.pods_per_node {
            return bad(format!("--groups-per-node {}: must be 1 to --pods-per-node ({})", self.groups_per_node, self.pods_per_node));
        }
        if !(self.pod_rate.is_finite() && self.pod_rate > 0.0) {
            return bad(format!("--pod-rate {}: must be above 0", self.pod_rate));
        }
        if self.churn_percent > 100 || self.runs == 0 || self.modes.is_empty() || self.list_reads == 0 {
            return bad("--churn-percent must be 0 to 100; --runs, the modes and the LIST reads at least 1".into());
        }
        Ok(())
    }
}

/// One run of one mode at one node count.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleRun {
    pub pods_started: u64,
    pub writes: u64,
    pub publish_rounds: u64,
    pub write_errors: u64,
    pub watch_events: u64,
    pub watch_responses: u64,
    /// Keys and values the nodes received.
    pub payload_bytes: u64,
    /// What etcd sent its clients (gRPC, all of it), during the phases.
    pub etcd_sent_bytes: f64,
    /// Leases etcd revoked during the phases: nodes whose keep-alive came too late (their
    /// keys vanished and were written again). 0 in a run that measures what it claims.
    pub leases_revoked: f64,
    pub list_ms: Summary,
    pub list_keys: usize,
    pub list_bytes: usize,
    pub propagation_ms: Summary,
    pub etcd_cpu_seconds: f64,
    pub etcd_peak_rss_mib: f64,
    pub simulator_cpu_seconds: f64,
    /// Joining the nodes (not in the figures).
    pub join_seconds: f64,
    pub scale_up_seconds: f64,
    pub churn_seconds: f64,
    pub teardown_seconds: f64,
    /// Why a phase did not settle in time (the run ended there), if one did not.
    pub unsettled: Option<String>,
}

/// Runs every mode at every node count, `runs` times each, modes interleaved.
pub async fn scale(opts: &ScaleOptions, progress: &mut dyn FnMut(&str)) -> Result<ScaleResult, BenchError> {
    opts.validate()?;
    let most = *opts.nodes.iter().max().unwrap_or(&1) as u64;
    probe::raise_open_files(2 * most + 256)?;
    let mut points: Vec<ScalePoint> = Vec::new();
    for &nodes in &opts.nodes {
        let mut runs: Vec<Vec<ScaleRun>> = vec![Vec::new(); opts.modes.len()];
        let mut failures: Vec<Vec<String>> = vec![Vec::new(); opts.modes.len()];
        for round in 0..opts.runs {
            for (m, &mode) in opts.modes.iter().enumerate() {
                let mut say = |line: &str| progress(&format!("{nodes} nodes, {}, run {}: {line}", mode_name(mode), round + 1));
                // A run that does not settle is a result (the control plane did not keep up),
                // not a reason to lose the others: it is reported as failed.
                match one_run(opts, nodes, mode, &mut say).await {
                    Ok(run) => runs[m].push(run),
                    Err(e @ (BenchError::Check(_) | BenchError::Tool { .. })) => {
                        say(&format!("failed: {e}"));
                        failures[m].push(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        for (m, (runs, failures)) in runs.into_iter().zip(failures).enumerate() {
            points.push(ScalePoint::new(nodes, opts.modes[m], runs, failures));
        }
    }
    Ok(ScaleResult::new(opts, points))
}

/// The mode as the agent configuration and the CLI spell it.
pub fn mode_name(mode: EndpointsMode) -> &'static str {
    match mode {
        EndpointsMode::Slices => "slices",
        EndpointsMode::PerPod => "per-pod",
    }
}

/// The key prefix the mode's endpoints are published under.
fn endpoint_prefix(keys: &sluice_state::etcd::Keys, mode: EndpointsMode) -> String {
    match mode {
        EndpointsMode::Slices => keys.endpoint_slices(),
        EndpointsMode::PerPod => keys.endpoints(),
    }
}

async fn one_run(opts: &ScaleOptions, nodes: usize, mode: EndpointsMode, progress: &mut dyn FnMut(&str)) -> Result<ScaleRun, BenchError> {
    let shape = Shape { nodes, pods_per_node: opts.pods_per_node, groups_per_node: opts.groups_per_node };
    let dir = tempfile::tempdir().map_err(|e| BenchError::io("making a directory for etcd", e))?;
    let options = EtcdServerOptions::local(dir.path()).map_err(|e| BenchError::io("finding free ports for etcd", e))?;
    let client_addr = options.client_addr;
    let etcd = EtcdServer::start(options).await.map_err(|e| BenchError::tool("etcd", e.to_string()))?;
    let pid = etcd.pid().ok_or_else(|| BenchError::tool("etcd", "no process id"))?;
    let tally = Arc::new(Tally::new(shape));
    let settings = NodeSettings {
        etcd: etcd.client_config(),
        mode,
        endpoints_per_slice: opts.endpoints_per_slice,
        debounce: opts.debounce,
        lease_seconds: opts.lease_seconds,
    };

    let joined = Instant::now();
    let mut sims = Vec::with_capacity(nodes);
    for node in 0..nodes as u32 {
        sims.push(SimNode::start(node, &settings, tally.clone()).await?);
    }
    let join_seconds = joined.elapsed().as_secs_f64();
    progress(&format!("{nodes} nodes joined and watching in {join_seconds:.1} s"));
    let before = probe::read(pid, client_addr)?;

    // A phase that does not settle in time ends the run there: what was measured until then
    // is kept, with the reason, rather than thrown away.
    let live = (nodes * opts.pods_per_node) as i64 * nodes as i64;
    let mut unsettled: Option<String> = None;
    let mut started: Vec<u32> = Vec::new();
    let t = Instant::now();
    drive(&sims, &tally, &shape, workload::scale_up(&shape, opts.arrival), opts.pod_rate, &mut started).await;
    if let Err(e) = settle(&tally, &started, live, opts.settle_timeout, "the scale-up").await {
        unsettled = Some(e.to_string());
    }
    let scale_up_seconds = t.elapsed().as_secs_f64();
    progress(&format!("scale-up: {} pods started, settled after {scale_up_seconds:.1} s", started.len()));

    let (list_ms, list_keys, list_bytes) = list(&settings, mode, opts.list_reads).await?;
    let expected_keys = match mode {
        EndpointsMode::PerPod => nodes * opts.pods_per_node,
        EndpointsMode::Slices => 0,
    };
    if unsettled.is_none() && expected_keys != 0 && list_keys != expected_keys {
        return Err(BenchError::Check(format!("LIST returned {list_keys} endpoint records, {expected_keys} expected")));
    }

    let (mut churn_seconds, mut teardown_seconds) = (0.0, 0.0);
    if unsettled.is_none() {
        let t = Instant::now();
        drive(&sims, &tally, &shape, workload::churn(&shape, opts.churn_percent), opts.pod_rate, &mut started).await;
        if let Err(e) = settle(&tally, &started, live, opts.settle_timeout, "the churn").await {
            unsettled = Some(e.to_string());
        }
        churn_seconds = t.elapsed().as_secs_f64();
        progress(&format!("churn: settled after {churn_seconds:.1} s"));
    }
    if unsettled.is_none() {
        let churned = (opts.pods_per_node * opts.churn_percent).div_ceil(100).min(opts.pods_per_node) as u32;
        let t = Instant::now();
        let mut none = Vec::new();
        drive(&sims, &tally, &shape, workload::teardown(&shape, churned), opts.pod_rate, &mut none).await;
        if let Err(e) = settle(&tally, &[], 0, opts.settle_timeout, "the teardown").await {
            unsettled = Some(e.to_string());
        }
        teardown_seconds = t.elapsed().as_secs_f64();
        progress(&format!("teardown: settled after {teardown_seconds:.1} s"));
    }
    if let Some(why) = &unsettled {
        progress(&format!("did not settle: {why}"));
    }

    let after = probe::read(pid, client_addr)?;
    let etcd_peak_rss_mib = probe::peak_rss_mib(pid)?;
    let wrong = tally.wrong.load(Relaxed);
    if wrong != 0 {
        return Err(BenchError::Check(format!("{wrong} addresses were read with an identity other than their pod's")));
    }
    let samples: Vec<f64> = started.iter().filter_map(|&i| tally.propagation_ms(i)).collect();
    let propagation_ms = Summary::of(&samples).ok_or_else(|| BenchError::Check("no pod propagated".into()))?;
    drop(sims);
    drop(etcd);
    Ok(ScaleRun {
        pods_started: started.len() as u64,
        writes: tally.writes.load(Relaxed),
        publish_rounds: tally.publish_rounds.load(Relaxed),
        write_errors: tally.write_errors.load(Relaxed),
        watch_events: tally.events.load(Relaxed),
        watch_responses: tally.responses.load(Relaxed),
        payload_bytes: tally.payload_bytes.load(Relaxed),
        etcd_sent_bytes: after.etcd_sent_bytes - before.etcd_sent_bytes,
        leases_revoked: after.leases_revoked - before.leases_revoked,
        list_ms,
        list_keys,
        list_bytes,
        propagation_ms,
        etcd_cpu_seconds: after.etcd_cpu_seconds - before.etcd_cpu_seconds,
        etcd_peak_rss_mib,
        simulator_cpu_seconds: after.simulator_cpu_seconds - before.simulator_cpu_seconds,
        join_seconds,
        scale_up_seconds,
        churn_seconds,
        teardown_seconds,
        unsettled,
    })
}

/// Hands each batch of steps to its nodes, batches paced at `rate` pods per second; records
/// the pods started.
async fn drive(sims: &[SimNode], tally: &Tally, shape: &Shape, batches: Vec<Vec<Step>>, rate: f64, started: &mut Vec<u32>) {
    let begin = tokio::time::Instant::now();
    let mut pods_so_far = 0usize;
    for batch in batches {
        tokio::time::sleep_until(begin + Duration::from_secs_f64(pods_so_far as f64 / rate)).await;
        pods_so_far += batch.len();
        for step in batch {
            match step {
                Step::Start { node, slot } => {
                    let pod = shape.pod(node, slot);
                    started.push(pod.index);
                    sims[node as usize].send(Change::Start(pod), tally);
                }
                Step::Stop { node, slot } => sims[node as usize].send(Change::Stop(shape.pod(node, slot)), tally),
                Step::Replace { node, old, new } => {
                    let pod = shape.pod(node, new);
                    started.push(pod.index);
                    sims[node as usize].send(Change::Stop(shape.pod(node, old)), tally);
                    sims[node as usize].send(Change::Start(pod), tally);
                }
            }
        }
    }
}

/// Waits until every node's cache holds `entries` addresses and every pod of `started` has
/// reached every node.
async fn settle(tally: &Tally, started: &[u32], entries: i64, timeout: Duration, phase: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = tally.cache_entries.load(Relaxed);
        let missing = started.iter().filter(|&&i| !tally.complete(i)).count();
        if have == entries && missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Check(format!(
                "after {phase}, {timeout:?} on: the nodes' caches hold {have} entries ({entries} expected), {missing} pods are not on every node"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `reads` range reads of the whole endpoint kind, as a node's first LIST: latencies, keys
/// and bytes.
async fn list(settings: &NodeSettings, mode: EndpointsMode, reads: usize) -> Result<(Summary, usize, usize), BenchError> {
    // A connection of its own, as a node starting up would have.
    let store = EtcdStore::connect(&settings.etcd).await.map_err(|e| BenchError::Check(format!("connecting for LIST: {e}")))?;
    let prefix = endpoint_prefix(store.keys(), mode);
    let mut kv = store.client().kv_client().max_decoding_message_size(512 << 20);
    let (mut samples, mut keys, mut bytes) = (Vec::new(), 0, 0);
    for _ in 0..reads {
        let t = Instant::now();
        let response = kv
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| BenchError::Check(format!("LIST {prefix}: {e}")))?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        keys = response.kvs().len();
        bytes = response.kvs().iter().map(|kv| kv.key().len() + kv.value().len()).sum();
    }
    let summary = Summary::of(&samples).ok_or_else(|| BenchError::Check("no LIST made".into()))?;
    Ok((summary, keys, bytes))
}
