//! The agent's API: HTTP/1.1 with JSON bodies on a unix socket that only root may open. The
//! CNI plugin and the CLI are its clients (crate sluice-api holds the types and paths).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use sluice_api::{paths, CniGcRequest, CniRequest, FlowFilter, FlowMessage, LostEvents};
use tokio::sync::broadcast;

use crate::agent::Agent;

/// `GET /v1/status?maps=false` leaves out map pressure, which iterates every map's keys (about
/// 0.2 s at 10,000 services) while holding the datapath: for callers that poll.
#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    maps: Option<bool>,
}
use crate::error::AgentError;
use crate::serve::PassedFd;

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = match &self {
            AgentError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            AgentError::UnknownAttachment(_) => StatusCode::NOT_FOUND,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::CheckFailed { .. } | AgentError::AttachmentExists { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(self.to_api())).into_response()
    }
}

type Shared = State<Arc<Agent>>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            paths::STATUS,
            get(|State(a): Shared, Query(q): Query<StatusQuery>| async move { a.status_with(q.maps.unwrap_or(true)).map(Json) }),
        )
        .route(paths::ENDPOINTS, get(|State(a): Shared| async move { a.endpoints().map(Json) }))
        .route(
            paths::CNI_ADD,
            post(|State(a): Shared, fd: Option<Extension<PassedFd>>, Json(r): Json<CniRequest>| async move {
                a.cni_add_in(r, fd.map(|Extension(PassedFd(fd))| fd)).await.map(Json)
            }),
        )
        .route(
            paths::CNI_DEL,
            post(|State(a): Shared, Json(r): Json<CniRequest>| async move { a.cni_del(r).await.map(|()| Json(serde_json::json!({}))) }),
        )
        .route(
            paths::CNI_CHECK,
            post(|State(a): Shared, fd: Option<Extension<PassedFd>>, Json(r): Json<CniRequest>| async move {
                a.cni_check_in(r, fd.map(|Extension(PassedFd(fd))| fd)).await.map(|()| Json(serde_json::json!({})))
            }),
        )
        .route(paths::CNI_GC, post(|State(a): Shared, Json(r): Json<CniGcRequest>| async move { a.cni_gc(r).await.map(Json) }))
        .route(paths::CNI_STATUS, get(|| async { Json(serde_json::json!({})) }))
        .route(paths::FLOWS, get(|State(a): Shared, Query(f): Query<FlowFilter>| async move { a.flows(&f).map(Json) }))
        .route(paths::FLOWS_FOLLOW, get(follow))
        .route(paths::METRICS, get(|State(a): Shared| async move { a.metrics_text() }))
        .route(paths::EVENTS, get(|State(a): Shared| async move { a.events().list().map(Json).map_err(AgentError::from) }))
        .route(paths::EVENTS_FOLLOW, get(follow_events))
        .route(paths::PREFLIGHT, get(|State(a): Shared| async move { Json(a.preflight()) }))
        .route(paths::SERVICES, get(|State(a): Shared| async move { Json(a.service_list()) }))
        .route(
            paths::POLICY_TRACE,
            get(|State(a): Shared, Query(q): Query<crate::policy::api::TraceQuery>| async move { a.policy_trace(&q).map(Json) }),
        )
        .route(
            paths::POLICY_ENDPOINT,
            get(|State(a): Shared, Query(q): Query<crate::policy::api::EndpointQuery>| async move { a.policy_endpoint(&q).map(Json) }),
        )
        .with_state(agent)
}

/// A followed flow stream: one JSON message a line, flows as they come, and a `lost` message
/// whenever this client fell behind and missed some.
async fn follow(State(agent): Shared, Query(filter): Query<FlowFilter>) -> Response {
    let rx = agent.observer().subscribe();
    let lines = futures::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            let message = match rx.recv().await {
                Ok(flow) if filter.matches(&flow) => FlowMessage::Flow(Box::new(flow)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => FlowMessage::Lost(LostEvents { count: n, reason: "client-lag".into() }),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let mut line = serde_json::to_vec(&message).unwrap_or_default();
            line.push(b'\n');
            return Some((Ok::<_, std::io::Error>(line), (rx, filter)));
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A followed event stream: one Kubernetes Event (JSON) a line, as they are recorded.
async fn follow_events(State(agent): Shared) -> Response {
    let rx = agent.events().subscribe();
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    let mut line = serde_json::to_vec(&event).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::io::Error>(line), rx));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The Prometheus endpoint (`GET /metrics`) and the probes (`GET /healthz`: the agent answers;
/// `GET /readyz`: its state source has synced, else 503 with the reason) on a TCP address of
/// the agent's namespace.
pub async fn serve_metrics(addr: std::net::SocketAddr, agent: Arc<Agent>) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Startup { action: format!("binding the metrics address {addr}"), source })?;
    let app = Router::new()
        .route("/metrics", get(|State(a): Shared| async move { a.metrics_text() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(a): Shared| async move {
                match a.readiness() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .with_state(agent);
    // The same limits as the API socket; it stops when the agent aborts the task.
    Ok(tokio::spawn(crate::serve::serve(listener, app, std::future::pending())))
}

/// Binds the socket: its directory and the socket itself are root-only (0700 / 0600). A stale
/// socket file from an earlier run is replaced.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, AgentError> {
    let startup = |action: String| move |source| AgentError::Startup { action, source };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(startup(format!("creating {}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(startup(format!("restricting {}", dir.display())))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::Startup { action: format!("removing stale {}", socket.display()), source: e }),
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(startup(format!("binding {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(startup(format!("restricting {}", socket.display())))?;
    Ok(listener)
}
