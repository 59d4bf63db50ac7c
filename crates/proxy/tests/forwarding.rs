//! The per-connection service end to end on loopback, without the datapath: a real backend, a
//! real HTTP client, fake identities and conntrack. Checks verdicts, keep-alive after a 403,
//! streaming of a large body, h2c, an unreachable upstream, and the transparent upstream
//! socket's conntrack entry (the last as root only).

// Helpers outside #[test] functions panic on purpose too: a failed set-up is a failed test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_abi::{ct_key, policy_ct_entry};
use sluice_policy::l7::{HttpRule, L7Grant, ProxyEndpoint, ProxyRules};
use sluice_proxy::{
    serve_connection, CompiledRules, Direction, FlowError, FlowTable, FlowVerdict, IdentityError, IdentitySource, ProxyContext, RulesStore,
    UpstreamMode,
};
use tokio::net::{TcpListener, TcpStream};

const CLIENT: &str = "10.244.0.5:40000";
const BIG: u64 = 64 << 20;
const CHUNK: usize = 64 << 10;

/// The byte at `offset` of the big body: position-dependent, so a lost or repeated chunk shows.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A response body of `remaining` pattern bytes, produced chunk by chunk as it is read.
struct PatternBody {
    sent: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= BIG {
            return Poll::Ready(None);
        }
        let n = CHUNK.min((BIG - self.sent) as usize);
        let chunk: Vec<u8> = (0..n as u64).map(|i| pattern(self.sent + i)).collect();
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

type BackendBody = http_body_util::Either<Full<Bytes>, PatternBody>;

async fn backend_service(request: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let body = match request.uri().path() {
        "/big" => http_body_util::Either::Right(PatternBody { sent: 0 }),
        path => {
            let hop = if request.headers().contains_key("x-hop") { " x-hop" } else { "" };
            http_body_util::Either::Left(Full::new(Bytes::from(format!("backend {} {path}{hop}", request.method()))))
        }
    };
    Ok(Response::new(body))
}

/// A backend speaking HTTP/1.1 and h2c on 127.0.0.1.
async fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(backend_service))
                    .await;
            });
        }
    });
    addr
}

struct FakeIdentities(HashMap<IpAddr, u32>);

impl IdentitySource for FakeIdentities {
    fn identity(&self, addr: IpAddr) -> Result<u32, IdentityError> {
        Ok(self.0.get(&addr).copied().unwrap_or(sluice_abi::SLUICE_IDENTITY_WORLD))
    }
}

#[derive(Debug, PartialEq)]
enum FlowOp {
    Insert(ct_key, u8),
    Remove(ct_key),
}

#[derive(Default)]
struct FakeFlows(Mutex<Vec<FlowOp>>);

impl FlowTable for FakeFlows {
    fn insert(&self, key: &ct_key, value: &policy_ct_entry) -> Result<(), FlowError> {
        self.0.lock().unwrap().push(FlowOp::Insert(*key, value.flags));
        Ok(())
    }
    fn remove(&self, key: &ct_key) -> Result<(), FlowError> {
        self.0.lock().unwrap().push(FlowOp::Remove(*key));
        Ok(())
    }
}

const CLIENT_IDENTITY: u32 = 4242;

/// The backend's address as a local endpoint that lets the client's identity `GET` /public
/// and /big, and nothing else.
fn context(server: SocketAddr, mode: UpstreamMode, flows: Arc<FakeFlows>) -> Arc<ProxyContext> {
    let get = |path: &str| HttpRule { method: Some("GET".into()), path: Some(path.into()), ..Default::default() };
    let rules = ProxyRules {
        generation: 1,
        endpoints: vec![ProxyEndpoint {
            key: "shop/web".into(),
            ips: vec![server.ip()],
            ingress: vec![L7Grant {
                identity: CLIENT_IDENTITY,
                port: server.port(),
                http: vec![get("/public"), get("/big")],
                policy: "test".into(),
            }],
            egress: vec![],
            ..Default::default()
        }],
    };
    let (compiled, warnings) = CompiledRules::compile(&rules);
    assert!(warnings.is_empty());
    let client: SocketAddr = CLIENT.parse().unwrap();
    let identities = FakeIdentities(HashMap::from([(client.ip(), CLIENT_IDENTITY), ("127.0.0.2".parse().unwrap(), CLIENT_IDENTITY)]));
    Arc::new(ProxyContext::new(Arc::new(RulesStore::new(compiled)), Arc::new(identities), flows, mode))
}

