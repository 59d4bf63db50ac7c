//! `sluice-proxy`: the node's layer-7 proxy as a process of its own, for nodes where the agent
//! does not run it in-process. Exits cleanly on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice_proxy::{ProxyConfig, UpstreamMode};
use tokio::signal::unix::{signal, SignalKind};

/// Enforce the HTTP rules of Sluice policies on the connections the datapath redirects.
#[derive(Debug, Parser)]
#[command(name = "sluice-proxy", version)]
struct Args {
    /// Port of the listeners on 127.0.0.1 and [::1].
    #[arg(long)]
    port: u16,
    /// The rules file the agent writes (JSON `ProxyRules`).
    #[arg(long)]
    rules: PathBuf,
    /// Where the datapath's maps are pinned.
    #[arg(long)]
    bpffs: PathBuf,
    /// A file to write the process id to; removed on exit.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&args));
    if let Some(pid_file) = &args.pid_file {
        if let Err(e) = std::fs::remove_file(pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing pid file {}: {e}", pid_file.display());
            }
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the process could not run.
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Proxy(#[from] sluice_proxy::ProxyError),
    #[error("writing pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

async fn run(args: &Args) -> Result<(), MainError> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| MainError::Signal { signal: "SIGTERM", source })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| MainError::Signal { signal: "SIGINT", source })?;
    let config = ProxyConfig {
        port: args.port,
        rules_path: args.rules.clone(),
        bpffs: Some(args.bpffs.clone()),
        upstream: UpstreamMode::Transparent,
    };
    let proxy = sluice_proxy::Proxy::bind(config)?;
    if let Some(path) = &args.pid_file {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| MainError::PidFile { path: path.clone(), source })?;
    }
    proxy
        .serve(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        })
        .await?;
    Ok(())
}
