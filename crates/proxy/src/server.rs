//! The proxy's listeners and the service each redirected connection gets: every request is
//! judged by the rules in force, answered 403 when denied, forwarded to the original
//! destination when allowed, and counted and reported as an [`L7Flow`].

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use crate::flows::{unix_now_ns, FlowTable, FlowVerdict, L7Flow, Stats};
use crate::identity::IdentitySource;
use crate::rules::{canonical, strip_port, Peers, RequestView, RulesStore};
use crate::upstream::{strip_hop_by_hop, Upstream, UpstreamMode};
use crate::ProxyError;

/// The body of every response the proxy sends: the upstream's, streamed, or its own.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Flows kept for slow subscribers before the oldest are dropped.
const FLOW_CHANNEL: usize = 1024;

/// What every connection of the proxy shares.
pub struct ProxyContext {
    pub rules: Arc<RulesStore>,
    pub identities: Arc<dyn IdentitySource>,
    pub flows: Arc<dyn FlowTable>,
    pub upstream: UpstreamMode,
    pub stats: Arc<Stats>,
    pub events: broadcast::Sender<L7Flow>,
    /// Set when the proxy stops: connections finish their request in flight and close.
    pub drain: tokio::sync::watch::Sender<bool>,
}

impl ProxyContext {
    pub fn new(rules: Arc<RulesStore>, identities: Arc<dyn IdentitySource>, flows: Arc<dyn FlowTable>, upstream: UpstreamMode) -> Self {
        let (events, _) = broadcast::channel(FLOW_CHANNEL);
        let (drain, _) = tokio::sync::watch::channel(false);
        ProxyContext { rules, identities, flows, upstream, stats: Arc::new(Stats::default()), events, drain }
    }
}

/// One redirected connection's state.
struct Connection {
    peers: Peers,
    upstream: Upstream,
    /// The "no rules apply" warning is said once per connection, not per request.
    warned: AtomicBool,
}

/// Binds a transparent listener on `addr` (v6: v6 only). Transparent so that `bpf_sk_assign`
/// may hand it connections to any destination.
pub fn listen(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let err = |step: &'static str| move |source| ProxyError::Listen { addr, step, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err("IPV6_V6ONLY"))?;
        socket.set_ip_transparent_v6(true).map_err(err("IPV6_TRANSPARENT"))?;
    } else {
        socket.set_ip_transparent_v4(true).map_err(err("IP_TRANSPARENT"))?;
    }
    // A restart must not wait for the old connections' TIME_WAIT.
    socket.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    // A new proxy listens beside a draining one (bpf_sk_assign takes reuseport sockets from
    // Linux 6.5; the stack picks one of the group).
    socket.set_reuse_port(true).map_err(err("SO_REUSEPORT"))?;
    socket.bind(&addr.into()).map_err(|source| ProxyError::Bind { addr, source })?;
    socket.listen(1024).map_err(err("listen"))?;
    socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    TcpListener::from_std(socket.into()).map_err(err("registering with the runtime"))
}

/// True when a connection reached the listener without the datapath: its destination is the
/// listener's own loopback address, not a redirected one.
pub fn not_redirected(local: SocketAddr) -> bool {
    canonical(local.ip()).is_loopback()
}

