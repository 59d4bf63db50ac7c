//! TCP_RR with sockperf: ping-pong on one TCP connection, one transaction in flight. Latency is
//! the full round trip (`--full-rtt`), so one transaction takes one latency; transactions per
//! second is sockperf's own count of replies over its measured duration.

use std::time::Duration;

use super::{Measurement, Metric, Run, MESSAGE_BYTES};
use crate::process::{self, find_on_path, Server};
use crate::BenchError;

const PORT: u16 = 11111;

pub async fn ping_pong(run: &Run) -> Result<Measurement, BenchError> {
    let sockperf = find_on_path("sockperf").ok_or(BenchError::MissingTool { tool: "sockperf".into(), package: "sockperf" })?;
    let ip = run.server_ip.to_string();
    let server_args: Vec<String> = ["server", "--tcp", "-i", &ip, "-p", &PORT.to_string()].iter().map(|s| s.to_string()).collect();
    let mut server =
        Server::start(process::command(&sockperf, &server_args, &run.server)?, "sockperf server", run.log_dir.join("sockperf-server.log"))?;
    server.wait_listening(PORT, Duration::from_secs(10)).await?;
    let client_args: Vec<String> = [
        "ping-pong",
        "--tcp",
        "-i",
        &ip,
        "-p",
        &PORT.to_string(),
        "-t",
        &run.seconds.to_string(),
        "-m",
        &MESSAGE_BYTES.to_string(),
        "--full-rtt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let client = process::command(&sockperf, &client_args, &run.client)?;
    let result = process::output(client, "sockperf", None, Duration::from_secs(run.seconds + 30)).await;
    server.stop().await;
    let summary = parse(&result?)?;
    Ok(vec![
        (Metric::TransactionsPerSecond, summary.transactions_per_second),
        (Metric::LatencyP50, summary.p50_us),
        (Metric::LatencyP99, summary.p99_us),
    ])
}

#[derive(Debug, PartialEq)]
struct Summary {
    transactions_per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Reads sockperf's report: "[Valid Duration] RunTime=1.550 sec; SentMessages=...;
/// ReceivedMessages=N" and "---> percentile 50.000 = 13.434" (µs, round trip).
fn parse(output: &str) -> Result<Summary, BenchError> {
    let text = strip_ansi(output);
    let missing = |what: &str| BenchError::tool("sockperf", format!("no {what} in its report: {}", crate::process::tail(text.trim(), 800)));
    let valid = text.lines().find(|l| l.contains("[Valid Duration]")).ok_or_else(|| missing("[Valid Duration] line"))?;
    let field = |name: &str| -> Option<f64> {
        let start = valid.find(&format!("{name}="))? + name.len() + 1;
        valid[start..].split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let seconds = field("RunTime").ok_or_else(|| missing("RunTime"))?;
    let replies = field("ReceivedMessages").ok_or_else(|| missing("ReceivedMessages"))?;
    if seconds <= 0.0 || replies <= 0.0 {
        return Err(BenchError::tool("sockperf", format!("measured nothing: {valid}")));
    }
    let percentile =
        |p: &str| -> Option<f64> { text.lines().find_map(|l| l.split_once(&format!("percentile {p} ="))?.1.trim().parse().ok()) };
    Ok(Summary {
        transactions_per_second: replies / seconds,
        p50_us: percentile("50.000").ok_or_else(|| missing("50th percentile"))?,
        p99_us: percentile("99.000").ok_or_else(|| missing("99th percentile"))?,
    })
}

/// sockperf colours its report with ANSI escape sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters... final byte in '@'..='~'
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "sockperf: Test ended\n\
        sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=141397; ReceivedMessages=141396\n\
        sockperf: ========= Printing statistics for Server No: 0\n\
        sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=110549; ReceivedMessages=110549\n\
        sockperf: \u{1b}[2;35m====> avg-rtt=13.988 (std-dev=5.885)\u{1b}[0m\n\
        sockperf: ---> percentile 99.999 =  789.250\n\
        sockperf: ---> percentile 99.000 =   20.484\n\
        sockperf: ---> percentile 90.000 =   15.421\n\
        sockperf: ---> percentile 50.000 =   13.434\n\
        sockperf: ---> <MIN> observation =    9.920";

    #[test]
    fn the_report_gives_rate_and_percentiles() {
        let s = parse(REPORT).unwrap();
        assert!((s.transactions_per_second - 110_549.0 / 1.55).abs() < 1e-6, "{s:?}");
        assert_eq!(s.p50_us, 13.434);
        assert_eq!(s.p99_us, 20.484);
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
    }

    #[test]
    fn a_report_without_figures_is_an_error() {
        assert!(parse("sockperf: connection refused").is_err());
    }
}
