//! The policy benchmark: how long a node takes to compile 1,000 NetworkPolicies over a cluster
//! of 1,000 pods and to program the entries of its local pods into the real (pinned) kernel
//! maps, how many entries each endpoint gets, and what a one-policy change costs. The engine
//! and the agent's programmer run in this process against a datapath loaded on a private
//! bpffs, as the agent's policy loop runs them; nothing is attached, no traffic flows. Then
//! what policy costs a packet ([`crate::policy_packet`]).

use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_agent::policy::program::{LocalEndpoint, PolicyProgrammer};
use sluice_datapath::BpfDatapath;
use sluice_policy::synthetic::{network_policies, view, Shape};

use crate::policy_packet::{per_packet, PacketCost};
use crate::{BenchError, Machine, Summary};

#[derive(Debug, Clone)]
pub struct PolicyOptions {
    pub runs: usize,
    pub shape: Shape,
    /// How the run was started, quoted in the report.
    pub command: String,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    pub compile_ms: f64,
    pub program_ms: f64,
    pub change_compile_ms: f64,
    pub change_program_ms: f64,
    pub change_endpoints: usize,
    pub change_entries_written: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub machine: Machine,
    pub command: String,
    pub policies: usize,
    pub pods: usize,
    pub identities: usize,
    pub local_pods: usize,
    pub entries_mean: f64,
    pub entries_max: usize,
    pub entries_total: usize,
    pub runs: Vec<PolicyRun>,
    pub compile_ms: Summary,
    pub program_ms: Summary,
    pub total_ms: Summary,
    pub change_ms: Summary,
    /// ns per packet of the from-pod program, per way the sender's egress policy answers.
    pub per_packet: Vec<PacketCost>,
}

/// Samples per packet case, and runs per sample.
const PACKET_SAMPLES: usize = 21;
const PACKET_REPEAT: u32 = 300_000;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the benchmark `opts.runs` times, each on a fresh datapath.
pub fn policy(opts: &PolicyOptions, progress: &mut dyn FnMut(&str)) -> Result<PolicyReport, BenchError> {
    let shape = opts.shape;
    let objects = network_policies(&shape, 0);
    let changed = network_policies(&shape, 1);
    let mut runs = Vec::new();
    let mut counts = (0, 0, 0, 0.0, 0, 0);
    for r in 0..opts.runs.max(1) {
        let dir = tempfile::tempdir().map_err(|e| BenchError::Check(format!("temporary directory: {e}")))?;
        sluice_datapath::ensure_bpffs(dir.path())?;
        let result = (|| -> Result<PolicyRun, BenchError> {
            let mut dp = BpfDatapath::load(dir.path(), sluice_datapath::HostRouting::Bpf)?;
            let started = Instant::now();
            let lowered: Vec<_> = objects.iter().map(sluice_policy::lower_network_policy).collect();
            let cluster = view(&shape, &lowered);
            let compiled = sluice_policy::compile(&lowered, &cluster);
            let compile = started.elapsed();
            let locals = local_endpoints(&cluster);
            let started = Instant::now();
            let mut programmer = PolicyProgrammer::default();
            programmer.program(&mut dp, &compiled, &locals)?;
            let program = started.elapsed();
            let per: Vec<usize> = compiled
                .endpoints
                .values()
                .map(|e| [&e.ingress, &e.egress].iter().map(|t| t.entries.len() + t.by_address.len()).sum())
                .collect();
            let identities: std::collections::BTreeSet<u32> = cluster.endpoints.iter().map(|e| e.identity).collect();
            counts = (
                lowered.len(),
                cluster.endpoints.len(),
                identities.len(),
                per.iter().sum::<usize>() as f64 / per.len().max(1) as f64,
                per.iter().copied().max().unwrap_or(0),
                programmer.entry_count(),
            );
            // One policy changes (a port): recompile everything, write what changed.
            let started = Instant::now();
            let lowered: Vec<_> = changed.iter().map(sluice_policy::lower_network_policy).collect();
            let compiled = sluice_policy::compile(&lowered, &view(&shape, &lowered));
            let change_compile = started.elapsed();
            let report = programmer.program(&mut dp, &compiled, &locals)?;
            let change_total = started.elapsed();
            Ok(PolicyRun {
                compile_ms: ms(compile),
                program_ms: ms(program),
                change_compile_ms: ms(change_compile),
                change_program_ms: ms(change_total - change_compile),
                change_endpoints: report.endpoints_changed,
                change_entries_written: report.entries_written,
            })
        })();
        let _ = sluice_datapath::unmount_bpffs(dir.path());
        let run = result?;
        progress(&format!(
            "run {}: compile {:.0} ms, program {:.0} ms; one policy changed: {:.0} + {:.0} ms, {} endpoints rewritten",
            r + 1,
            run.compile_ms,
            run.program_ms,
            run.change_compile_ms,
            run.change_program_ms,
            run.change_endpoints
        ));
        runs.push(run);
    }
    progress(&format!("per packet: {PACKET_SAMPLES} samples of {PACKET_REPEAT} runs per case"));
    let per_packet = per_packet(PACKET_SAMPLES, PACKET_REPEAT)?;
    let summary = |f: &dyn Fn(&PolicyRun) -> f64| {
        Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).ok_or_else(|| BenchError::Check("no runs".into()))
    };
    Ok(PolicyReport {
        machine: Machine::describe(),
        command: opts.command.clone(),
        policies: counts.0,
        pods: counts.1,
        identities: counts.2,
        local_pods: runs.first().map(|_| shape.namespaces * shape.pods_per_namespace / shape.local_every.max(1)).unwrap_or(0),
        entries_mean: counts.3,
        entries_max: counts.4,
        entries_total: counts.5,
        compile_ms: summary(&|r| r.compile_ms)?,
        program_ms: summary(&|r| r.program_ms)?,
        total_ms: summary(&|r| r.compile_ms + r.program_ms)?,
        change_ms: summary(&|r| r.change_compile_ms + r.change_program_ms)?,
        runs,
        per_packet,
    })
}

