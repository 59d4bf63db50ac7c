//! Launching an etcd server process (Debian's `etcd-server`) for labs and tests: one member on
//! the addresses it is given, its output in a log file, stopped with SIGTERM (SIGKILL after a
//! timeout) and restartable on the same data directory and ports.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{EtcdConfig, EtcdStore};

/// How long `start` waits for the server to answer.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an etcd server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No binary was given and none is on PATH.
    #[error("no `etcd` binary on PATH; install Debian's `etcd-server` package or pass the binary's path")]
    BinaryNotFound,
    /// The process could not be spawned.
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file or directory the server needs could not be made.
    #[error("etcd server: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it answered.
    #[error("etcd at {url} exited during start ({status}); its log {log}:\n{tail}")]
    Exited { url: String, status: std::process::ExitStatus, log: PathBuf, tail: String },
    /// The process runs but did not answer in time.
    #[error("etcd at {url} did not answer within {waited:?} (last error: {last_error}); its log {log}:\n{tail}")]
    NotReady { url: String, waited: Duration, last_error: String, log: PathBuf, tail: String },
    /// Signalling or waiting for the process failed.
    #[error("stopping etcd (pid {pid}): {source}")]
    Stop {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// TLS for the client port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate and key (`--cert-file`, `--key-file`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signed the server's certificate and, with `client_cert_auth`, the clients'
    /// (`--trusted-ca-file`).
    pub ca_file: PathBuf,
    /// Accept only clients with a certificate the CA signed (`--client-cert-auth`).
    pub client_cert_auth: bool,
}

/// How to run one etcd member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdServerOptions {
    /// The `etcd` binary; `None` looks it up on PATH.
    pub binary: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub name: String,
    /// Where clients connect.
    pub client_addr: SocketAddr,
    /// The peer port, on the client address's IP.
    pub peer_port: u16,
    pub tls: Option<ServerTls>,
    /// etcd's stdout and stderr go here (appended, so a restart keeps the earlier log).
    pub log_file: PathBuf,
    /// `--max-txn-ops`: raised from etcd's 128 so big updates fit (Sluice's own writers chunk
    /// to stay under the default anyway).
    pub max_txn_ops: u32,
    /// Anything else for the command line.
    pub extra_args: Vec<String>,
    pub start_timeout: Duration,
}

// === impl EtcdServerOptions ===

impl EtcdServerOptions {
    /// A member on 127.0.0.1 with two free ports, its data and log under `dir`.
    pub fn local(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            binary: None,
            data_dir: dir.join("data"),
            name: "sluice".into(),
            client_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_local_port()?),
            peer_port: free_local_port()?,
            tls: None,
            log_file: dir.join("etcd.log"),
            max_txn_ops: 10_000,
            extra_args: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
        })
    }

    /// `https://ip:port` with TLS, `http://ip:port` without.
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    fn peer_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.client_addr.ip(), self.peer_port))
    }

    /// The program and its arguments, for a caller that spawns it itself (in a lab's network
    /// namespace, say).
    pub fn command_line(&self) -> Result<(PathBuf, Vec<String>), ServerError> {
        let binary = match &self.binary {
            Some(b) => b.clone(),
            None => find_on_path("etcd").ok_or(ServerError::BinaryNotFound)?,
        };
        let client = self.client_url();
        let peer = self.peer_url();
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.name),
            "--initial-cluster-state=new".into(),
            format!("--max-txn-ops={}", self.max_txn_ops),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        if let Some(tls) = &self.tls {
            args.push(format!("--cert-file={}", tls.cert_file.display()));
            args.push(format!("--key-file={}", tls.key_file.display()));
            args.push(format!("--trusted-ca-file={}", tls.ca_file.display()));
            if tls.client_cert_auth {
                args.push("--client-cert-auth".into());
            }
        }
        args.extend(self.extra_args.iter().cloned());
        Ok((binary, args))
    }

    /// A client configuration for this server. With TLS it presents the server's own
    /// certificate, which is valid for client authentication too (see [`super::Pki`]).
    pub fn client_config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new(vec![self.client_url()]);
        if let Some(tls) = &self.tls {
            config.ca_file = Some(tls.ca_file.clone());
            config.cert_file = Some(tls.cert_file.clone());
            config.key_file = Some(tls.key_file.clone());
        }
        config
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// A running etcd member; dropping it stops it (its data stays).
pub struct EtcdServer {
    options: EtcdServerOptions,
    child: Option<Child>,
}

// === impl EtcdServer ===

impl EtcdServer {
    /// Starts the member and waits until it answers a read (at most `options.start_timeout`).
    pub async fn start(options: EtcdServerOptions) -> Result<Self, ServerError> {
        let mut server = Self { options, child: None };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), ServerError> {
        let (binary, args) = self.options.command_line()?;
        std::fs::create_dir_all(&self.options.data_dir).map_err(|source| ServerError::Io {
            action: "creating",
            path: self.options.data_dir.clone(),
            source,
        })?;
        // etcd refuses a data directory others can read.
        set_mode(&self.options.data_dir, 0o700)?;
        let log = File::options().create(true).append(true).open(&self.options.log_file).map_err(|source| ServerError::Io {
            action: "opening",
            path: self.options.log_file.clone(),
            source,
        })?;
        let log_err =
            log.try_clone().map_err(|source| ServerError::Io { action: "opening", path: self.options.log_file.clone(), source })?;
        let child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| ServerError::Spawn { binary: binary.clone(), source })?;
        self.child = Some(child);
        if let Err(e) = self.wait_ready().await {
            self.stop_quietly();
            return Err(e);
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), ServerError> {
        let url = self.options.client_url();
        let config = self.options.client_config();
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ServerError::Exited {
                        url,
                        status,
                        log: self.options.log_file.clone(),
                        tail: log_tail(&self.options.log_file),
                    });
                }
            }
            let last_error = match tokio::time::timeout(Duration::from_secs(2), EtcdStore::connect(&config)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connecting took over 2 s".to_string(),
            };
            if started.elapsed() > self.options.start_timeout {
                return Err(ServerError::NotReady {
                    url,
                    waited: self.options.start_timeout,
                    last_error,
                    log: self.options.log_file.clone(),
                    tail: log_tail(&self.options.log_file),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn options(&self) -> &EtcdServerOptions {
        &self.options
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn client_url(&self) -> String {
        self.options.client_url()
    }

    /// See [`EtcdServerOptions::client_config`].
    pub fn client_config(&self) -> EtcdConfig {
        self.options.client_config()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process (SIGTERM, SIGKILL after 10 s) and waits for it; the data stays, so
    /// [`EtcdServer::restart`] brings the same member back. Blocks the calling thread while it
    /// waits (etcd stops within a second on SIGTERM).
    pub fn stop(&mut self) -> Result<(), ServerError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let stop_err = |source| ServerError::Stop { pid, source };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let raw = i32::try_from(pid).map_err(|_| stop_err(std::io::Error::other("pid out of range")))?;
        if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGTERM) {
            tracing::debug!(pid, error = %e, "SIGTERM to etcd");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(stop_err(e)),
            }
        }
        child.kill().map_err(stop_err)?;
        child.wait().map(drop).map_err(stop_err)
    }

    fn stop_quietly(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping etcd");
        }
    }

    /// Stops the process if it runs and starts it again on the same data and ports.
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        self.stop()?;
        self.spawn().await
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| ServerError::Io {
        action: "setting the mode of",
        path: path.to_path_buf(),
        source,
    })
}

/// The last lines of the log, for errors.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
