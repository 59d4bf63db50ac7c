//! Serving the API: the HTTP/1.1 connection loop under the limits that keep the agent up and
//! answering when a client misbehaves — a connection that never sends a request, a request that
//! never ends, a body or header block too large, more clients than the agent has descriptors
//! to spare. Each limit is a constant below; the router behind it knows none of them.
//!
//! A client may hand the agent one descriptor before its first request (the CNI plugin hands
//! over the pod's network namespace): a [`sluice_api::FD_PREAMBLE`] byte carrying it with
//! SCM_RIGHTS. The loop peeks at each connection's first byte, takes the descriptor when it is
//! there, and puts it in every request of the connection as a [`PassedFd`] extension.

use std::convert::Infallible;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::serve::Listener;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// A request body larger than this is refused with 413. The largest real one is a CNI GC
/// listing every attachment of a node: about 100 bytes each, so 256 KiB is room for 2,500.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The request line and headers must fit in this much; a longer header block is refused with
/// 431. Real requests send about 150 bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A connection that has not sent a whole request head this long after connecting, or after
/// its previous answer, is closed: it holds a slot and a descriptor and asks for nothing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request whose body has not arrived whole this long after its head is refused with 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait in the socket's backlog until one ends. Well under the
/// usual limit of 1,024 open files, so that clients can never take the descriptors the agent
/// needs for its maps, links and database.
pub const MAX_CONNECTIONS: usize = 256;

/// How long open connections (a followed flow stream never ends by itself) may take to finish
/// once the agent is asked to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// for up to [`SHUTDOWN_GRACE`]. Accept errors (out of descriptors) are logged and retried by
/// the listener, so this only returns at shutdown.
pub async fn serve<L>(mut listener: L, app: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    L::Io: Connection,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let io = tokio::select! {
            () = &mut shutdown => break,
            (io, _) = listener.accept() => io,
        };
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The preamble's wait counts against the header timeout: a client that sends
            // nothing is closed as if it had sent no request.
            let passed = match tokio::time::timeout(HEADER_READ_TIMEOUT, io.take_fd()).await {
                Ok(Ok(fd)) => fd.map(|fd| PassedFd(Arc::new(fd))),
                Ok(Err(e)) => {
                    tracing::debug!("API connection: reading a passed descriptor: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request| handle(app.clone(), request, passed.clone()));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEADER_BYTES);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // A client that hung up, timed out or sent garbage: its business, not the agent's.
            if let Err(e) = served {
                tracing::debug!("API connection ended: {e}");
            }
        });
    }
    drop(listener);
    drop(stop_tx);
    // Every slot back means every connection has ended.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await.is_err() {
        tracing::info!("API connections still open after {} s are closed", SHUTDOWN_GRACE.as_secs());
    }
}

/// A descriptor the client handed over before its request; shared by the connection's
/// requests, closed when the last of them is done.
#[derive(Debug, Clone)]
pub struct PassedFd(pub Arc<OwnedFd>);

/// A connection the API is served on: it may carry a descriptor before its first request.
pub trait Connection: Send + 'static {
    /// The descriptor handed over with the preamble byte, if the connection starts with one;
    /// nothing is consumed otherwise.
    fn take_fd(&self) -> impl Future<Output = std::io::Result<Option<OwnedFd>>> + Send;
}

impl Connection for tokio::net::UnixStream {
    async fn take_fd(&self) -> std::io::Result<Option<OwnedFd>> {
        loop {
            self.readable().await?;
            match self.try_io(tokio::io::Interest::READABLE, || receive_preamble(self.as_raw_fd())) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl Connection for tokio::net::TcpStream {
    /// Descriptors travel only over unix sockets.
    async fn take_fd(&self) -> std::io::Result<Option<OwnedFd>> {
        Ok(None)
    }
}

/// Peeks at the first byte; when it is the preamble, reads it with the descriptor attached.
/// Descriptors beyond the first are closed.
fn receive_preamble(socket: RawFd) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recv, recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let peeked = recv(socket, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)?;
    if peeked == 0 || byte[0] != sluice_api::FD_PREAMBLE {
        return Ok(None);
    }
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT)?;
    let mut passed = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for us; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if passed.is_none() {
                    passed = Some(owned);
                }
            }
        }
    }
    Ok(passed)
}

/// Reads the whole body (bounded in size and time), then routes the request.
async fn handle(app: Router, request: Request<Incoming>, passed: Option<PassedFd>) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    if let Some(fd) = passed {
        parts.extensions.insert(fd);
    }
    // A Content-Length past the limit is refused before a byte of the body is read.
    if hyper::body::Body::size_hint(&body).lower() > MAX_BODY_BYTES as u64 {
        return Ok(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {MAX_BODY_BYTES} bytes")));
    }
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Ok(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {MAX_BODY_BYTES} bytes")))
        }
        Ok(Err(e)) => return Ok(refuse(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
        Err(_) => {
            return Ok(refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs()),
            ))
        }
    };
    app.oneshot(Request::from_parts(parts, Body::from(body))).await
}

/// An answer in the API's error shape; code 6 is the CNI specification's "failed to decode
/// content", which is what the agent did not manage.
fn refuse(status: StatusCode, message: String) -> Response<Body> {
    let error = sluice_api::ApiError { code: 6, message, details: String::new() };
    let body = serde_json::to_vec(&error).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    // The rest of the body may still be on its way: do not read it to reuse the connection.
    response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}