impl PolicyReport {
    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &Summary| format!("| {name} | {:.0} | {:.0} | {:.0} |\n", s.p50, s.min, s.max);
        let mut out = format!(
            "{} NetworkPolicies over {} pods ({} identities); this node holds {} of the pods.\n\
             Entries per local endpoint: mean {:.0}, max {}; {} entries in the policy map.\n\n\
             | step (ms, {} runs) | median | min | max |\n|---|---|---|---|\n",
            self.policies,
            self.pods,
            self.identities,
            self.local_pods,
            self.entries_mean,
            self.entries_max,
            self.entries_total,
            self.runs.len()
        );
        out += &row("compile (lower, view, compile)", &self.compile_ms);
        out += &row("program the maps", &self.program_ms);
        out += &row("total", &self.total_ms);
        out += &row("one policy changed: compile + program", &self.change_ms);
        out += &format!(
            "\nThe from-pod program per packet (BPF_PROG_TEST_RUN, {PACKET_SAMPLES} samples of {PACKET_REPEAT} runs; \
             an established TCP flow, legacy host routing):\n\n\
             | sender's egress policy | min ns | median | max |\n|---|---|---|---|\n"
        );
        for c in &self.per_packet {
            out += &format!("| {} | {:.0} | {:.0} | {:.0} |\n", c.case, c.ns.min, c.ns.p50, c.ns.max);
        }
        out
    }
}

/// The node's own endpoints of `cluster`, numbered as the agent would number them.
pub fn local_endpoints(cluster: &sluice_policy::ClusterView) -> Vec<LocalEndpoint> {
    cluster
        .endpoints
        .iter()
        .filter(|e| e.local)
        .enumerate()
        .map(|(i, e)| LocalEndpoint { id: i as u32 + 1, pod: e.key.clone(), ips: e.ips.clone() })
        .collect()
}
