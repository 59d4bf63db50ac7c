//! Client of the agent API: one HTTP/1.1 connection per call over the unix socket. Calls are few
//! and small (a CNI ADD, a CLI query), so connection reuse is not worth its state.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ApiError;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached: the agent is not running or not ready.
    #[error("agent unreachable at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke mid-call.
    #[error("agent connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// The agent answered with an error.
    #[error("agent refused ({status}): {}", .error.message)]
    Api { status: StatusCode, error: ApiError },
    /// The file handed to the agent with the request could not be sent.
    #[error("handing a descriptor to the agent: {0}")]
    PassFd(#[source] std::io::Error),
    /// The agent's answer was not the JSON this client expects.
    #[error("agent answer could not be decoded: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A handle on one agent's socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

// === impl Client ===

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self { socket: socket.as_ref().to_path_buf() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, Bytes::new(), None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.call(Method::POST, path, body, None).await
    }

    /// A `POST` that hands the agent an open file (a pod's network namespace) along with the
    /// request: before the request, one [`crate::FD_PREAMBLE`] byte carrying the descriptor
    /// (SCM_RIGHTS). The agent then needs no path that only the caller's mount namespace can
    /// resolve.
    pub async fn post_with_fd<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        fd: BorrowedFd<'_>,
    ) -> Result<T, ClientError> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.call(Method::POST, path, body, Some(fd)).await
    }

    /// A `GET` whose answer is text (the metrics).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, bytes) = self.exchange(Method::GET, path, Bytes::new(), None).await?;
        if status.is_success() {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// A `GET` whose answer is a stream of lines (a followed flow stream): `on_line` gets each
    /// line as it arrives and returns false to stop.
    pub async fn follow_lines(&self, path: &str, mut on_line: impl FnMut(&str) -> bool) -> Result<(), ClientError> {
        let response = self.send(Method::GET, path, Bytes::new(), None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                if !text.trim().is_empty() && !on_line(&text) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.exchange(method, path, body, fd).await?;
        if status.is_success() {
            Ok(serde_json::from_slice(&bytes)?)
        } else {
            Err(api_error(status, &bytes))
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let response = self.send(method, path, body, fd).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// One request on a new connection; `fd`, when given, is handed over before it.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { path: self.socket.clone(), source })?;
        if let Some(fd) = fd {
            send_fd(&stream, fd).await.map_err(ClientError::PassFd)?;
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sluice-agent")
            .header("content-type", "application/json")
            .body(Full::new(body));
        // A request built from a constant method, a path and two static headers cannot be invalid
        // unless the path is; report that as an API error rather than panic.
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Err(ClientError::Api {
                    status: StatusCode::BAD_REQUEST,
                    error: ApiError { code: 7, message: format!("invalid request path {path:?}: {e}"), details: String::new() },
                })
            }
        };
        // The connection task ends by itself when the response body is done or dropped.
        drop(driver);
        Ok(sender.send_request(request).await?)
    }
}

/// Sends the preamble byte with `fd` attached.
async fn send_fd(stream: &tokio::net::UnixStream, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&[crate::FD_PREAMBLE])];
            sendmsg::<()>(stream.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(std::io::Error::other("the descriptor's preamble byte was not sent")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let error = serde_json::from_slice(bytes).unwrap_or_else(|_| ApiError {
        code: 999,
        message: String::from_utf8_lossy(bytes).into_owned(),
        details: String::new(),
    });
    ClientError::Api { status, error }
}
