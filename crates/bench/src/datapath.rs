//! The datapath comparison: builds every configuration, runs the workloads in interleaved rounds
//! (limit, sluice-bpf, sluice-legacy, classic, classic-nft, then again), checks after each measurement that
//! the configuration is what it claims, and reports medians and ratios taken in the one run.
//! TCP_CRR to a ClusterIP comes after the pod-to-pod workloads, once per service count: the
//! configurations that balance services are given N services (timed: the programming time),
//! then run it in interleaved rounds of their own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::configurations::{BuildEnv, Built, Configuration, CNI_BIN_DIR, SERVICES};
use crate::process::{self, find_on_path, in_netns, Place};
use crate::report::{markdown_number, CheckRecord, Method, ProgrammingRecord, Report, Sample};
use crate::workloads::{Run, Workload};
use crate::{BenchError, Machine};

/// Where runs keep their scratch files (IPAM state, server logs); removed at the end.
const WORK_ROOT: &str = "/run/sluice/bench";

/// A pause between measurements, so one run's trailing work (TIME_WAIT, softirq backlog) does
/// not fall into the next.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// The `sluice` binary: labs run its agent, `sluice-cni` must be beside it, and it carries
    /// the TCP_CRR load generator.
    pub sluice: PathBuf,
    pub quick: bool,
    pub rounds: usize,
    pub seconds: u64,
    /// Configuration and workload names to run; none means all.
    pub only: Vec<String>,
    /// Service counts of TCP_CRR to a ClusterIP (`tcp-crr-svc`).
    pub services: Vec<usize>,
    /// The command line, recorded with the results.
    pub command: String,
    /// Short and unique per run: part of every namespace and lab name.
    pub run: String,
}

impl DatapathOptions {
    /// Five rounds of 5 s per workload, 10, 1,000 and 10,000 services; with `quick`, one round
    /// of 1 s and 10 services.
    pub fn new(sluice: PathBuf, quick: bool) -> Self {
        Self {
            sluice,
            quick,
            rounds: if quick { 1 } else { 5 },
            seconds: if quick { 1 } else { 5 },
            only: Vec::new(),
            services: if quick { vec![10] } else { vec![10, 1_000, 10_000] },
            command: String::new(),
            run: (std::process::id() % 100_000).to_string(),
        }
    }
}

/// Runs the comparison; everything it built is removed before it returns, also on failure.
pub async fn datapath(opts: &DatapathOptions, progress: &mut dyn FnMut(&str)) -> Result<Report, BenchError> {
    let (configurations, workloads) = select(&opts.only, &opts.services)?;
    preflight(&configurations, &workloads)?;
    if opts.rounds == 0 || opts.seconds == 0 {
        return Err(BenchError::Invalid("rounds and seconds must be at least 1".into()));
    }
    let (client_cpu, server_cpu) = process::cpu_pair()?;
    let load_average_before = load_average();
    progress(&format!(
        "datapath benchmark: {} × {} over {} round(s) of {} s per workload; client on CPU {client_cpu}, server on CPU {server_cpu}; load average {load_average_before}",
        list(&configurations),
        list(&workloads),
        opts.rounds,
        opts.seconds
    ));
    let work = WorkDir::create(PathBuf::from(WORK_ROOT).join(&opts.run))?;
    let env = BuildEnv { run: opts.run.clone(), sluice: opts.sluice.clone(), work_dir: work.0.clone() };

    // Each configuration removes itself if dropped: an error here leaves nothing behind.
    let mut built = Vec::new();
    for &c in &configurations {
        let started = Instant::now();
        progress(&format!("building {c}: {}", c.description()));
        let b = Built::build(c, &env).await?;
        prepare_client(&b).await?;
        progress(&format!("  {c} ready in {:.1} s, server at {}", started.elapsed().as_secs_f64(), b.pods.server_ip));
        built.push(b);
    }
    let cpus = (client_cpu, server_cpu);
    let measured = measure(&mut built, &workloads, opts, cpus, &env, progress).await;
    let mut teardown_error = None;
    for b in built {
        let c = b.configuration;
        match b.teardown().await {
            Ok(()) => progress(&format!("{c} removed")),
            Err(e) => {
                progress(&format!("removing {c} failed: {e}"));
                teardown_error.get_or_insert(e);
            }
        }
    }
    let (samples, checks, programming) = measured?;
    if let Some(e) = teardown_error {
        return Err(e);
    }
    drop(work);
    let method = Method {
        command: opts.command.clone(),
        quick: opts.quick,
        rounds: opts.rounds,
        seconds_per_run: opts.seconds,
        client_cpu,
        server_cpu,
        load_average_before,
        load_average_after: load_average(),
        services_on_classic: SERVICES.count,
        backends_per_service: SERVICES.backends,
        service_counts: workloads.iter().filter_map(|w| w.services()).collect(),
    };
    Ok(Report::build(Machine::describe(), method, &configurations, &workloads, &samples, checks, programming))
}

