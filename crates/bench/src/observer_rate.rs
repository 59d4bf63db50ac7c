//! The observability benchmark's second half: how many events per second the agent's flow
//! observer decodes, and what is lost when the datapath produces more. Every forwarded packet
//! makes an event (monitor aggregation `all`) while one pod floods another with small UDP
//! packets; the agent's own metrics give events produced, decoded and lost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_lab::{Lab, UpOptions};

use crate::{BenchError, Machine, Summary};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObserverRate {
    pub machine: Machine,
    pub seconds: u64,
    /// Per run: packets forwarded (each made an event), events decoded, events lost.
    pub runs: Vec<ObserverRun>,
    pub decoded_per_second: Summary,
    pub produced_per_second: Summary,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObserverRun {
    pub forwarded: u64,
    pub decoded: u64,
    pub lost_ring_full: u64,
    pub elapsed_seconds: f64,
}

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: sink}\nspec:\n  containers: [{name: c, command: [iperf3, -s]}]\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: source}\nspec:\n  containers: [{name: c, command: [sleep, infinity]}]\n";

pub async fn observer_rate(sluice: PathBuf, runs: usize, seconds: u64, progress: &mut dyn FnMut(&str)) -> Result<ObserverRate, BenchError> {
    let name = format!("bench-obs-{}", std::process::id());
    let opts = UpOptions { monitor: "all".into(), ..UpOptions::new(&name, sluice) };
    let mut lab = Lab::up(opts, &mut |_| {}).await?;
    let result = measure(&mut lab, runs, seconds, progress).await;
    drop(lab);
    Lab::down(&name, &mut |_| {}).await?;
    result
}

async fn measure(lab: &mut Lab, runs: usize, seconds: u64, progress: &mut dyn FnMut(&str)) -> Result<ObserverRate, BenchError> {
    lab.apply("observer-bench.yaml", PODS, Duration::from_secs(60), &mut |_| {}).await?;
    let sink = lab.pods(Some("default"))?.into_iter().find(|p| p.metadata.name.as_deref() == Some("sink"));
    let ip = sink.and_then(|p| p.status?.pod_ip).ok_or_else(|| BenchError::Check("the sink pod has no address".into()))?;
    let socket = lab.node_socket(None)?;
    let mut samples = Vec::new();
    for run in 0..runs.max(1) {
        let before = counters(&socket).await?;
        let started = Instant::now();
        let flood = format!("iperf3 -c {ip} -u -b 0 -l 64 -t {seconds} >/dev/null 2>&1 || true");
        let code = lab.exec("default", "source", &["sh".into(), "-c".into(), flood])?;
        if code != 0 {
            return Err(BenchError::Check(format!("the flood exited with {code}")));
        }
        // Let the observer drain what the ring buffer still holds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elapsed = started.elapsed().as_secs_f64() - 0.5;
        let after = counters(&socket).await?;
        let r = ObserverRun {
            forwarded: after.0 - before.0,
            decoded: after.1 - before.1,
            lost_ring_full: after.2 - before.2,
            elapsed_seconds: elapsed,
        };
        progress(&format!(
            "run {}: {} packets forwarded, {} events decoded ({:.0}/s), {} lost (ring full)",
            run + 1,
            r.forwarded,
            r.decoded,
            r.decoded as f64 / elapsed,
            r.lost_ring_full
        ));
        samples.push(r);
    }
    let decoded: Vec<f64> = samples.iter().map(|r| r.decoded as f64 / r.elapsed_seconds).collect();
    let produced: Vec<f64> = samples.iter().map(|r| r.forwarded as f64 / r.elapsed_seconds).collect();
    Ok(ObserverRate {
        machine: Machine::describe(),
        seconds,
        decoded_per_second: Summary::of(&decoded).ok_or_else(|| BenchError::Check("no run".into()))?,
        produced_per_second: Summary::of(&produced).ok_or_else(|| BenchError::Check("no run".into()))?,
        runs: samples,
    })
}

/// (forwarded from pods, flows observed, events lost because the ring was full).
async fn counters(socket: &std::path::Path) -> Result<(u64, u64, u64), BenchError> {
    let text = sluice_api::Client::new(socket)
        .get_text(sluice_api::paths::METRICS)
        .await
        .map_err(|e| BenchError::Check(format!("reading the agent's metrics: {e}")))?;
    let value = |prefix: &str| -> u64 {
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    };
    Ok((
        value(r#"sluice_forwarded_packets_total{kind="local endpoint",direction="from-pod"}"#),
        value("sluice_flows_observed_total"),
        value(r#"sluice_events_lost_total{reason="ring-full"}"#),
    ))
}

impl ObserverRate {
    pub fn markdown(&self) -> String {
        let mut out = format!("Machine: {}\n\n| run | packets forwarded (each an event) | events decoded | lost (ring full) | decoded per second |\n|---|---|---|---|---|\n", self.machine);
        for (i, r) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} |\n",
                i + 1,
                r.forwarded,
                r.decoded,
                r.lost_ring_full,
                r.decoded as f64 / r.elapsed_seconds
            ));
        }
        out.push_str(&format!(
            "\nMedian: {:.0} events/s decoded of {:.0}/s produced.\n",
            self.decoded_per_second.p50, self.produced_per_second.p50
        ));
        out
    }
}