/// A client connection to the per-connection service, which sees it as `client` -> `server`.
async fn connect_through(ctx: Arc<ProxyContext>, client: SocketAddr, server: SocketAddr) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, connected) = tokio::join!(listener.accept(), connect);
    let (stream, _) = accepted.unwrap();
    tokio::spawn(serve_connection(ctx, stream, client, server));
    connected.unwrap()
}

async fn h1_client(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
) -> (StatusCode, String, Option<String>) {
    sender.ready().await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.shop:80")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), content_type)
}

#[tokio::test]
async fn http1_verdicts_keepalive_and_streaming() {
    let server = backend().await;
    let flows = Arc::new(FakeFlows::default());
    let ctx = context(server, UpstreamMode::Plain, flows.clone());
    let mut events = ctx.events.subscribe();
    let mut client = h1_client(connect_through(ctx.clone(), CLIENT.parse().unwrap(), server).await).await;

    let (status, body, _) = get(&mut client, "GET", "/public?x=1").await;
    assert_eq!(status, StatusCode::OK, "GET /public is allowed");
    assert_eq!(body, "backend GET /public", "the backend's body arrives, without the hop-by-hop x-hop header");

    let (status, body, content_type) = get(&mut client, "POST", "/admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "POST /admin is denied");
    assert_eq!(body, "Access denied\n");
    assert_eq!(content_type.as_deref(), Some("text/plain"));

    let (status, body, _) = get(&mut client, "GET", "/public").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "backend GET /public"), "the connection is usable after a 403");
    let (status, _, _) = get(&mut client, "GET", "/publicity").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the path rule is matched whole");

    // 64 MiB through the proxy, checked byte by byte as it streams.
    client.ready().await.unwrap();
    let response = client.send_request(Request::get("/big").header("host", "web").body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, pattern(received + i as u64), "byte {} of the big body", received + i as u64);
            }
            received += data.len() as u64;
        }
    }
    assert_eq!(received, BIG, "the whole 64 MiB arrived");

    let stats = ctx.stats.snapshot();
    assert_eq!(stats.requests_allowed, 3, "three allowed requests");
    assert_eq!(stats.requests_denied, 2, "two denied requests");
    assert_eq!(stats.status_classes, [0, 3, 0, 2, 0], "3 x 2xx, 2 x 4xx");
    assert!(flows.0.lock().unwrap().is_empty(), "plain upstreams write no conntrack entries");

    let first = events.recv().await.unwrap();
    assert_eq!((first.verdict, first.status, first.path.as_str()), (FlowVerdict::Forwarded, 200, "/public"));
    assert_eq!(first.host.as_deref(), Some("web.shop"), "the flow names the host without its port");
    assert_eq!(first.directions, vec![Direction::Ingress]);
    assert_eq!(first.client, CLIENT.parse::<SocketAddr>().unwrap());
    assert_eq!(first.server, server);
    let second = events.recv().await.unwrap();
    assert_eq!((second.verdict, second.status, second.method.as_str()), (FlowVerdict::Denied, 403, "POST"));
    let json = serde_json::to_value(&second).unwrap();
    assert!(json.get("latencyUs").is_some() && json.get("timeUnixNs").is_some(), "flows serialise in camelCase: {json}");
}

#[tokio::test]
async fn rule_changes_apply_to_the_next_request() {
    let server = backend().await;
    let ctx = context(server, UpstreamMode::Plain, Arc::default());
    let mut client = h1_client(connect_through(ctx.clone(), CLIENT.parse().unwrap(), server).await).await;
    assert_eq!(get(&mut client, "GET", "/public").await.0, StatusCode::OK);
    ctx.rules.replace(CompiledRules::default());
    assert_eq!(get(&mut client, "GET", "/public").await.0, StatusCode::FORBIDDEN, "no rules any more: the kept-alive connection is denied");
}

