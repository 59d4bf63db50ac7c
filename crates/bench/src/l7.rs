//! The layer-7 benchmark: HTTP requests per second and latency percentiles (wrk, keep-alive)
//! from one pod to another on the same node, in three configurations measured in interleaved
//! rounds: no policy (`direct`); a layer-4 policy allowing ports 80 and 81 (`l4-policy`); and
//! HTTP rules on port 80, so that its connections pass through the node's proxy, with port 81
//! still allowed at layer 4 (`http-rules`). Port 81 in the last is the plain flow beside a
//! proxied one: it must cost what it costs under the layer-4 policy.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sluice_lab::{Lab, UpOptions};

use crate::workloads::http::{parse_wrk, WrkResult};
use crate::{BenchError, Machine, Summary};

#[derive(Debug, Clone)]
pub struct L7Options {
    pub runs: usize,
    pub seconds: u64,
    /// How the run was started, quoted in the report.
    pub command: String,
}

/// One (configuration, port, connections) case over the rounds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Case {
    pub configuration: String,
    pub port: u16,
    pub connections: u32,
    pub samples: Vec<WrkResult>,
    pub requests_per_second: Summary,
    pub p50_micros: Summary,
    pub p99_micros: Summary,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Result {
    pub machine: Machine,
    pub command: String,
    pub seconds: u64,
    pub runs: usize,
    pub cases: Vec<L7Case>,
}

const CONFIGURATIONS: [&str; 3] = ["direct", "l4-policy", "http-rules"];
/// (port, connections) measured in each configuration.
const LOADS: [(u16, u32); 3] = [(80, 1), (80, 16), (81, 16)];
const POLICY: &str = "bench-l7";

fn manifest(sluice: &std::path::Path) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: bench, labels: {{app: server}}}}\n\
         spec:\n  containers: [{{name: c, command: [{sluice}, bench, http-server, --listen, '0.0.0.0:80', --listen, '0.0.0.0:81']}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: bench, labels: {{app: client}}}}\n\
         spec:\n  containers: [{{name: c, command: [sleep, infinity]}}]\n",
        sluice = sluice.display()
    )
}

/// The SluiceNetworkPolicy of a configuration (`None`: no policy).
fn policy(configuration: &str) -> Option<String> {
    let port80 = match configuration {
        "l4-policy" => "{ports: [{port: '80', protocol: TCP}]}",
        "http-rules" => "{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET, path: '/.*'}]}}",
        _ => return None,
    };
    Some(format!(
        "apiVersion: sluice.dev/v1\nkind: SluiceNetworkPolicy\nmetadata: {{name: {POLICY}, namespace: bench}}\nspec:\n  \
         endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    \
         toPorts: [{port80}, {{ports: [{{port: '81', protocol: TCP}}]}}]\n"
    ))
}

pub async fn l7(sluice: PathBuf, opts: &L7Options, progress: &mut dyn FnMut(&str)) -> Result<L7Result, BenchError> {
    let name = format!("bench-l7-{}", std::process::id());
    let mut lab = Lab::up(UpOptions::new(&name, sluice.clone()), &mut |_| {}).await?;
    let result = measure(&mut lab, &sluice, opts, progress).await;
    drop(lab);
    Lab::down(&name, &mut |_| {}).await?;
    result
}