/// The rounds: every configuration runs every workload once per round, in the same order.
/// Pod-to-pod workloads first; then for each service count, the configurations that balance
/// services are programmed with that many and run TCP_CRR to a ClusterIP in rounds of their own.
async fn measure(
    built: &mut [Built],
    workloads: &[Workload],
    opts: &DatapathOptions,
    cpus: (usize, usize),
    env: &BuildEnv,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Sample>, Vec<CheckRecord>, Vec<ProgrammingRecord>), BenchError> {
    let mut samples = Vec::new();
    let mut checks = Vec::new();
    let mut programming = Vec::new();
    let pod_to_pod: Vec<Workload> = workloads.iter().copied().filter(|w| w.services().is_none()).collect();
    if !pod_to_pod.is_empty() {
        rounds(built, &pod_to_pod, opts, cpus, env, progress, &mut samples, &mut checks).await?;
    }
    for &w in workloads {
        let Some(count) = w.services() else { continue };
        for b in built.iter_mut().filter(|b| b.configuration.has_services()) {
            progress(&format!("programming {count} services into {}", b.configuration));
            let took = b.program_services(count).await?;
            progress(&format!("  {} programmed {count} services in {:.3} s", b.configuration, took.as_secs_f64()));
            programming.push(ProgrammingRecord { configuration: b.configuration, services: count, seconds: took.as_secs_f64() });
        }
        rounds(built, &[w], opts, cpus, env, progress, &mut samples, &mut checks).await?;
    }
    Ok((samples, checks, programming))
}

/// `opts.rounds` rounds of `workloads` over the configurations they apply to.
#[allow(clippy::too_many_arguments)] // one call site each way; a struct would only rename them
async fn rounds(
    built: &[Built],
    workloads: &[Workload],
    opts: &DatapathOptions,
    (client_cpu, server_cpu): (usize, usize),
    env: &BuildEnv,
    progress: &mut dyn FnMut(&str),
    samples: &mut Vec<Sample>,
    checks: &mut Vec<CheckRecord>,
) -> Result<(), BenchError> {
    for round in 1..=opts.rounds {
        for b in built {
            let c = b.configuration;
            for &w in workloads {
                let service = match w.services() {
                    None => None,
                    Some(_) if !c.has_services() => continue,
                    Some(count) => {
                        Some(b.service_target(count).ok_or_else(|| BenchError::Check(format!("{c} has no {count} services programmed")))?)
                    }
                };
                if w.cross_node() && !c.has_second_node() {
                    continue;
                }
                // Across nodes the server is the pod on node1 (limit has one pair: its server).
                let (server_netns, server_ip) = match (&b.pods.remote, w.cross_node()) {
                    (Some(r), true) => (r.netns.clone(), r.ip),
                    (None, true) if c != Configuration::Limit => return Err(BenchError::Check(format!("{c} has no pod on a second node"))),
                    _ => (b.pods.server.clone(), b.pods.server_ip),
                };
                // Only to a service does the client need its pod's cgroup: that is where the
                // node's socket hooks translate connect(). Pod-to-pod runs stay as they were.
                let client_cgroup = service.and(b.pods.client_cgroup.clone());
                let run = Run {
                    client: Place { netns: b.pods.client.clone(), cpu: Some(client_cpu), cgroup: client_cgroup },
                    server: Place { netns: server_netns, cpu: Some(server_cpu), cgroup: None },
                    server_ip,
                    service,
                    seconds: opts.seconds,
                    sluice: opts.sluice.clone(),
                    log_dir: env.work_dir.clone(),
                };
                // A measurement whose counters do not show the configuration's path (too little
                // traffic moved: the run stalled while the machine was busy) is taken once more;
                // a second failure ends the benchmark.
                let mut attempt = 0;
                let (measurement, evidence) = loop {
                    attempt += 1;
                    tokio::time::sleep(SETTLE).await;
                    let before = b.counters().await?;
                    let measurement = w.run(&run).await.map_err(|e| with_context(e, round, c, w))?;
                    let after = b.counters().await?;
                    match b.verify(w, &before, &after) {
                        Ok(evidence) => break (measurement, evidence),
                        Err(why) if attempt == 1 => {
                            progress(&format!("round {round}/{}  {c:<13} {w:<12} measured again: {why}", opts.rounds))
                        }
                        Err(why) => return Err(BenchError::Check(format!("round {round}, {w}: {why} (twice)"))),
                    }
                };
                let figures: Vec<String> =
                    measurement.iter().map(|(m, v)| format!("{} {} {}", m.label(), markdown_number(*m, *v), m.unit())).collect();
                let moved: Vec<String> = evidence.deltas.iter().map(|(k, v)| format!("{k} +{v}")).collect();
                progress(&format!("round {round}/{}  {c:<13} {w:<12} {}  [{}]", opts.rounds, figures.join(", "), moved.join(", ")));
                checks.push(CheckRecord { round, configuration: c, workload: w, evidence });
                samples.push(Sample { round, configuration: c, workload: w, measurement });
            }
        }
    }
    Ok(())
}

