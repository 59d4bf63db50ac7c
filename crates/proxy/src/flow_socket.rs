//! The proxy's flows for the agent: a unix socket (mode 0600, beside the rules) on which every
//! connected reader gets one JSON [`sluice_api::Flow`] per HTTP request, from the moment it
//! connects. The agent follows it so that `sluice observe` shows requests beside packets.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::flows::L7Flow;

/// Binds the socket: a stale one is replaced; only root may connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        // Root's only: the socket is connectable for the moment between bind and chmod.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
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
    let mut batch = Vec::new();
    loop {
        // One flow, waited for; then whatever else is already queued, in the same write: under
        // load the reader wakes once per batch, not once per request.
        match flows.recv().await {
            Ok(flow) => push(&mut batch, &flow),
            Err(broadcast::error::RecvError::Lagged(n)) => tracing::debug!("a flow reader lagged: {n} flows lost"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
        while batch.len() < MAX_BATCH_BYTES {
            match flows.try_recv() {
                Ok(flow) => push(&mut batch, &flow),
                // A reader that fell behind loses the oldest flows, not its stream.
                Err(broadcast::error::TryRecvError::Lagged(n)) => tracing::debug!("a flow reader lagged: {n} flows lost"),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        if stream.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Bytes of flows written at once at most.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Appends one flow as a JSON line.
fn push(batch: &mut Vec<u8>, flow: &L7Flow) {
    let at = batch.len();
    match serde_json::to_writer(&mut *batch, &flow.to_flow()) {
        Ok(()) => batch.push(b'\n'),
        Err(_) => batch.truncate(at),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::flows::FlowVerdict;
    use tokio::io::AsyncBufReadExt;

    fn flow(path: &str) -> L7Flow {
        L7Flow {
            time_unix_ns: 1,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:80".parse().unwrap(),
            directions: vec![crate::rules::Direction::Ingress],
            method: "GET".into(),
            host: None,
            path: path.into(),
            status: 403,
            latency_us: 7,
            verdict: FlowVerdict::Denied,
        }
    }

    #[tokio::test]
    async fn a_reader_gets_every_flow_as_a_json_line_of_the_api_and_only_root_may_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy/flows.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket is root-only");
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "and so is its directory");
        let (events, _) = broadcast::channel(64);
        let server = tokio::spawn(serve(listener, path.clone(), events.clone()));
        let reader = UnixStream::connect(&path).await.unwrap();
        // The reader is subscribed once its connection is accepted.
        while events.receiver_count() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        for p in ["/a", "/b", "/c"] {
            events.send(flow(p)).unwrap();
        }
        let mut lines = tokio::io::BufReader::new(reader).lines();
        for want in ["/a", "/b", "/c"] {
            let line = lines.next_line().await.unwrap().expect("a line per flow");
            let f: sluice_api::Flow = serde_json::from_str(&line).expect("an API flow");
            let http = f.http.expect("an HTTP flow");
            assert_eq!((http.path.as_str(), http.status, f.verdict.as_str()), (want, 403, "DROPPED"));
            assert_eq!(f.event_type, "l7");
        }
        server.abort();
    }
}
