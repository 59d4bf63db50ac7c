//! TCP_CRR: connect, request, response, close, one connection at a time, as netperf's TCP_CRR
//! does. No Debian package has such a load generator (iperf3 and sockperf keep their connection
//! open), so this one is Sluice's own, run as hidden `sluice bench crr-server` / `crr-client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Measurement, Metric, Run, MESSAGE_BYTES};
use crate::process::{self, Server};
use crate::BenchError;

/// Where crr-server listens in the server pod (and the target port of the benchmark's service).
pub const PORT: u16 = 7000;

/// What the client prints (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrrReport {
    pub transactions: u64,
    pub seconds: f64,
    pub transactions_per_second: f64,
    /// Connect to response received, in µs; the close is not included.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Serves TCP_CRR forever: for each connection, read the request, answer, then wait for the
/// client's close, so the client closes first (its side keeps TIME_WAIT, as with netperf).
pub fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let response = [b'r'; MESSAGE_BYTES];
    let mut request = [0u8; MESSAGE_BYTES];
    for conn in listener.incoming() {
        // A connection the client abandoned is not the server's failure.
        let Ok(mut conn) = conn else { continue };
        if conn.read_exact(&mut request).is_err() || conn.write_all(&response).is_err() {
            continue;
        }
        let _ = conn.read(&mut request);
    }
    Ok(())
}

/// Runs TCP_CRR against `server` for `seconds`; any failed transaction ends the run with an
/// error (a benchmark that drops connections must not report a rate).
pub fn drive(server: SocketAddr, seconds: f64) -> std::io::Result<CrrReport> {
    let request = [b'q'; MESSAGE_BYTES];
    let mut response = [0u8; MESSAGE_BYTES];
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        let begun = Instant::now();
        let mut conn = TcpStream::connect(server)?;
        conn.write_all(&request)?;
        conn.read_exact(&mut response)?;
        latencies_ns.push(u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX));
        drop(conn);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    let transactions = latencies_ns.len() as u64;
    Ok(CrrReport {
        transactions,
        seconds: elapsed,
        transactions_per_second: transactions as f64 / elapsed,
        p50_us: nearest_rank(&latencies_ns, 50.0) / 1000.0,
        p99_us: nearest_rank(&latencies_ns, 99.0) / 1000.0,
    })
}

fn nearest_rank(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// One TCP_CRR measurement between the pods.
pub async fn measure(run: &Run) -> Result<Measurement, BenchError> {
    measure_to(run, SocketAddr::from((run.server_ip, PORT))).await
}

/// One TCP_CRR measurement from the client pod to `connect`: the server pod itself, or a
/// service whose backend it is.
pub async fn measure_to(run: &Run, connect: SocketAddr) -> Result<Measurement, BenchError> {
    let listen = SocketAddr::from((run.server_ip, PORT)).to_string();
    let server_args = vec!["bench".into(), "crr-server".into(), "--listen".into(), listen];
    let mut server =
        Server::start(process::command(&run.sluice, &server_args, &run.server)?, "crr-server", run.log_dir.join("crr-server.log"))?;
    server.wait_listening(PORT, Duration::from_secs(10)).await?;
    let client_args =
        vec!["bench".into(), "crr-client".into(), "--connect".into(), connect.to_string(), "--seconds".into(), run.seconds.to_string()];
    let client = process::command(&run.sluice, &client_args, &run.client)?;
    let result = process::output(client, "crr-client", None, Duration::from_secs(run.seconds + 30)).await;
    server.stop().await;
    let out = result?;
    let report: CrrReport =
        serde_json::from_str(out.trim()).map_err(|e| BenchError::tool("crr-client", format!("invalid report ({e}): {out}")))?;
    if report.transactions == 0 {
        return Err(BenchError::tool("crr-client", "no transaction completed"));
    }
    Ok(vec![
        (Metric::TransactionsPerSecond, report.transactions_per_second),
        (Metric::LatencyP50, report.p50_us),
        (Metric::LatencyP99, report.p99_us),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_complete_transactions_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        std::thread::spawn(move || serve(addr));
        std::thread::sleep(Duration::from_millis(100));
        let report = drive(addr, 0.2).unwrap();
        assert!(report.transactions > 10, "some transactions completed: {report:?}");
        assert!(report.p50_us > 0.0 && report.p99_us >= report.p50_us, "percentiles ordered: {report:?}");
    }

    #[test]
    fn nearest_rank_of_sorted_samples() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&s, 50.0), 50.0);
        assert_eq!(nearest_rank(&s, 99.0), 99.0);
        assert_eq!(nearest_rank(&[], 50.0), 0.0);
    }
}
