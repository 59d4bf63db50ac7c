//! What the datastore and the simulator cost: etcd's CPU time and peak resident memory from
//! `/proc`, the bytes etcd sent to its clients from its own metrics (`/metrics` on the client
//! URL), and the benchmark process's own CPU time, kept apart from the datastore's figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::BenchError;

/// A reading of the counters, subtracted from a later one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub etcd_cpu_seconds: f64,
    pub etcd_sent_bytes: f64,
    /// Leases etcd revoked, expired ones included: a node's keep-alive that came too late.
    pub leases_revoked: f64,
    pub simulator_cpu_seconds: f64,
}

pub fn read(etcd_pid: u32, etcd_client: SocketAddr) -> Result<Reading, BenchError> {
    Ok(Reading {
        etcd_cpu_seconds: process_cpu_seconds(etcd_pid)?,
        etcd_sent_bytes: metric(etcd_client, "etcd_network_client_grpc_sent_bytes_total")?,
        leases_revoked: metric(etcd_client, "etcd_debugging_lease_revoked_total")?,
        simulator_cpu_seconds: own_cpu_seconds(),
    })
}

/// User and system time of `pid`, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| BenchError::io(format!("reading /proc/{pid}/stat"), e))?;
    // Fields after the command (which may hold spaces) start at state; utime and stime are the
    // 14th and 15th fields, the 12th and 13th after the command.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(BenchError::tool("etcd", format!("/proc/{pid}/stat does not read as expected: {stat}")));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) / hz)
}

/// Peak resident memory of `pid` (`VmHWM`), MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64, BenchError> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| BenchError::io(format!("reading /proc/{pid}/status"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| BenchError::tool("etcd", format!("no VmHWM in /proc/{pid}/status")))
}

/// This process's user and system time.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The sum of a counter's samples in etcd's Prometheus text.
fn metric(addr: SocketAddr, name: &str) -> Result<f64, BenchError> {
    let text = get_metrics(addr).map_err(|e| BenchError::io(format!("reading etcd's metrics at {addr}"), e))?;
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += value;
            found = true;
        }
    }
    if !found {
        return Err(BenchError::tool("etcd", format!("its metrics at {addr} have no {name}")));
    }
    Ok(sum)
}

fn get_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// Raises this process's open-file limit to its hard limit: every simulated node holds a
/// connection, and etcd (started after) inherits the limit for its side of them.
pub fn raise_open_files(needed: u64) -> Result<(), BenchError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(BenchError::io("reading the open-file limit", std::io::Error::last_os_error()));
    }
    if limit.rlim_max < needed {
        return Err(BenchError::Invalid(format!(
            "{needed} open files are needed (a connection per simulated node, on both sides) but the hard limit is {}",
            limit.rlim_max
        )));
    }
    limit.rlim_cur = limit.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(BenchError::io("raising the open-file limit", std::io::Error::last_os_error()));
    }
    Ok(())
}
