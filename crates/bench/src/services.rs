//! The services benchmark: how long a node's agent takes to program N ClusterIP services (each
//! with its endpoint slice) after one store write, what the agent holds in memory meanwhile, and
//! what one service's change costs once they are all programmed. Every run builds a fresh
//! one-node lab of its own and removes it, also on failure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sluice_api::{paths, Client, ServiceFrontend, Status};
use sluice_lab::{Lab, UpOptions};
use sluice_model::{Allocator, ServiceRanges};
use sluice_state::Store;

use crate::control_plane::agent_rss_mib;
use crate::{BenchError, Machine, Summary};

/// A /17: room for 32,766 IPv4 cluster IPs (the lab's default /20 holds 4,094).
const SERVICE_CIDR: &str = "198.18.128.0/17";
const NAMESPACE: &str = "default";
/// Backend addresses: 198.19.0.2 ..= 198.19.0.250, in node0's pod CIDR (they need not exist).
const FIRST_HOST: u32 = 2;
const HOSTS: usize = 249;
const FIRST_PORT: u16 = 10_000;
/// Distinct (address, port) backends the benchmark makes at most. The datapath's lb_backends
/// map holds 65,536; beyond this many, services share backend sets (as two services selecting
/// the same pods do) instead of overflowing it.
pub const MAX_DISTINCT_BACKENDS: usize = 60_000;
/// How often the agent's status is read while waiting.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct ServicesOptions {
    pub sluice: PathBuf,
    /// Service counts measured, one point each.
    pub counts: Vec<usize>,
    pub backends: usize,
    pub runs: usize,
    /// Labs are named `<prefix>-<k>`; [`remove_service_labs`] removes what an interrupted run left.
    pub lab_prefix: String,
    /// How the run was started, quoted in the report.
    pub command: String,
    /// Longest wait for the agent to program everything.
    pub timeout: Duration,
    /// `local` (the lab's store file) or `etcd` (the lab's etcd).
    pub datastore: String,
}

