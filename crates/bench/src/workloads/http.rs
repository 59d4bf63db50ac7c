//! The HTTP workload of the layer-7 benchmark: a small HTTP/1.1 server (hyper, keep-alive,
//! the same short answer to every request) started in the server pod, and what wrk prints,
//! read into requests per second and latency percentiles.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use serde::Serialize;

/// Serves `ok\n` to every request on every address, until killed.
pub async fn serve(listen: &[SocketAddr]) -> std::io::Result<()> {
    {
        let mut listeners = Vec::new();
        for addr in listen {
            listeners.push(tokio::net::TcpListener::bind(addr).await?);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for listener in listeners {
            tasks.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    tokio::spawn(async move {
                        let service = service_fn(|_: Request<hyper::body::Incoming>| async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    });
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WrkResult {
    pub requests_per_second: f64,
    pub p50_micros: f64,
    pub p99_micros: f64,
    /// Non-2xx/3xx answers and socket errors: a run with any is not a measurement.
    pub errors: u64,
}

/// Reads `wrk --latency` output.
pub fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen = (false, false, false);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_second = v.trim().parse().ok()?;
            seen.0 = true;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_micros = micros(v.trim())?;
            seen.1 = true;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_micros = micros(v.trim())?;
            seen.2 = true;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    (seen == (true, true, true)).then_some(r)
}

/// `123.45us`, `1.20ms`, `2.00s` in microseconds.
fn micros(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://198.19.0.2/\n  1 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   310.55us  120.01us   5.10ms   91.00%\n  Latency Distribution\n     50%  289.00us\n     75%  330.00us\n     90%  400.00us\n     99%    1.02ms\n  251034 requests in 5.00s, 20.35MB read\nRequests/sec:  50195.81\nTransfer/sec:      4.07MB\n";
        let r = parse_wrk(text).expect("parsed");
        assert_eq!(r.requests_per_second, 50195.81);
        assert_eq!(r.p50_micros, 289.0);
        assert_eq!(r.p99_micros, 1020.0);
        assert_eq!(r.errors, 0);
        let bad = format!("{text}  Non-2xx or 3xx responses: 12\n  Socket errors: connect 0, read 2, write 0, timeout 1\n");
        assert_eq!(parse_wrk(&bad).map(|r| r.errors), Some(15), "errors are counted");
        assert!(parse_wrk("wrk: command not found").is_none(), "no figures, no result");
    }
}