fn with_context(e: BenchError, round: usize, c: Configuration, w: Workload) -> BenchError {
    match e {
        BenchError::Tool { tool, message } => BenchError::Tool { tool: format!("{tool} (round {round}, {c}, {w})"), message },
        other => other,
    }
}

/// The client opens tens of thousands of connections in TCP_CRR and closes first, so its side
/// keeps TIME_WAIT: let it reuse those after a second and use the whole port range. The same in
/// every configuration; both are per-namespace settings of the client pod only.
async fn prepare_client(b: &Built) -> Result<(), BenchError> {
    in_netns(&b.pods.client, || {
        sluice_datapath::netns::write_sysctl("net/ipv4/tcp_tw_reuse", "1")?;
        sluice_datapath::netns::write_sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
        Ok(())
    })
    .await
}

/// Configurations and workloads named by `--only` (all of a kind when none of it is named);
/// `tcp-crr-svc` stands for TCP_CRR to a ClusterIP with each of `services`.
fn select(only: &[String], services: &[usize]) -> Result<(Vec<Configuration>, Vec<Workload>), BenchError> {
    let mut counts: Vec<usize> = services.to_vec();
    counts.sort_unstable();
    counts.dedup();
    if let Some(&bad) = counts.iter().find(|&&n| n == 0 || n > crate::configurations::max_services()) {
        return Err(BenchError::Invalid(format!("--services {bad}: give 1 to {} services", crate::configurations::max_services())));
    }
    let service_workloads: Vec<Workload> = counts.iter().map(|&n| Workload::TcpCrrService(n)).collect();
    let mut configurations = Vec::new();
    let mut workloads = Vec::new();
    for name in only.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if let Some(c) = Configuration::parse(name) {
            configurations.push(c);
        } else if name == Workload::SERVICE_FAMILY {
            workloads.extend(service_workloads.iter().copied());
        } else if let Some(w) = Workload::parse(name) {
            workloads.push(w);
        } else {
            return Err(BenchError::Invalid(format!(
                "--only {name}: not a configuration ({}) nor a workload ({}, {})",
                list(&Configuration::ALL),
                list(&Workload::ALL),
                Workload::SERVICE_FAMILY
            )));
        }
    }
    // Keep the canonical order whatever order they were named in: pod to pod, then services by count.
    let configurations = if configurations.is_empty() {
        Configuration::ALL.to_vec()
    } else {
        Configuration::ALL.into_iter().filter(|c| configurations.contains(c)).collect()
    };
    let workloads = if workloads.is_empty() {
        Workload::ALL.into_iter().chain(service_workloads).collect()
    } else {
        workloads.sort();
        workloads.dedup();
        workloads
    };
    // Only services asked for, no configuration named: build only those that balance services.
    let configurations = if only_named_services(only) && workloads.iter().all(|w| w.services().is_some()) {
        configurations.into_iter().filter(|c| c.has_services()).collect()
    } else {
        configurations
    };
    if workloads.iter().any(|w| w.services().is_some()) && !configurations.iter().any(|c| c.has_services()) {
        return Err(BenchError::Invalid(format!(
            "{}: only {} balance services; add one of them to --only",
            Workload::SERVICE_FAMILY,
            list(&Configuration::ALL.into_iter().filter(|c| c.has_services()).collect::<Vec<_>>())
        )));
    }
    Ok((configurations, workloads))
}

