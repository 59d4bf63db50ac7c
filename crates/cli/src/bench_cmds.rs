//! `sluice bench`: run a benchmark, print its table, write its results. Without a subcommand it
//! runs the datapath comparison; `control-plane` measures the control plane; `services` how
//! fast many services are programmed; `policy` how fast policy is compiled and programmed; `scale`
//! the control plane with many simulated nodes on etcd; the hidden
//! `crr-server` / `crr-client` are the TCP_CRR load generator the datapath comparison starts.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::args::{BenchCommand, DatapathBenchArgs, ScaleArgs, ScaleArrival};

pub async fn bench(command: Option<BenchCommand>, datapath: DatapathBenchArgs) -> anyhow::Result<ExitCode> {
    match command {
        None => datapath_comparison(datapath).await,
        Some(BenchCommand::ControlPlane { pods, restarts, out }) => control_plane(pods, restarts, out.as_deref()).await,
        Some(BenchCommand::Observer { runs, seconds, out }) => observer(runs, seconds, out.as_deref()).await,
        Some(BenchCommand::Services { counts, backends, runs, datastore, out }) => services(counts, backends, runs, datastore, &out).await,
        Some(BenchCommand::Policy { runs, out }) => policy(runs, &out),
        Some(BenchCommand::Scale(args)) => scale(args).await,
        Some(BenchCommand::Cluster { nodes, pods, runs, out }) => cluster(nodes, pods, runs, &out).await,
        Some(BenchCommand::L7 { runs, seconds, out }) => l7(runs, seconds, &out).await,
        Some(BenchCommand::HttpServer { listen }) => {
            sluice_bench::workloads::http::serve(&listen).await.context("serving HTTP")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(BenchCommand::CrrServer { listen }) => {
            sluice_bench::workloads::crr::serve(listen).with_context(|| format!("serving TCP_CRR on {listen}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(BenchCommand::CrrClient { connect, seconds }) => {
            let report = sluice_bench::workloads::crr::drive(connect, seconds).with_context(|| format!("TCP_CRR to {connect}"))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn datapath_comparison(args: DatapathBenchArgs) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    let mut opts = sluice_bench::DatapathOptions::new(sluice, args.quick);
    opts.rounds = args.rounds.unwrap_or(opts.rounds);
    opts.seconds = args.seconds.unwrap_or(opts.seconds);
    opts.only = args.only;
    if !args.services.is_empty() {
        opts.services = args.services;
    }
    opts.command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut print = |line: &str| eprintln!("{line}");
    let run = sluice_bench::datapath(&opts, &mut print);
    // Ctrl-C drops the run, and with it every configuration, which removes itself.
    let report = tokio::select! {
        report = run => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; everything the benchmark built has been removed"),
    };
    println!("{}", report.markdown());
    report.write(&args.out).with_context(|| format!("writing results to {}", args.out.display()))?;
    eprintln!("results written to {} (results.json, results.md, results.png)", args.out.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn control_plane(pods: usize, restarts: usize, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    let opts = sluice_bench::ControlPlaneOptions { pods, restarts, ..sluice_bench::ControlPlaneOptions::new(sluice) };
    eprintln!("control-plane benchmark: {pods} pods, {restarts} agent restarts per point");
    let result = sluice_bench::control_plane(&opts, &mut |line| eprintln!("  {line}")).await?;
    write_results(out, &result, &result.markdown())
}

/// Prints the Markdown table and, when asked, writes results.json and results.md to `out`.
fn write_results(out: Option<&Path>, result: &impl serde::Serialize, markdown: &str) -> anyhow::Result<ExitCode> {
    println!("{markdown}");
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(result)?)?;
        std::fs::write(dir.join("results.md"), markdown)?;
        eprintln!("results written to {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn observer(runs: usize, seconds: u64, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    eprintln!("observer benchmark: {runs} runs of {seconds} s, every forwarded packet an event");
    let result = sluice_bench::observer_rate(sluice, runs, seconds, &mut |line| eprintln!("  {line}")).await?;
    write_results(out, &result, &result.markdown())
}

async fn l7(runs: usize, seconds: u64, out: &Path) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    // The command as a user types it, whatever path the binary was run from.
    let command = std::iter::once("sluice".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let opts = sluice_bench::L7Options { runs, seconds, command };
    eprintln!("layer-7 benchmark: {runs} round(s), {seconds} s per wrk run");
    let result = sluice_bench::l7(sluice, &opts, &mut |line| eprintln!("  {line}")).await?;
    write_results(Some(out), &result, &result.markdown())
}

fn policy(runs: usize, out: &Path) -> anyhow::Result<ExitCode> {
    let opts = sluice_bench::PolicyOptions {
        runs,
        shape: sluice_policy::synthetic::Shape::THOUSAND,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    eprintln!("policy benchmark: 1,000 NetworkPolicies over 1,000 pods, {runs} run(s), each on a fresh datapath");
    let report = sluice_bench::policy(&opts, &mut |line| eprintln!("  {line}"))?;
    let markdown = report.markdown();
    println!("{markdown}");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("results.md"), markdown)?;
    eprintln!("results written to {} (results.json, results.md)", out.display());
    Ok(ExitCode::SUCCESS)
}

async fn cluster(nodes: usize, pods: usize, runs: usize, out: &Path) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    let opts = sluice_bench::ClusterOptions {
        nodes,
        pods,
        runs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..sluice_bench::ClusterOptions::new(sluice)
    };
    eprintln!("cluster benchmark: {nodes} nodes on etcd, {pods} pods, {runs} run(s), a fresh lab per run");
    let mut print = |line: &str| eprintln!("  {line}");
    let result = until_interrupted(sluice_bench::cluster(&opts, &mut print), &opts.lab_prefix).await?;
    report(&result.markdown(), |dir| result.write(dir), out)
}

/// Runs a benchmark of labs named `<prefix>-*`; Ctrl-C drops it mid-way and removes its labs.
async fn until_interrupted<T>(
    run: impl std::future::Future<Output = Result<T, sluice_bench::BenchError>>,
    prefix: &str,
) -> anyhow::Result<T> {
    tokio::select! {
        result = run => Ok(result?),
        _ = tokio::signal::ctrl_c() => {
            sluice_bench::remove_service_labs(prefix).await?;
            anyhow::bail!("interrupted; the benchmark's labs have been removed")
        }
    }
}

/// Prints a benchmark's markdown and writes its results into `out`.
fn report(markdown: &str, write: impl FnOnce(&Path) -> Result<(), sluice_bench::BenchError>, out: &Path) -> anyhow::Result<ExitCode> {
    println!("{markdown}");
    write(out).with_context(|| format!("writing results to {}", out.display()))?;
    eprintln!("results written to {} (results.json, results.md)", out.display());
    Ok(ExitCode::SUCCESS)
}

async fn services(counts: Vec<usize>, backends: usize, runs: usize, datastore: String, out: &Path) -> anyhow::Result<ExitCode> {
    let sluice = std::env::current_exe().context("finding the sluice binary")?;
    let opts = sluice_bench::ServicesOptions {
        counts,
        backends,
        runs,
        datastore,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..sluice_bench::ServicesOptions::new(sluice)
    };
    eprintln!("services benchmark: {:?} services x {backends} backends, {runs} run(s) each, a fresh lab per run", opts.counts);
    let mut print = |line: &str| eprintln!("  {line}");
    let result = until_interrupted(sluice_bench::services(&opts, &mut print), &opts.lab_prefix).await?;
    report(&result.markdown(), |dir| result.write(dir), out)
}

async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    if !args.merge.is_empty() {
        let mut results = Vec::new();
        for dir in &args.merge {
            let path = dir.join("results.json");
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let result: sluice_bench::ScaleResult =
                serde_json::from_slice(&text).with_context(|| format!("{} is not a scale benchmark's results", path.display()))?;
            results.push(result);
        }
        let merged = sluice_bench::ScaleResult::merge(results)?;
        println!("{}", merged.markdown());
        merged.write(&args.out).with_context(|| format!("writing results to {}", args.out.display()))?;
        eprintln!("merged results written to {} (results.json, results.md, results.png)", args.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = sluice_bench::ScaleOptions::new(args.quick);
    if !args.nodes.is_empty() {
        opts.nodes = args.nodes;
    }
    opts.pods_per_node = args.pods_per_node.unwrap_or(opts.pods_per_node);
    opts.groups_per_node = args.groups_per_node.unwrap_or(opts.groups_per_node);
    opts.runs = args.runs.unwrap_or(opts.runs);
    opts.arrival = match args.arrival {
        ScaleArrival::NodeBurst => sluice_bench::scale::workload::Arrival::NodeBurst,
        ScaleArrival::Spread => sluice_bench::scale::workload::Arrival::Spread,
    };
    opts.pod_rate = args.pod_rate;
    opts.churn_percent = args.churn_percent;
    opts.debounce = std::time::Duration::from_millis(args.debounce_ms);
    opts.lease_seconds = args.lease_seconds;
    opts.modes = match args.mode.as_deref() {
        Some("slices") => vec![sluice_agent::config::EndpointsMode::Slices],
        Some(_) => vec![sluice_agent::config::EndpointsMode::PerPod],
        None => opts.modes,
    };
    opts.command = std::env::args().collect::<Vec<_>>().join(" ");
    eprintln!("scale benchmark: {:?} nodes x {} pods, {} run(s) per mode, a fresh etcd per run", opts.nodes, opts.pods_per_node, opts.runs);
    // Ctrl-C drops the run: the simulated nodes' tasks stop and etcd is stopped with it.
    let mut print = |line: &str| eprintln!("  {line}");
    let result = tokio::select! {
        result = sluice_bench::scale(&opts, &mut print) => result?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the benchmark's etcd has been stopped"),
    };
    println!("{}", result.markdown());
    result.write(&args.out).with_context(|| format!("writing results to {}", args.out.display()))?;
    eprintln!("results written to {} (results.json, results.md, results.png)", args.out.display());
    Ok(ExitCode::SUCCESS)
}