impl ServicesOptions {
    pub fn new(sluice: PathBuf) -> Self {
        Self {
            sluice,
            counts: vec![10, 1_000, 10_000],
            backends: 10,
            runs: 3,
            lab_prefix: format!("bsvc-{}", std::process::id() % 100_000),
            datastore: "local".into(),
            command: "sluice bench services".into(),
            timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesResult {
    pub machine: Machine,
    pub command: String,
    pub backends_per_service: usize,
    pub datastore: String,
    pub service_cidr: &'static str,
    pub points: Vec<ServicesPoint>,
}

/// One service count: every run, and medians with min-max over the runs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesPoint {
    pub services: usize,
    pub backends_per_service: usize,
    /// Distinct (address, port) backends among all services' endpoints.
    pub distinct_backends: usize,
    pub runs: Vec<ServicesRun>,
    /// Store write until the agent's status shows every frontend (includes the agent's up to
    /// 200 ms watch interval and the 20 ms poll).
    pub write_to_programmed_ms: Summary,
    /// The agent's own round: load the store, derive, compute, write the maps.
    pub agent_round_ms: Summary,
    /// The store write alone (serialise and write every object): part of the wall time above.
    pub store_write_ms: Summary,
    pub rss_empty_mib: Summary,
    pub rss_programmed_mib: Summary,
    /// The agent's round after one service lost one backend.
    pub one_change_agent_round_ms: Summary,
    pub one_change_write_to_programmed_ms: Summary,
    /// From the end of the change's write to the agent's status showing it: the agent's
    /// latency alone (watch, compute, program), without the writer's own read and write.
    pub one_change_after_write_ms: Summary,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicesRun {
    pub write_to_programmed_ms: f64,
    pub agent_round_ms: f64,
    pub store_write_ms: f64,
    pub rss_empty_mib: f64,
    pub rss_programmed_mib: f64,
    pub one_change_agent_round_ms: f64,
    pub one_change_write_to_programmed_ms: f64,
    pub one_change_after_write_ms: f64,
    /// Size of the store file the agent reads each round.
    pub store_bytes: u64,
    /// lb_frontends, lb_backends, lb_slots entries once programmed.
    pub map_entries: BTreeMap<String, usize>,
}

pub async fn services(opts: &ServicesOptions, progress: &mut dyn FnMut(&str)) -> Result<ServicesResult, BenchError> {
    if !(1..=HOSTS).contains(&opts.backends) {
        return Err(BenchError::Invalid(format!("--backends {} is outside 1..={HOSTS} (the addresses of one pod CIDR)", opts.backends)));
    }
    if opts.counts.is_empty() || opts.counts.contains(&0) {
        return Err(BenchError::Invalid("--counts needs one or more service counts above 0".into()));
    }
    let ranges = service_ranges()?;
    let mut points = Vec::new();
    let mut lab_number = 0;
    for &n in &opts.counts {
        let objects = build_objects(n, opts.backends, &ranges)?;
        let mut runs = Vec::new();
        for run in 1..=opts.runs.max(1) {
            lab_number += 1;
            let name = format!("{}-{lab_number}", opts.lab_prefix);
            progress(&format!("{n} services x {} backends, run {run}/{}: lab {name}", opts.backends, opts.runs.max(1)));
            runs.push(measure_in_fresh_lab(&name, opts, &ranges, &objects, progress).await?);
        }
        let summary = |f: fn(&ServicesRun) -> f64| {
            Summary::of(&runs.iter().map(f).collect::<Vec<_>>()).ok_or_else(|| BenchError::Check("no run".into()))
        };
        points.push(ServicesPoint {
            services: n,
            backends_per_service: opts.backends,
            distinct_backends: objects.distinct_backends,
            write_to_programmed_ms: summary(|r| r.write_to_programmed_ms)?,
            agent_round_ms: summary(|r| r.agent_round_ms)?,
            store_write_ms: summary(|r| r.store_write_ms)?,
            rss_empty_mib: summary(|r| r.rss_empty_mib)?,
            rss_programmed_mib: summary(|r| r.rss_programmed_mib)?,
            one_change_agent_round_ms: summary(|r| r.one_change_agent_round_ms)?,
            one_change_write_to_programmed_ms: summary(|r| r.one_change_write_to_programmed_ms)?,
            one_change_after_write_ms: summary(|r| r.one_change_after_write_ms)?,
            runs,
        });
    }
    Ok(ServicesResult {
        machine: Machine::describe(),
        command: opts.command.clone(),
        backends_per_service: opts.backends,
        datastore: opts.datastore.clone(),
        service_cidr: SERVICE_CIDR,
        points,
    })
}

/// Removes every lab of a services run (`<prefix>-*`): after an interruption, or a crash.
pub async fn remove_service_labs(prefix: &str) -> Result<(), BenchError> {
    let Ok(dir) = std::fs::read_dir(sluice_lab::names::LABS_DIR) else { return Ok(()) };
    let mine: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    for name in mine {
        Lab::down(&name, &mut |_| {}).await?;
    }
    Ok(())
}

fn service_ranges() -> Result<ServiceRanges, BenchError> {
    let cidr = SERVICE_CIDR.parse().map_err(|e| BenchError::Invalid(format!("{SERVICE_CIDR}: {e}")))?;
    ServiceRanges::new(vec![cidr], 30000..=32767).map_err(|e| BenchError::Invalid(e.to_string()))
}

async fn measure_in_fresh_lab(
    name: &str,
    opts: &ServicesOptions,
    ranges: &ServiceRanges,
    objects: &Objects,
    progress: &mut dyn FnMut(&str),
) -> Result<ServicesRun, BenchError> {
    let up = UpOptions { service_ranges: ranges.clone(), datastore: opts.datastore.clone(), ..UpOptions::new(name, opts.sluice.clone()) };
    let lab = Lab::up(up, &mut |_| {}).await?;
    let result = measure(&lab, opts, objects).await;
    if let Ok(r) = &result {
        progress(&format!(
            "  programmed in {:.0} ms (store write to status), agent round {:.1} ms; RSS {:.1} -> {:.1} MiB; one-service change: agent round {:.1} ms",
            r.write_to_programmed_ms, r.agent_round_ms, r.rss_empty_mib, r.rss_programmed_mib, r.one_change_agent_round_ms
        ));
    }
    drop(lab);
    let down = Lab::down(name, &mut |_| {}).await;
    progress(&format!("  lab {name} removed"));
    // The measurement's failure says more than the teardown's.
    let run = result?;
    down?;
    Ok(run)
}

async fn measure(lab: &Lab, opts: &ServicesOptions, objects: &Objects) -> Result<ServicesRun, BenchError> {
    let n = objects.services.len();
    let client = Client::new(lab.node_socket(None)?);
    let before: Status = client.get(paths::STATUS).await?;
    let previous_round = before.services.as_ref().map(|s| s.last_program_micros);
    let rss_empty_mib = agent_rss_mib(lab)?;

    // 1. Everything in one store write, as `sluice apply` of one manifest does.
    let t0 = Instant::now();
    let ((), revision) = lab
        .store()
        .update_at(|store| {
            store.services.extend(objects.services.iter().map(|(k, v)| (k.clone(), v.clone())));
            store.endpoint_slices.extend(objects.slices.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(())
        })
        .map_err(sluice_lab::LabError::from)?;
    let store_write_ms = ms(t0.elapsed());
    // Programmed from the revision that holds the whole write (etcd writes it in chunks, so
    // earlier revisions hold part of it).
    let status = wait_for(&client, opts.timeout, |s| {
        s.services.as_ref().is_some_and(|sv| {
            sv.frontends == n
                && sv.last_error.is_none()
                && Some(sv.last_program_micros) != previous_round
                && sv.store_generation >= Some(revision)
        })
    })
    .await
    .map_err(|last| {
        BenchError::Check(format!("the agent did not program {n} services within {:?}: {}", opts.timeout, describe(last.as_ref())))
    })?;
    let write_to_programmed_ms = ms(t0.elapsed());
    let rss_programmed_mib = agent_rss_mib(lab)?;
    let services_status = status.services.clone().ok_or_else(|| BenchError::Check("the agent reports no services".into()))?;
    let agent_round_ms = services_status.last_program_micros as f64 / 1000.0;

    // The configuration must be what it claims: every frontend, set slot and backend in the maps.
    let full: Status = client.get(paths::STATUS).await?;
    let entries: BTreeMap<String, usize> =
        full.maps.iter().filter(|m| m.map.starts_with("lb_")).map(|m| (m.map.clone(), m.entries)).collect();
    for (map, want) in [("lb_frontends", n), ("lb_slots", n * opts.backends), ("lb_backends", objects.distinct_backends)] {
        let got = entries.get(map).copied();
        if got != Some(want) {
            return Err(BenchError::Check(format!("{map} holds {got:?} entries after programming {n} services, expected {want}")));
        }
    }

    // 2. One service loses one backend: the agent's round once everything is programmed.
    let (key, slice) = objects.slices.first().ok_or_else(|| BenchError::Check("no endpoint slice".into()))?;
    let mut smaller = slice.clone();
    smaller.endpoints.pop();
    let remaining = smaller.endpoints.len();
    let service = objects.services.first().map(|(k, _)| k.clone()).unwrap_or_default();
    let mut seen_round = services_status.last_program_micros;
    let t0 = Instant::now();
    let ((), revision) = lab
        .store()
        .update_at(|store| {
            store.endpoint_slices.insert(key.clone(), smaller.clone());
            Ok(())
        })
        .map_err(sluice_lab::LabError::from)?;
    let written = Instant::now();
    let deadline = t0 + opts.timeout;
    let (one_change_round_ms, one_change_wall_ms, one_change_after_write_ms) = loop {
        let round = wait_for(&client, deadline.saturating_duration_since(Instant::now()), |s| {
            s.services
                .as_ref()
                .is_some_and(|sv| sv.last_error.is_none() && sv.last_program_micros != seen_round && sv.store_generation >= Some(revision))
        })
        .await
        .map_err(|last| {
            BenchError::Check(format!(
                "the agent did not program the one-service change within {:?}: {}",
                opts.timeout,
                describe(last.as_ref())
            ))
        })?;
        let wall = ms(t0.elapsed());
        let after_write = ms(written.elapsed());
        let micros = round.services.as_ref().map(|s| s.last_program_micros).unwrap_or_default();
        // A periodic full round may land first: only a round that shows the change counts.
        let frontends: Vec<ServiceFrontend> = client.get(paths::SERVICES).await?;
        let backends = frontends.iter().find(|f| f.service.as_deref() == Some(service.as_str())).map(|f| f.backends.len());
        if backends == Some(remaining) {
            break (micros as f64 / 1000.0, wall, after_write);
        }
        seen_round = micros;
    };
    let store_bytes = lab.store().path().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()).unwrap_or_default();
    Ok(ServicesRun {
        write_to_programmed_ms,
        agent_round_ms,
        store_write_ms,
        rss_empty_mib,
        rss_programmed_mib,
        one_change_agent_round_ms: one_change_round_ms,
        one_change_write_to_programmed_ms: one_change_wall_ms,
        one_change_after_write_ms,
        store_bytes,
        map_entries: entries,
    })
}

/// Reads the status every [`POLL`] until `done`; on timeout, the last status read (if any).
async fn wait_for(client: &Client, timeout: Duration, done: impl Fn(&Status) -> bool) -> Result<Status, Option<Status>> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(status) = client.get::<Status>(paths::STATUS_BRIEF).await {
            if done(&status) {
                return Ok(status);
            }
            last = Some(status);
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn describe(status: Option<&Status>) -> String {
    match status.and_then(|s| s.services.as_ref()) {
        Some(s) => format!("{} frontends, last error {:?}", s.frontends, s.last_error),
        None => "no service status".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The objects of one point, built (and their cluster IPs allocated) before anything is timed.
struct Objects {
    /// `namespace/name` → service, in name order.
    services: Vec<(String, Service)>,
    slices: Vec<(String, EndpointSlice)>,
    distinct_backends: usize,
}

/// N selector-less ClusterIP services (single-stack IPv4, TCP 80), each with one endpoint slice
/// of `backends` ready endpoints.
fn build_objects(n: usize, backends: usize, ranges: &ServiceRanges) -> Result<Objects, BenchError> {
    let mut allocator = Allocator::new(ranges, std::iter::empty());
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    let mut distinct = std::collections::HashSet::new();
    for i in 0..n {
        let name = format!("svc-{i:05}");
        let (addresses, port) = backend_set(i, backends);
        let mut service = Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.into()),
                uid: Some(format!("bench-svc-{i}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ip_family_policy: Some("SingleStack".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(i32::from(port))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        allocator.allocate(&mut service).map_err(|e| BenchError::Invalid(format!("allocating {n} cluster IPs in {SERVICE_CIDR}: {e}")))?;
        distinct.extend(addresses.iter().map(|a| (*a, port)));
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-1")),
                namespace: Some(NAMESPACE.into()),
                labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_owned(), name.clone())])),
                uid: Some(format!("bench-slice-{i}")),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: addresses
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
                    node_name: Some("node0".into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort { port: Some(i32::from(port)), protocol: Some("TCP".into()), ..Default::default() }]),
        };
        services.push((Store::key(NAMESPACE, &name), service));
        slices.push((Store::key(NAMESPACE, &format!("{name}-1")), slice));
    }
    Ok(Objects { services, slices, distinct_backends: distinct.len() })
}

/// The backends of service `i`: `backends` consecutive addresses of 198.19.0.2..=250, all on
/// one port. Each port holds ⌊249 / backends⌋ disjoint address groups, so every service gets
/// distinct (address, port) pairs until [`MAX_DISTINCT_BACKENDS`]; after that, service `i`
/// shares the set of service `i mod sets`.
fn backend_set(i: usize, backends: usize) -> (Vec<IpAddr>, u16) {
    let groups_per_port = HOSTS / backends;
    let sets = (MAX_DISTINCT_BACKENDS / backends).max(1);
    let s = i % sets;
    // s / groups_per_port < 60,000: the port stays well inside u16.
    let port = FIRST_PORT + u16::try_from(s / groups_per_port).unwrap_or(u16::MAX - FIRST_PORT);
    let first = FIRST_HOST as usize + (s % groups_per_port) * backends;
    let addresses =
        (first..first + backends).map(|h| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + h as u32))).collect();
    (addresses, port)
}