/// Whether `--only` names no configuration.
fn only_named_services(only: &[String]) -> bool {
    only.iter().all(|n| Configuration::parse(n.trim()).is_none())
}

/// Fails before anything is built when a tool is missing.
fn preflight(configurations: &[Configuration], workloads: &[Workload]) -> Result<(), BenchError> {
    let mut tools: Vec<(&str, &'static str)> = Vec::new();
    if workloads.iter().any(|w| matches!(w, Workload::TcpStream1 | Workload::TcpStream4 | Workload::TcpStreamCrossNode)) {
        tools.push(("iperf3", "iperf3"));
    }
    if workloads.iter().any(|w| matches!(w, Workload::TcpRr | Workload::TcpRrCrossNode)) {
        tools.push(("sockperf", "sockperf"));
    }
    if configurations.contains(&Configuration::Classic) {
        tools.push(("iptables", "iptables"));
        tools.push(("iptables-restore", "iptables"));
    }
    if configurations.contains(&Configuration::ClassicNft) {
        tools.push(("nft", "nftables"));
    }
    if configurations.iter().any(|c| matches!(c, Configuration::Classic | Configuration::ClassicNft)) {
        for plugin in ["bridge", "host-local"] {
            let path = PathBuf::from(CNI_BIN_DIR).join(plugin);
            if !path.is_file() {
                return Err(BenchError::MissingTool { tool: path.display().to_string(), package: "containernetworking-plugins" });
            }
        }
    }
    for (tool, package) in tools {
        if find_on_path(tool).is_none() {
            return Err(BenchError::MissingTool { tool: tool.into(), package });
        }
    }
    Ok(())
}

/// The three load averages of /proc/loadavg.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// The run's scratch directory, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: PathBuf) -> Result<Self, BenchError> {
        std::fs::create_dir_all(&path).map_err(|e| BenchError::io(format!("creating {}", path.display()), e))?;
        Ok(Self(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent); // the shared level, if now empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_selects_configurations_and_workloads_in_canonical_order() {
        let (c, w) = select(&["tcp-rr".into(), "classic".into(), "limit".into()], &[10]).unwrap();
        assert_eq!(c, vec![Configuration::Limit, Configuration::Classic]);
        assert_eq!(w, vec![Workload::TcpRr]);
        let (c, w) = select(&["sluice-bpf".into()], &[10]).unwrap();
        assert_eq!(c, vec![Configuration::SluiceBpf]);
        let mut all = Workload::ALL.to_vec();
        all.push(Workload::TcpCrrService(10));
        assert_eq!(w, all, "no workload named: all of them");
    }

    #[test]
    fn the_service_family_expands_to_each_count_in_ascending_order() {
        let (_, w) = select(&["tcp-crr-svc".into(), "sluice-bpf".into(), "classic".into()], &[10_000, 10, 1_000, 10]).unwrap();
        assert_eq!(w, vec![Workload::TcpCrrService(10), Workload::TcpCrrService(1_000), Workload::TcpCrrService(10_000)]);
    }

    #[test]
    fn services_alone_build_only_the_configurations_that_balance_them() {
        let (c, _) = select(&["tcp-crr-svc".into()], &[10]).unwrap();
        assert_eq!(
            c,
            vec![Configuration::SluiceBpf, Configuration::Classic, Configuration::ClassicNft],
            "nothing is built that would run nothing"
        );
    }

    #[test]
    fn services_need_a_configuration_that_balances_them() {
        let err = select(&["tcp-crr-svc".into(), "limit".into()], &[10]).unwrap_err().to_string();
        assert!(err.contains("sluice-bpf") && err.contains("classic"), "{err}");
        assert!(select(&["tcp-crr-svc".into()], &[0]).is_err(), "zero services is refused");
        assert!(select(&["tcp-crr-svc".into()], &[40_000]).is_err(), "more than the /17 holds is refused");
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_ones() {
        let err = select(&["tcp-maerts".into()], &[10]).unwrap_err().to_string();
        assert!(err.contains("sluice-bpf") && err.contains("tcp-crr"), "{err}");
    }

    #[test]
    fn run_names_fit_lab_names() {
        let env = BuildEnv { run: "99999".into(), sluice: "/x".into(), work_dir: "/y".into() };
        assert!(sluice_lab::names::validate_lab_name(&env.lab_name("legacy")).is_ok(), "{}", env.lab_name("legacy"));
    }
}