async fn measure(
    lab: &mut Lab,
    sluice: &std::path::Path,
    opts: &L7Options,
    progress: &mut dyn FnMut(&str),
) -> Result<L7Result, BenchError> {
    lab.apply("l7-bench.yaml", &manifest(sluice), Duration::from_secs(60), &mut |_| {}).await?;
    let server = lab.pods(Some("bench"))?.into_iter().find(|p| p.metadata.name.as_deref() == Some("server"));
    let ip = server.and_then(|p| p.status?.pod_ip).ok_or_else(|| BenchError::Check("the server pod has no address".into()))?;
    let mut samples: Vec<Vec<WrkResult>> = vec![Vec::new(); CONFIGURATIONS.len() * LOADS.len()];
    for round in 0..opts.runs.max(1) {
        for (c, configuration) in CONFIGURATIONS.iter().enumerate() {
            match policy(configuration) {
                Some(text) => {
                    lab.apply("l7-bench-policy.yaml", &text, Duration::from_secs(30), &mut |_| {}).await?;
                }
                None => lab.delete_sluice_policy("bench", POLICY, true, &mut |_| {})?,
            }
            check(lab, &ip, configuration).await?;
            for (l, (port, connections)) in LOADS.iter().enumerate() {
                let r = wrk(lab, &ip, *port, *connections, opts.seconds)?;
                progress(&format!(
                    "round {}: {configuration} port {port}, {connections} connection(s): {:.0} requests/s, p50 {:.0} µs, p99 {:.0} µs",
                    round + 1,
                    r.requests_per_second,
                    r.p50_micros,
                    r.p99_micros
                ));
                samples[c * LOADS.len() + l].push(r);
            }
        }
    }
    let mut cases = Vec::new();
    for (c, configuration) in CONFIGURATIONS.iter().enumerate() {
        for (l, (port, connections)) in LOADS.iter().enumerate() {
            let s = std::mem::take(&mut samples[c * LOADS.len() + l]);
            let summary = |f: fn(&WrkResult) -> f64| {
                Summary::of(&s.iter().map(f).collect::<Vec<_>>()).ok_or_else(|| BenchError::Check("no run".into()))
            };
            cases.push(L7Case {
                configuration: (*configuration).to_owned(),
                port: *port,
                connections: *connections,
                requests_per_second: summary(|r| r.requests_per_second)?,
                p50_micros: summary(|r| r.p50_micros)?,
                p99_micros: summary(|r| r.p99_micros)?,
                samples: s,
            });
        }
    }
    Ok(L7Result { machine: Machine::describe(), command: opts.command.clone(), seconds: opts.seconds, runs: opts.runs.max(1), cases })
}

/// Waits until the configuration is in force, as a client sees it: with HTTP rules a POST gets
/// 403 from the proxy; otherwise the server answers it.
async fn check(lab: &Lab, ip: &str, configuration: &str) -> Result<(), BenchError> {
    let want = if configuration == "http-rules" { "403" } else { "200" };
    let argv: Vec<String> =
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "-X", "POST", &format!("http://{ip}/")]
            .map(String::from)
            .to_vec();
    let mut last = String::new();
    for _ in 0..50 {
        let (_, code) = lab.exec_output("bench", "client", &argv)?;
        if code.trim() == want {
            return Ok(());
        }
        last = code;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(BenchError::Check(format!("{configuration}: a POST should get {want}, got {last:?}: the configuration is not what it claims")))
}

fn wrk(lab: &Lab, ip: &str, port: u16, connections: u32, seconds: u64) -> Result<WrkResult, BenchError> {
    let threads = connections.min(2);
    let argv: Vec<String> = [
        "wrk".to_owned(),
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_owned(),
        format!("http://{ip}:{port}/"),
    ]
    .to_vec();
    let (code, out) = lab.exec_output("bench", "client", &argv)?;
    let result = parse_wrk(&out).ok_or_else(|| BenchError::Check(format!("wrk exited with {code} and printed no figures: {out}")))?;
    if result.errors > 0 {
        return Err(BenchError::Check(format!("wrk to port {port} saw {} errors: {out}", result.errors)));
    }
    Ok(result)
}

impl L7Result {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Machine: {}\n\nCommand: `{}`; {} rounds of {} s per case, configurations interleaved; medians (min–max).\n\n\
             | configuration | port | connections | requests/s | vs direct | p50 µs | p99 µs |\n|---|---|---|---|---|---|---|\n",
            self.machine, self.command, self.runs, self.seconds
        );
        for c in &self.cases {
            let direct = self.cases.iter().find(|d| d.configuration == "direct" && d.port == c.port && d.connections == c.connections);
            let ratio = direct.map_or(String::new(), |d| format!("{:.2}x", c.requests_per_second.p50 / d.requests_per_second.p50));
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {ratio} | {:.0} | {:.0} |\n",
                c.configuration,
                c.port,
                c.connections,
                c.requests_per_second.p50,
                c.requests_per_second.min,
                c.requests_per_second.max,
                c.p50_micros.p50,
                c.p99_micros.p50
            ));
        }
        out
    }
}
