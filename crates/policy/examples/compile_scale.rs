//! Compiles 1,000 NetworkPolicies over 1,000 pods (`sluice_policy::synthetic`) and prints how
//! long it took and how many entries each endpoint got. Run with `cargo run --release -p
//! sluice-policy --example compile_scale`; an optional argument sets how many replicas share
//! one identity (default 4).

use std::time::Instant;

use sluice_policy::synthetic::{network_policies, view, Shape};
use sluice_policy::{compile, lower_network_policy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let replicas: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(4);
    let shape = Shape { replicas, local_every: 1, ..Shape::THOUSAND };
    let policies = network_policies(&shape, 0);

    let started = Instant::now();
    let lowered: Vec<_> = policies.iter().map(lower_network_policy).collect();
    let lowering = started.elapsed();
    let view = view(&shape, &lowered);

    let started = Instant::now();
    let compiled = compile(&lowered, &view);
    let compiling = started.elapsed();

    let entries: Vec<usize> =
        compiled.endpoints.values().map(|e| [&e.ingress, &e.egress].iter().map(|t| t.entries.len() + t.by_address.len()).sum()).collect();
    let total: usize = entries.iter().sum();
    let identities: std::collections::BTreeSet<u32> = view.endpoints.iter().map(|e| e.identity).collect();
    println!(
        "{} policies, {} pods ({} identities), {} CIDR identities",
        lowered.len(),
        view.endpoints.len(),
        identities.len(),
        view.cidr_identities.len()
    );
    println!("lowering: {:.1} ms", lowering.as_secs_f64() * 1e3);
    println!("compile:  {:.1} ms", compiling.as_secs_f64() * 1e3);
    println!(
        "entries per endpoint: mean {:.1}, max {}, total {total}; ipcache {} prefixes",
        total as f64 / entries.len().max(1) as f64,
        entries.iter().max().unwrap_or(&0),
        compiled.ipcache.len()
    );
    Ok(())
}
