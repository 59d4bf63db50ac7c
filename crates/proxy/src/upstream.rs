//! Upstream connections: the socket that keeps the client's address (transparent, marked
//! FROM_PROXY, its conntrack entry written before the SYN leaves) and the HTTP/1.1 or h2c client
//! connection over it, opened lazily per client connection and reused for its requests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};

use crate::flows::{proxy_ct_key, FlowError, FlowGuard, FlowTable};
use crate::rules::canonical;

/// How long an upstream may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How upstream connections are opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamMode {
    /// From the client's own address, marked FROM_PROXY, with a policy conntrack entry: what
    /// the datapath needs (requires CAP_NET_ADMIN).
    #[default]
    Transparent,
    /// An ordinary connect from the node's address: for tests and runs without the datapath.
    Plain,
}

/// Failures reaching or talking to the upstream.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// Setting up the transparent socket failed (option, bind, family).
    #[error("upstream socket for {client} -> {server}: {step}: {source}")]
    Socket {
        client: SocketAddr,
        server: SocketAddr,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The policy conntrack entry could not be written; connecting without it would have the
    /// datapath hand the replies to the pod.
    #[error(transparent)]
    Flow(#[from] FlowError),
    #[error("connecting to {server}: {source}")]
    Connect {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {server}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { server: SocketAddr },
    /// The HTTP handshake (h2c preface) failed.
    #[error("HTTP handshake with {server}: {source}")]
    Handshake {
        server: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The request could not be sent or its response head not read.
    #[error("request to {server}: {source}")]
    Request {
        server: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// True when the upstream was never reached (503), false when it failed mid-request (502).
    pub fn unreachable(&self) -> bool {
        !matches!(self, UpstreamError::Request { .. })
    }
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1), which a proxy must not
/// forward; plus those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

enum Sender {
    Http1(http1::SendRequest<Incoming>),
    Http2(http2::SendRequest<Incoming>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }
}

/// The upstream connection of one client connection, opened on its first allowed request.
pub struct Upstream {
    mode: UpstreamMode,
    client: SocketAddr,
    server: SocketAddr,
    flows: Arc<dyn FlowTable>,
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Upstream {
    pub fn new(mode: UpstreamMode, client: SocketAddr, server: SocketAddr, flows: Arc<dyn FlowTable>) -> Upstream {
        Upstream { mode, client, server, flows, sender: tokio::sync::Mutex::new(None) }
    }

    /// Sends `request` (hop-by-hop headers already removed) and returns the response head; the
    /// bodies stream both ways. HTTP/2 requests go over h2c, others over HTTP/1.1.
    pub async fn send(&self, mut request: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let h2 = request.version() == Version::HTTP_2;
        if !h2 {
            *request.version_mut() = Version::HTTP_11;
        }
        let server = self.server;
        let request_err = move |source| UpstreamError::Request { server, source };
        let mut slot = self.sender.lock().await;
        // A kept-alive upstream may have closed since the last request: open another.
        let sender = match slot.take() {
            Some(s) if !s.is_closed() => slot.insert(s),
            _ => slot.insert(self.open(h2).await?),
        };
        match sender {
            Sender::Http2(s) => {
                // h2 multiplexes: let other streams of the client's connection go at once.
                let mut s = s.clone();
                drop(slot);
                s.ready().await.map_err(request_err)?;
                s.send_request(request).await.map_err(request_err)
            }
            Sender::Http1(s) => {
                s.ready().await.map_err(request_err)?;
                let response = s.send_request(request);
                drop(slot);
                response.await.map_err(request_err)
            }
        }
    }

    async fn open(&self, h2: bool) -> Result<Sender, UpstreamError> {
        let server = self.server;
        let (stream, guard) = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(r) => r?,
            Err(_) => return Err(UpstreamError::ConnectTimeout { server }),
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let handshake_err = |source| UpstreamError::Handshake { server, source };
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await.map_err(handshake_err)?;
            tokio::spawn(drive(conn, guard, server));
            Ok(Sender::Http2(sender))
        } else {
            let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(handshake_err)?;
            tokio::spawn(drive(conn, guard, server));
            Ok(Sender::Http1(sender))
        }
    }

    async fn connect(&self) -> Result<(TcpStream, Option<FlowGuard>), UpstreamError> {
        let server = self.server;
        match self.mode {
            UpstreamMode::Plain => {
                let stream = TcpStream::connect(server).await.map_err(|source| UpstreamError::Connect { server, source })?;
                Ok((stream, None))
            }
            UpstreamMode::Transparent => {
                let (socket, guard) = self.transparent_socket()?;
                let stream = socket.connect(server).await.map_err(|source| UpstreamError::Connect { server, source })?;
                Ok((stream, Some(guard)))
            }
        }
    }

    /// A socket bound to the client's address with its conntrack entry in place, not yet
    /// connected: the entry must exist before the SYN, or the SYN-ACK goes to the pod. The
    /// kernel picks the port among the node's, not the pod's: a port the client itself uses
    /// towards this server (its own conntrack entry) is never taken; the socket binds again.
    fn transparent_socket(&self) -> Result<(TcpSocket, FlowGuard), UpstreamError> {
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            match self.try_transparent_socket() {
                Ok(Some(made)) => return Ok(made),
                Ok(None) => {}
                Err(UpstreamError::Flow(e)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(e) => UpstreamError::Flow(e),
            None => UpstreamError::Socket {
                client: self.client,
                server: self.server,
                step: "bind to the client's address",
                source: io::Error::new(io::ErrorKind::AddrInUse, "every port the kernel offered is the client's own"),
            },
        })
    }

    /// One attempt: `None` when the kernel gave the client's own port.
    fn try_transparent_socket(&self) -> Result<Option<(TcpSocket, FlowGuard)>, UpstreamError> {
        let (client, server) = (self.client, self.server);
        let err = |step: &'static str| move |source| UpstreamError::Socket { client, server, step, source };
        let server_ip = canonical(server.ip());
        let local = SocketAddr::new(canonical(client.ip()), 0);
        let socket =
            Socket::new(Domain::for_address(SocketAddr::new(server_ip, 0)), Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
        if server_ip.is_ipv4() {
            socket.set_ip_transparent_v4(true).map_err(err("IP_TRANSPARENT"))?;
        } else {
            socket.set_ip_transparent_v6(true).map_err(err("IPV6_TRANSPARENT"))?;
        }
        socket.set_mark(sluice_abi::SLUICE_MARK_FROM_PROXY).map_err(err("SO_MARK"))?;
        socket.bind(&local.into()).map_err(err("bind to the client's address"))?;
        let bound = socket
            .local_addr()
            .map_err(err("getsockname"))?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
            .map_err(err("getsockname"))?;
        if bound.port() == client.port() {
            return Ok(None);
        }
        let guard = FlowGuard::insert(self.flows.clone(), proxy_ct_key(bound, SocketAddr::new(server_ip, server.port()))?)?;
        socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        Ok(Some((socket, guard)))
    }
}

/// How many times a transparent upstream socket is bound before giving up.
const BIND_ATTEMPTS: usize = 8;

/// Runs an upstream client connection until it closes, then drops its conntrack entry.
async fn drive<C>(conn: C, guard: Option<FlowGuard>, server: SocketAddr)
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(%server, "upstream connection ended: {e}");
    }
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-hop", "1"),
            ("x-end", "2"),
            ("host", "web"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-end"], "only end-to-end headers are forwarded");
    }
}
