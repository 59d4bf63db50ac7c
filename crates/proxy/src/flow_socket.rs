//! The proxy's flows for the agent: a unix socket (mode 0600, beside the rules) on which every
//! connected reader gets one JSON [`sluice_api::Flow`] per HTTP request, from the moment it
//! connects. The agent follows it so that `sluice observe` shows requests beside packets.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::flows::L7Flow;

/// Binds the socket: a stale one is replaced; only root may connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves readers until the task is dropped.
pub async fn serve(listener: UnixListener, path: PathBuf, events: broadcast::Sender<L7Flow>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(stream_to(stream, events.subscribe()));
            }
            Err(e) => {
                tracing::warn!(socket = %path.display(), "flow socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn stream_to(mut stream: UnixStream, mut flows: broadcast::Receiver<L7Flow>) {
    loop {
        let flow = match flows.recv().await {
            Ok(flow) => flow,
            // A reader that fell behind loses the oldest flows, not its stream.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!("a flow reader lagged: {n} flows lost");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Ok(mut line) = serde_json::to_vec(&flow.to_flow()) else { continue };
        line.push(b'\n');
        if stream.write_all(&line).await.is_err() {
            return;
        }
    }
}
