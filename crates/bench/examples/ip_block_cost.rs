//! What matching Kubernetes ipBlocks by address costs the control plane: the policy
//! benchmark's synthetic cluster (1,000 NetworkPolicies, each with an egress ipBlock) compiled,
//! and programmed into a fresh datapath, with its ipBlocks read as upstream defines them
//! (entries by address) and, for comparison, as outside-only CIDRs (what Sluice did before).
//! Compiling is timed alone (the cluster view built beforehand), programming alone; the two
//! readings alternate round by round. Run as root with `cargo run --release -p sluice-bench
//! --example ip_block_cost`; an optional argument sets the rounds (default 20).

use std::time::Instant;

use sluice_agent::policy::program::{LocalEndpoint, PolicyProgrammer};
use sluice_datapath::BpfDatapath;
use sluice_policy::synthetic::{network_policies, view, Shape};
use sluice_policy::{ClusterView, Compiled, Peer, Policy};

type Error = Box<dyn std::error::Error>;

/// Milliseconds `compile` takes.
fn compile_ms(policies: &[Policy], cluster: &ClusterView) -> f64 {
    let started = Instant::now();
    let compiled = sluice_policy::compile(policies, cluster);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    drop(compiled);
    ms
}

/// Milliseconds programming `compiled` into a fresh datapath takes, and the entries written.
fn program_ms(compiled: &Compiled, locals: &[LocalEndpoint]) -> Result<(f64, usize), Error> {
    let dir = tempfile::tempdir()?;
    sluice_datapath::ensure_bpffs(dir.path())?;
    let result = (|| -> Result<(f64, usize), Error> {
        let mut dp = BpfDatapath::load(dir.path(), sluice_datapath::HostRouting::Bpf)?;
        let started = Instant::now();
        let mut programmer = PolicyProgrammer::default();
        programmer.program(&mut dp, compiled, locals)?;
        Ok((started.elapsed().as_secs_f64() * 1e3, programmer.entry_count()))
    })();
    let _ = sluice_datapath::unmount_bpffs(dir.path());
    result
}

/// The policies with every ipBlock read as a Sluice CIDR rule (outside addresses only).
fn outside_only(policies: &[Policy]) -> Vec<Policy> {
    let mut out = policies.to_vec();
    for p in &mut out {
        for d in [&mut p.ingress, &mut p.egress].into_iter().flatten() {
            for peer in d.rules.iter_mut().flat_map(|r| r.peers.iter_mut().flatten()) {
                if let Peer::IpBlock { cidr, except } = peer {
                    *peer = Peer::Cidr { cidr: *cidr, except: std::mem::take(except) };
                }
            }
        }
    }
    out
}

/// (median, min).
fn summary(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), v.first().copied().unwrap_or(f64::NAN))
}

fn main() -> Result<(), Error> {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(20);
    let shape = Shape::THOUSAND;
    let by_address: Vec<Policy> = network_policies(&shape, 0).iter().map(sluice_policy::lower_network_policy).collect();
    let outside = outside_only(&by_address);
    let cluster = view(&shape, &by_address);
    let locals = sluice_bench::local_endpoints(&cluster);
    let variants = [("ipBlocks by address (upstream)", &by_address), ("ipBlocks as outside-only CIDRs", &outside)];
    let compiled: Vec<Compiled> = variants.iter().map(|(_, p)| sluice_policy::compile(p, &cluster)).collect();
    let (mut compile, mut program, mut entries) = (vec![Vec::new(), Vec::new()], vec![Vec::new(), Vec::new()], [0, 0]);
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer machine.
        for i in [round % 2, 1 - round % 2] {
            compile[i].push(compile_ms(variants[i].1, &cluster));
            let (ms, n) = program_ms(&compiled[i], &locals)?;
            program[i].push(ms);
            entries[i] = n;
        }
    }
    for (i, (name, _)) in variants.iter().enumerate() {
        let (c, c_min) = summary(compile[i].clone());
        let (p, p_min) = summary(program[i].clone());
        println!(
            "{name}: compile median {c:.1} ms (min {c_min:.1}), program median {p:.1} ms (min {p_min:.1}); {} entries, {} ipBlock prefixes; {rounds} rounds",
            entries[i],
            compiled[i].ipblocks.len()
        );
    }
    Ok(())
}
