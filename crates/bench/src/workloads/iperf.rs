//! TCP_STREAM with iperf3: a one-off server in the server pod, the client in the client pod
//! with 1 or 4 parallel streams; throughput is what the server received, first second omitted
//! (slow start). The machine's busy CPU time over the same measured seconds, divided by the
//! gigabits received, is the CPU cost per gigabit: client, server, softirq and whatever the
//! configuration adds in between, on both CPUs.

use std::time::{Duration, Instant};

use super::{Measurement, Metric, Run};
use crate::configurations::machine_cpu_ticks;
use crate::process::{self, find_on_path, Server};
use crate::BenchError;

const PORT: u16 = 5201;

pub async fn stream(run: &Run, streams: usize) -> Result<Measurement, BenchError> {
    let iperf3 = find_on_path("iperf3").ok_or(BenchError::MissingTool { tool: "iperf3".into(), package: "iperf3" })?;
    let ip = run.server_ip.to_string();
    let server_args: Vec<String> = vec!["-s".into(), "-1".into(), "-p".into(), PORT.to_string(), "-B".into(), ip.clone()];
    let mut server =
        Server::start(process::command(&iperf3, &server_args, &run.server)?, "iperf3 server", run.log_dir.join("iperf3-server.log"))?;
    server.wait_listening(PORT, Duration::from_secs(10)).await?;
    let client_args: Vec<String> =
        ["-c", &ip, "-p", &PORT.to_string(), "-t", &run.seconds.to_string(), "-O", "1", "-P", &streams.to_string(), "-J"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let client = process::command(&iperf3, &client_args, &run.client)?;
    let client = tokio::spawn(process::output(client, "iperf3", None, Duration::from_secs(run.seconds + 30)));
    // The CPU window opens when iperf3 starts counting (after the omitted second).
    tokio::time::sleep(OMITTED).await;
    let start = (Instant::now(), machine_cpu_ticks());
    let result = client.await.map_err(|e| BenchError::tool("iperf3", format!("the client task failed: {e}")));
    let end = (Instant::now(), machine_cpu_ticks());
    server.stop().await;
    let gbps = received_gbps(&result??)?;
    let ((t0, cpu0), (t1, cpu1)) = (start, end);
    let busy_seconds = (cpu1?.0.saturating_sub(cpu0?.0)) as f64 / 100.0;
    let gigabits = gbps * t1.duration_since(t0).as_secs_f64();
    if gigabits <= 0.0 {
        return Err(BenchError::tool("iperf3", "no data received"));
    }
    Ok(vec![(Metric::Throughput, gbps), (Metric::CpuPerGbit, busy_seconds * 1000.0 / gigabits)])
}

/// iperf3's `-O 1`.
const OMITTED: Duration = Duration::from_secs(1);

/// Gbit/s the server received, from iperf3's JSON report.
fn received_gbps(json: &str) -> Result<f64, BenchError> {
    let report: serde_json::Value =
        serde_json::from_str(json).map_err(|e| BenchError::tool("iperf3", format!("invalid JSON report: {e}")))?;
    if let Some(error) = report["error"].as_str() {
        return Err(BenchError::tool("iperf3", error.to_owned()));
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| BenchError::tool("iperf3", "no end.sum_received.bits_per_second in the report"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_what_the_server_received() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 5.1e10}, "sum_received": {"bits_per_second": 4.5e10}}}"#;
        assert_eq!(received_gbps(json).unwrap(), 45.0);
    }

    #[test]
    fn an_iperf3_error_is_reported() {
        let err = received_gbps(r#"{"error": "unable to connect to server"}"#).unwrap_err();
        assert!(err.to_string().contains("unable to connect"), "{err}");
    }
}
