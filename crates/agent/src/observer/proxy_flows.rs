//! Layer-7 flows from the node's proxy: the proxy streams one JSON flow per HTTP request on a
//! unix socket beside its rules (`<stateDir>/proxy/flows.sock`); the agent follows it, and
//! reconnects when the proxy restarts, so `sluice observe` shows requests beside packets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::Observer;

/// How long the agent waits before connecting again to a proxy that is not there.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the proxy's flow socket until the task is dropped.
pub async fn follow(observer: Arc<Observer>, socket: PathBuf) {
    let mut told = false;
    loop {
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(stream) => {
                tracing::info!(socket = %socket.display(), "following the layer-7 proxy's flows");
                told = false;
                let mut lines = tokio::io::BufReader::new(stream).lines();
                loop {
                    match lines.next_line().await {
                        Ok(Some(line)) => match serde_json::from_str::<sluice_api::Flow>(&line) {
                            Ok(flow) => observer.ingest_flow(flow),
                            Err(e) => tracing::debug!("unreadable flow from the proxy: {e}"),
                        },
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("the proxy's flow socket: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) if !told => {
                tracing::debug!(socket = %socket.display(), "no layer-7 proxy to follow yet: {e}");
                told = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}