/// Serves one redirected connection from `client` to its original destination `server` until
/// it closes. The listener passes the accepted socket's peer and local addresses; tests pass
/// any stream with explicit addresses.
pub async fn serve_connection<I>(ctx: Arc<ProxyContext>, io: I, client: SocketAddr, server: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    let identity = |addr: IpAddr| match ctx.identities.identity(addr) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!("{e}; only grants for any peer apply to {client} -> {server}");
            None
        }
    };
    let peers = Peers { client, server, client_identity: identity(client.ip()), server_identity: identity(server.ip()) };
    let conn = Arc::new(Connection {
        peers,
        upstream: Upstream::new(ctx.upstream, client, server, ctx.flows.clone()),
        warned: AtomicBool::new(false),
    });
    let mut drain = ctx.drain.subscribe();
    let service = service_fn(move |request| {
        let (ctx, conn) = (ctx.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handle(&ctx, &conn, request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The watch's guard must not live across an await: the connection future is Send.
    let draining = async move {
        let _ = drain.wait_for(|d| *d).await.map(|_| ());
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = draining => {
            // Stopping: the request in flight is answered, then the connection closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%client, %server, "client connection ended: {e}");
    }
}

async fn handle(ctx: &ProxyContext, conn: &Connection, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let time_unix_ns = unix_now_ns();
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    // h2 names the host in the authority; HTTP/1.1 in Host (or an absolute-form target).
    let host = match request.uri().authority() {
        Some(a) => Some(a.host().to_owned()),
        None => request.headers().get(HOST).and_then(|v| v.to_str().ok()).map(|h| strip_port(h).to_owned()),
    };
    // A request the rules could read one way and the server another is refused, not judged.
    if let Some(refusal) = ambiguous(&request, host.as_deref()) {
        ctx.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
        let (status, body) = refusal;
        let response = text(status, body);
        ctx.stats.count_status(status.as_u16());
        let peers = conn.peers;
        let _ = ctx.events.send(L7Flow {
            time_unix_ns,
            client: peers.client,
            server: peers.server,
            directions: Vec::new(),
            method,
            host,
            path,
            status: status.as_u16(),
            latency_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            verdict: FlowVerdict::Denied,
        });
        return response;
    }
    let rules = ctx.rules.current();
    let decision =
        rules.decide(&conn.peers, &RequestView { method: &method, path: &path, host: host.as_deref(), headers: request.headers() });
    let peers = conn.peers;
    if decision.directions.is_empty() && !conn.warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            client = %peers.client, server = %peers.server, generation = rules.generation(),
            "no layer-7 rules apply to this redirected connection: denying its requests"
        );
    }
    drop(rules);

    let (response, verdict) = if !decision.allowed {
        ctx.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
        (text(StatusCode::FORBIDDEN, "Access denied\n"), FlowVerdict::Denied)
    } else {
        ctx.stats.requests_allowed.fetch_add(1, Ordering::Relaxed);
        strip_hop_by_hop(request.headers_mut());
        match conn.upstream.send(request).await {
            Ok(response) => {
                let mut response = response.map(|body| body.boxed());
                strip_hop_by_hop(response.headers_mut());
                (response, FlowVerdict::Forwarded)
            }
            Err(e) => {
                tracing::info!(client = %peers.client, "{e}");
                ctx.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                let status = if e.unreachable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
                (text(status, "Upstream unavailable\n"), FlowVerdict::Error)
            }
        }
    };
    let status = response.status().as_u16();
    ctx.stats.count_status(status);
    // No subscriber is not an error: flows are for whoever listens.
    let _ = ctx.events.send(L7Flow {
        time_unix_ns,
        client: peers.client,
        server: peers.server,
        directions: decision.directions,
        method,
        host,
        path,
        status,
        latency_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        verdict,
    });
    response
}

/// Why a request cannot be judged safely, if it cannot: a path with dot-segments, empty
/// segments, backslashes or encoded dots and slashes (which servers may resolve to a path the
/// rules did not see: `/public/../admin`), more than one Host, a Host that disagrees with the
/// authority, or a tunnel (CONNECT).
pub(crate) fn ambiguous<B>(request: &Request<B>, host: Option<&str>) -> Option<(StatusCode, &'static str)> {
    if request.method() == http::Method::CONNECT {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed through the proxy\n"));
    }
    let path = request.uri().path();
    let lower = path.to_ascii_lowercase();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let empty_inside = segments.iter().rev().skip(1).any(|s| s.is_empty());
    if path.contains('\\')
        || ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        || segments.iter().any(|s| *s == "." || *s == "..")
        || empty_inside
    {
        return Some((StatusCode::BAD_REQUEST, "Bad request: the path must be normalized\n"));
    }
    let hosts = request.headers().get_all(HOST).iter().count();
    if hosts > 1 {
        return Some((StatusCode::BAD_REQUEST, "Bad request: more than one Host\n"));
    }
    if let (Some(_), Some(header)) = (request.uri().authority(), request.headers().get(HOST)) {
        let header = header.to_str().ok().map(strip_port);
        if header.map(str::to_ascii_lowercase) != host.map(str::to_ascii_lowercase) {
            return Some((StatusCode::BAD_REQUEST, "Bad request: Host and the request's authority differ\n"));
        }
    }
    None
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A redirected connection: the stream, its client and its original destination.
pub(crate) type Accepted = (TcpStream, SocketAddr, SocketAddr);

/// Accepts on `listener` until the task is aborted, passing on redirected connections.
pub(crate) async fn accept_loop(listener: TcpListener, ctx: Arc<ProxyContext>, accepted: tokio::sync::mpsc::Sender<Accepted>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like pass; back off instead of spinning.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%client, "reading the original destination: {e}");
                continue;
            }
        };
        if not_redirected(server) {
            ctx.stats.connections_not_redirected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%client, %server, "connection to the listener itself, not redirected by the datapath: closed");
            continue;
        }
        let _ = stream.set_nodelay(true);
        if accepted.send((stream, client, server)).await.is_err() {
            return;
        }
    }
}

/// Whether a listener failure means the host has no such address family.
pub(crate) fn family_unavailable(e: &ProxyError) -> bool {
    let source = match e {
        ProxyError::Bind { source, .. } | ProxyError::Listen { source, .. } => source,
        _ => return false,
    };
    matches!(source.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)) || source.kind() == io::ErrorKind::AddrNotAvailable
}

#[cfg(test)]
mod ambiguity_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(method: &str, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn judged_host(r: &Request<()>) -> Option<String> {
        match r.uri().authority() {
            Some(a) => Some(a.host().to_owned()),
            None => r.headers().get(HOST).and_then(|v| v.to_str().ok()).map(|h| strip_port(h).to_owned()),
        }
    }

    #[test]
    fn requests_a_server_could_read_otherwise_are_refused() {
        let cases = [
            ("GET", "/public/a.txt", vec!["web"], None),
            ("GET", "/public/", vec!["web"], None),
            ("GET", "/public/../admin/secret", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/public/./a", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/public/%2e%2e/admin", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/public/%2E%2E%2Fadmin", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/public//admin", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/public/..", vec!["web"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "/", vec!["a", "b"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "http://allowed.example/x", vec!["other.example"], Some(StatusCode::BAD_REQUEST)),
            ("GET", "http://allowed.example/x", vec!["Allowed.Example:80"], None),
            ("CONNECT", "allowed.example:443", vec!["allowed.example:443"], Some(StatusCode::METHOD_NOT_ALLOWED)),
        ];
        for (method, uri, hosts, want) in cases {
            let r = request(method, uri, &hosts);
            let host = judged_host(&r);
            assert_eq!(ambiguous(&r, host.as_deref()).map(|(s, _)| s), want, "{method} {uri} Host {hosts:?}");
        }
    }
}