#[tokio::test]
async fn unknown_client_identity_is_denied() {
    let server = backend().await;
    let ctx = context(server, UpstreamMode::Plain, Arc::default());
    let mut client = h1_client(connect_through(ctx, "10.244.9.9:1234".parse().unwrap(), server).await).await;
    let (status, body, _) = get(&mut client, "GET", "/public").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the grant is for another identity: no direction applies");
    assert_eq!(body, "Access denied\n");
}

#[tokio::test]
async fn unreachable_upstream_is_503() {
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let ctx = context(closed, UpstreamMode::Plain, Arc::default());
    let mut client = h1_client(connect_through(ctx.clone(), CLIENT.parse().unwrap(), closed).await).await;
    let (status, _, _) = get(&mut client, "GET", "/public").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "an allowed request to a closed port is answered 503");
    assert_eq!(get(&mut client, "POST", "/admin").await.0, StatusCode::FORBIDDEN, "and the connection still answers");
    assert_eq!(ctx.stats.snapshot().upstream_errors, 1);
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let server = backend().await;
    let ctx = context(server, UpstreamMode::Plain, Arc::default());
    let stream = connect_through(ctx, CLIENT.parse().unwrap(), server).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = |method: &str, path: &str| {
        Request::builder().method(method).uri(format!("http://web.shop:80{path}")).body(Empty::<Bytes>::new()).unwrap()
    };
    let (allowed, denied) =
        tokio::join!(sender.clone().send_request(request("GET", "/public")), sender.send_request(request("DELETE", "/public")));
    let allowed = allowed.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK, "GET over h2c is forwarded");
    assert_eq!(allowed.version(), http::Version::HTTP_2);
    assert_eq!(allowed.into_body().collect().await.unwrap().to_bytes(), "backend GET /public");
    assert_eq!(denied.unwrap().status(), StatusCode::FORBIDDEN, "DELETE over h2c is denied on a concurrent stream");
}

/// The transparent upstream binds the client's address (127.0.0.2 here: local, so no routing
/// is needed) and writes its conntrack entry before connecting, removed when it closes.
#[tokio::test]
async fn transparent_upstream_writes_and_removes_its_conntrack_entry() {
    if !sluice_datapath::testing::require_root("transparent_upstream_writes_and_removes_its_conntrack_entry") {
        return;
    }
    let server = backend().await;
    let flows = Arc::new(FakeFlows::default());
    let ctx = context(server, UpstreamMode::Transparent, flows.clone());
    let client_addr: SocketAddr = "127.0.0.2:40001".parse().unwrap();
    let mut client = h1_client(connect_through(ctx, client_addr, server).await).await;
    assert_eq!(get(&mut client, "GET", "/public").await.0, StatusCode::OK, "forwarded over the transparent socket");
    {
        let ops = flows.0.lock().unwrap();
        let [FlowOp::Insert(key, flags)] = ops.as_slice() else { panic!("one insert before any remove, got {ops:?}") };
        assert_eq!(&key.saddr[..4], &[127, 0, 0, 2], "the entry is oriented from the client's address");
        assert_eq!(&key.daddr[..4], &[127, 0, 0, 1]);
        assert_eq!(key.dport, server.port().to_be());
        assert_ne!(key.sport, 0, "the bound port is in the key");
        assert_eq!(u32::from(*flags), sluice_abi::SLUICE_PCT_F_ORIGIN_EGRESS | sluice_abi::SLUICE_PCT_F_PROXY);
    }
    drop(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while flows.0.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ops = flows.0.lock().unwrap();
    let [FlowOp::Insert(inserted, _), FlowOp::Remove(removed)] = ops.as_slice() else { panic!("insert then remove, got {ops:?}") };
    assert_eq!(inserted, removed, "the entry removed is the one inserted");
}
