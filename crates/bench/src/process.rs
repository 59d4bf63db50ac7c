//! The benchmark's processes and namespace work. Tools start inside a network namespace and,
//! for the measured client and server, pinned to one CPU, both chosen before exec so every
//! configuration places them the same way; a server is killed when its guard is dropped.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, setns, CloneFlags, CpuSet};
use nix::unistd::Pid;
use sluice_datapath::netns::NetnsGuard;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::BenchError;

/// Where a process runs: a network namespace, for measured processes one CPU, and for a pod's
/// client whose connect() the node's cgroup hooks must see, the pod's cgroup.
#[derive(Debug, Clone)]
pub struct Place {
    pub netns: PathBuf,
    pub cpu: Option<usize>,
    pub cgroup: Option<PathBuf>,
}

impl Place {
    /// A node's namespace, any CPU, the benchmark's own cgroup: for tools that set it up.
    pub fn node(netns: &Path) -> Self {
        Self { netns: netns.to_path_buf(), cpu: None, cgroup: None }
    }
}

/// A command that starts in `place`; killed if its handle is dropped.
pub fn command(program: impl AsRef<std::ffi::OsStr>, args: &[String], place: &Place) -> Result<Command, BenchError> {
    let ns = File::open(&place.netns).map_err(|e| BenchError::io(format!("opening netns {}", place.netns.display()), e))?;
    let cpus = match place.cpu {
        Some(cpu) => {
            let mut set = CpuSet::new();
            set.set(cpu).map_err(|e| BenchError::io(format!("CPU {cpu}"), e))?;
            Some(set)
        }
        None => None,
    };
    let procs = match &place.cgroup {
        Some(dir) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(|e| BenchError::io(format!("opening {}/cgroup.procs", dir.display()), e))?,
        ),
        None => None,
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec; it calls only write(2), setns(2) and
    // sched_setaffinity(2) with descriptors and a CPU set prepared before the fork, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(mut p) = procs.as_ref() {
                // "0" moves the writing process: the child itself.
                std::io::Write::write_all(&mut p, b"0")?;
            }
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            if let Some(set) = &cpus {
                sched_setaffinity(Pid::from_raw(0), set).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `cmd` to completion within `timeout`, feeding it `stdin`; returns its stdout. A
/// non-zero exit is an error carrying what the tool printed.
pub async fn output(mut cmd: Command, tool: &str, stdin: Option<&str>, timeout: Duration) -> Result<String, BenchError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| BenchError::tool(tool, format!("cannot start: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(|e| BenchError::tool(tool, format!("writing its input: {e}")))?;
    }
    // Dropping the future on timeout drops the child, which kills it (kill_on_drop).
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| BenchError::tool(tool, format!("did not finish within {} s", timeout.as_secs())))?
        .map_err(|e| BenchError::tool(tool, format!("waiting for it: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(BenchError::tool(tool, format!("{}: {} {}", out.status, tail(stderr.trim(), 600), tail(stdout.trim(), 600))));
    }
    Ok(stdout)
}

/// A server process for one measurement; killed when dropped.
pub struct Server {
    child: Child,
    tool: String,
    log: PathBuf,
}

// === impl Server ===

impl Server {
    /// Starts `cmd` with its output in `log`.
    pub fn start(mut cmd: Command, tool: &str, log: PathBuf) -> Result<Self, BenchError> {
        let file = File::create(&log).map_err(|e| BenchError::io(format!("creating {}", log.display()), e))?;
        let file2 = file.try_clone().map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        cmd.stdout(file).stderr(file2);
        let child = cmd.spawn().map_err(|e| BenchError::tool(tool, format!("cannot start: {e}")))?;
        Ok(Self { child, tool: tool.into(), log })
    }

    /// Waits until the server listens on TCP `port` (read from its own /proc entry, so no probe
    /// connection disturbs it), or fails when it exits first.
    pub async fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<(), BenchError> {
        let pid = self.child.id().ok_or_else(|| BenchError::tool(&self.tool, "exited at once"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::tool(&self.tool, format!("server exited ({status}): {}", self.log_tail())));
            }
            if listening(pid, port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::tool(
                    &self.tool,
                    format!("server not listening on port {port} after {} s: {}", timeout.as_secs(), self.log_tail()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the server and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("log {}: {}", self.log.display(), tail(text.trim(), 400))
    }
}

/// Whether process `pid` has a listening TCP socket on `port` in its network namespace.
fn listening(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        has_listener(&table, port)
    })
}

/// Whether a /proc/net/tcp table has a socket in state LISTEN (0A) on local `port`.
fn has_listener(table: &str, port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or("");
        let state = fields.nth(1).unwrap_or("");
        local.ends_with(&wanted) && state == "0A"
    })
}

/// Runs `f` on a blocking thread that has entered the namespace at `netns` (sysctls and
/// /proc/thread-self/net files belong to the namespace of the thread that opens them).
pub async fn in_netns<T, F>(netns: &Path, f: F) -> Result<T, BenchError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BenchError> + Send + 'static,
{
    let path = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let _guard = NetnsGuard::enter(&path)?;
        f()
    })
    .await
    .map_err(|e| BenchError::io("joining a namespace task", std::io::Error::other(e.to_string())))?
}

/// The two CPUs the client and the server are pinned to: the first two this process may use.
pub fn cpu_pair() -> Result<(usize, usize), BenchError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| BenchError::io("reading the CPU affinity", e))?;
    let allowed: Vec<usize> = (0..CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)).collect();
    match allowed.as_slice() {
        [client, server, ..] => Ok((*client, *server)),
        _ => Err(BenchError::Check(format!("the benchmark pins client and server to two CPUs; this process may use only {allowed:?}"))),
    }
}

/// Finds `program` on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The last `max` bytes of `text`, on a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0300130A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   1: 0300130A:1B58 0200130A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n";
        assert!(has_listener(table, 5201), "port 5201 (0x1451) is listening");
        assert!(!has_listener(table, 7000), "port 7000 (0x1B58) is established, not listening");
        assert!(!has_listener(table, 80), "port 80 is absent");
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
        assert_eq!(tail("aé", 1), "", "never splits a character");
    }
}