// === impl ServicesResult ===

impl ServicesResult {
    pub fn markdown(&self) -> String {
        let cell = |s: &Summary, digits: usize| {
            if s.count > 1 {
                format!("{:.d$} ({:.d$}–{:.d$})", s.p50, s.min, s.max, d = digits)
            } else {
                format!("{:.d$}", s.p50, d = digits)
            }
        };
        let runs = self.points.first().map(|p| p.runs.len()).unwrap_or(0);
        let mut out = String::new();
        out.push_str(&format!("Machine: {}\n\nCommand: `{}`\n\n", self.machine, self.command));
        out.push_str(&format!(
            "Medians over {runs} run{}, min–max in brackets; each run a fresh one-node lab on the {} datastore, services in {}.\n\n",
            if runs == 1 { "" } else { "s" },
            self.datastore,
            self.service_cidr
        ));
        out.push_str("| services | backends each | distinct backends | store write → programmed (ms) | of which the store write (ms) | agent round (ms) | agent RSS empty (MiB) | agent RSS programmed (MiB) | one-service change: agent round (ms) | one-service change: write → programmed (ms) | one-service change: written → programmed (ms) |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for p in &self.points {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.services,
                p.backends_per_service,
                p.distinct_backends,
                cell(&p.write_to_programmed_ms, 0),
                cell(&p.store_write_ms, 0),
                cell(&p.agent_round_ms, 1),
                cell(&p.rss_empty_mib, 1),
                cell(&p.rss_programmed_mib, 1),
                cell(&p.one_change_agent_round_ms, 1),
                cell(&p.one_change_write_to_programmed_ms, 0),
                cell(&p.one_change_after_write_ms, 1),
            ));
        }
        out.push_str(
            "\n\"store write → programmed\" is wall time from the one store write until the agent's status (read every 5 ms) shows every frontend programmed from a revision holding the whole write; it includes the write itself (shown apart). \
             \"agent round\" is the agent's own measure of the round that completed it. \
             \"written → programmed\" starts when the change's write returned: the agent's own latency (watch, compute, program). \
             Targets: 10,000 services × 10 backends programmed in under 1 s; one service changed among 10,000 programmed in under 100 ms.\n",
        );
        out
    }

    /// Writes results.json and results.md into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        crate::report::write_results(dir, self, &self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn pairs(n: usize, backends: usize) -> Vec<Vec<(IpAddr, u16)>> {
        (0..n)
            .map(|i| {
                let (addresses, port) = backend_set(i, backends);
                addresses.into_iter().map(|a| (a, port)).collect()
            })
            .collect()
    }

    #[test]
    fn backends_are_distinct_up_to_the_cap_then_shared() {
        let small: HashSet<_> = pairs(1_000, 10).into_iter().flatten().collect();
        assert_eq!(small.len(), 10_000, "1,000 services x 10 backends are all distinct");
        let large: HashSet<_> = pairs(10_000, 10).into_iter().flatten().collect();
        assert_eq!(large.len(), MAX_DISTINCT_BACKENDS, "10,000 x 10 stops at the cap, inside lb_backends");
    }

    #[test]
    fn backends_stay_in_the_pod_cidr_and_distinct_within_a_service() {
        for backends in [1, 10, 100, HOSTS] {
            for set in pairs(7_000, backends) {
                let unique: HashSet<_> = set.iter().collect();
                assert_eq!(unique.len(), backends, "a service's {backends} backends are distinct");
                for (addr, _) in &set {
                    let IpAddr::V4(v4) = addr else { panic!("IPv4 expected") };
                    let host = v4.octets()[3];
                    assert!(v4.octets()[..3] == [198, 19, 0] && (2..=250).contains(&host), "{addr} is in 198.19.0.2..=250");
                }
            }
        }
    }

    #[test]
    fn objects_get_cluster_ips_from_the_wide_range() {
        let objects = build_objects(5_000, 2, &service_ranges().unwrap()).unwrap();
        let ips: HashSet<_> = objects.services.iter().map(|(_, s)| s.spec.as_ref().unwrap().cluster_ip.clone().unwrap()).collect();
        assert_eq!(ips.len(), 5_000, "5,000 services (more than a /20 holds) each get a cluster IP");
        assert_eq!(objects.distinct_backends, 10_000);
        let slice = &objects.slices[0].1;
        assert_eq!(slice.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"], "svc-00000");
    }
}
