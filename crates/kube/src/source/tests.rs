//! The source against kube's mock client (`tower_test`): a fake API server made of canned list
//! answers and watch streams the tests feed by hand. It is a mock because no kube-apiserver
//! can run in CI; the same behaviours against a real one are in the lab tests that read
//! `SLUICE_KUBE_BIN`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc::{unbounded, UnboundedSender};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{json, Value};
use sluice_state::{wait_for, ClusterState, StateSource};

use super::*;

type Reply = UnsyncBoxBody<Bytes, Infallible>;
type Stream = UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// What the fake server answers, by resource path (`/api/v1/pods`).
#[derive(Default)]
struct Fake {
    /// Items of each list, in order: the first list of a path gets the first, the next the
    /// next, and the last is repeated. A path without one answers an empty list.
    lists: BTreeMap<String, Vec<Value>>,
    /// Paths whose list answer is `404 Not Found`.
    missing: Vec<String>,
    /// Paths whose list is held until the test lets it go.
    held: BTreeMap<String, tokio::sync::oneshot::Receiver<()>>,
    /// The open watch streams, by path, newest last.
    watches: BTreeMap<String, Vec<Stream>>,
    /// How many lists each path was asked for.
    listed: BTreeMap<String, usize>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(fake: &Shared) -> std::sync::MutexGuard<'_, Fake> {
    fake.lock().unwrap()
}

fn full(value: &Value, status: u16) -> Response<Reply> {
    Response::builder().status(status).body(Full::new(Bytes::from(value.to_string())).boxed_unsync()).unwrap()
}

/// Starts the fake server and a source over it as node `node-1`.
fn start(fake: Fake) -> (KubeSource, Shared) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Reply>>();
    let shared = Arc::new(Mutex::new(fake));
    let server = shared.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        let mut pending = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            if path == "/version" {
                send.send_response(full(&json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0"}), 200));
                continue;
            }
            if query.contains("watch=true") {
                let (tx, rx) = unbounded();
                lock(&server).watches.entry(path).or_default().push(tx);
                send.send_response(Response::builder().body(StreamBody::new(rx).boxed_unsync()).unwrap());
                continue;
            }
            let (items, missing, held) = {
                let mut f = lock(&server);
                let n = *f.listed.entry(path.clone()).and_modify(|n| *n += 1).or_insert(1);
                let items = f.lists.get(&path).and_then(|l| l.get(n - 1).or(l.last())).cloned().unwrap_or(json!([]));
                (items, f.missing.contains(&path), f.held.remove(&path))
            };
            if missing {
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
                send.send_response(full(&status, 404));
                continue;
            }
            let answer = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items});
            match held {
                Some(release) => pending.push(tokio::spawn(async move {
                    let _ = release.await;
                    send.send_response(full(&answer, 200));
                })),
                None => send.send_response(full(&answer, 200)),
            }
        }
    });
    let client = kube::Client::new(service, "default");
    (KubeSource::spawn(client, "node-1"), shared)
}

/// Sends a watch event on the newest stream of `path`; false when none is open yet.
fn send_event(fake: &Shared, path: &str, event: &Value) -> bool {
    let f = lock(fake);
    let Some(tx) = f.watches.get(path).and_then(|w| w.last()) else { return false };
    tx.unbounded_send(Ok(Frame::data(Bytes::from(format!("{event}\n"))))).is_ok()
}

/// Waits until a watch stream of `path` is open, then sends `event`.
async fn event(fake: &Shared, path: &str, event: &Value) {
    for _ in 0..200 {
        if send_event(fake, path, event) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no watch of {path} was opened");
}

async fn until(source: &KubeSource, what: &str, ready: impl FnMut(&ClusterState) -> bool) -> ClusterState {
    let mut rx = source.subscribe();
    wait_for(&mut rx, Duration::from_secs(15), ready)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}; health {:?}", source.health()))
}

fn pod(name: &str, node: &str, ip: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "resourceVersion": version,
                     "labels": {"app": name}, "managedFields": [{"manager": "kubectl"}]},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn identity(name: &str, app: &str) -> Value {
    json!({"apiVersion": "sluice.dev/v1", "kind": "SluiceIdentity", "metadata": {"name": name, "resourceVersion": "20"},
           "spec": {"labels": {"k8s:app": app}}})
}

const PODS: &str = "/api/v1/pods";
const IDENTITIES: &str = "/apis/sluice.dev/v1/sluiceidentities";

#[tokio::test]
async fn the_first_snapshot_is_synced_once_every_kind_was_listed() {
    let (release, held) = tokio::sync::oneshot::channel();
    let mut fake = Fake::default();
    fake.lists.insert(PODS.into(), vec![json!([pod("web", "node-1", "198.19.1.5", "7"), pod("db", "node-2", "198.19.2.9", "8")])]);
    fake.lists.insert(IDENTITIES.into(), vec![json!([identity("4096", "web")])]);
    fake.lists.insert(
        "/api/v1/namespaces".into(),
        vec![json!([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}}])],
    );
    fake.held.insert(IDENTITIES.into(), held);
    let (source, _fake) = start(fake);

    // Everything but the identities listed: the snapshots so far are not synced.
    let partial = until(&source, "the pods", |s| s.pods.len() == 2).await;
    assert!(!partial.synced, "synced before the identities were listed");
    release.send(()).unwrap();

    let state = until(&source, "the first sync", |s| s.synced).await;
    assert_eq!(state.identities.get(&4096).map(|r| r.labels["k8s:app"].as_str()), Some("web"));
    assert!(state.namespaces.contains_key("shop"));
    assert!(state.slices_from_api, "the controller's slices are used, none derived");
    let own = &state.pods["shop/web"];
    assert_eq!(own.spec.as_ref().unwrap().containers.len(), 1, "this node's pods are kept whole");
    assert!(own.metadata.managed_fields.is_none());
    let other = &state.pods["shop/db"];
    assert!(other.spec.as_ref().unwrap().containers.is_empty(), "other nodes' pods are compact");
    assert_eq!(other.metadata.labels.as_ref().unwrap()["app"], "db");
    assert_eq!(other.status.as_ref().unwrap().pod_ips.as_ref().unwrap()[0].ip, "198.19.2.9");
    assert_eq!(source.health().full_syncs, 1);
    assert!(source.health().connected);
}

#[tokio::test]
async fn watch_events_add_change_and_remove_objects() {
    let mut fake = Fake::default();
    fake.lists.insert(PODS.into(), vec![json!([pod("web", "node-1", "198.19.1.5", "7")])]);
    let (source, fake) = start(fake);
    let synced = until(&source, "the first sync", |s| s.synced).await;

    event(&fake, PODS, &json!({"type": "ADDED", "object": pod("api", "node-2", "198.19.2.3", "11")})).await;
    event(&fake, PODS, &json!({"type": "MODIFIED", "object": pod("web", "node-1", "198.19.1.6", "12")})).await;
    let state = until(&source, "the add and the change", |s| {
        s.pods.contains_key("shop/api") && s.pods["shop/web"].status.as_ref().and_then(|st| st.pod_ip.as_deref()) == Some("198.19.1.6")
    })
    .await;
    assert!(state.revision > synced.revision);

    event(&fake, PODS, &json!({"type": "DELETED", "object": pod("api", "node-2", "198.19.2.3", "13")})).await;
    until(&source, "the deletion", |s| !s.pods.contains_key("shop/api")).await;

    event(&fake, IDENTITIES, &json!({"type": "ADDED", "object": identity("300", "api")})).await;
    until(&source, "the identity", |s| s.identities.contains_key(&300)).await;
}

#[tokio::test]
async fn after_410_gone_the_source_lists_again_and_rewrites_nothing_unchanged() {
    let mut fake = Fake::default();
    let web = pod("web", "node-1", "198.19.1.5", "7");
    fake.lists.insert(
        PODS.into(),
        vec![
            json!([web.clone(), pod("old", "node-2", "198.19.2.4", "8")]),
            // The relist: `old` was deleted while the watch was gone.
            json!([web.clone()]),
            // A second relist: nothing changed.
            json!([web.clone()]),
        ],
    );
    let (source, fake) = start(fake);
    until(&source, "the first sync", |s| s.synced && s.pods.len() == 2).await;

    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 8 (40)", "reason": "Expired", "code": 410}});
    event(&fake, PODS, &gone).await;
    let relisted = until(&source, "the relist", |s| !s.pods.contains_key("shop/old")).await;
    assert_eq!(lock(&fake).listed[PODS], 2);
    assert!(relisted.pods.contains_key("shop/web"));

    // The same answer again: the source lists, but publishes nothing new.
    event(&fake, PODS, &gone).await;
    for _ in 0..200 {
        if lock(&fake).listed[PODS] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(lock(&fake).listed[PODS], 3, "the second 410 was not followed by a list");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(source.snapshot().revision, relisted.revision, "an unchanged relist published a new snapshot");
    assert_eq!(source.health().full_syncs, 1, "a relist of one kind is not a full sync");
}

#[tokio::test]
async fn missing_crds_are_reported_with_how_to_install_them() {
    let mut fake = Fake::default();
    fake.missing.push(IDENTITIES.into());
    let (source, _fake) = start(fake);
    let mut health = source.health();
    for _ in 0..200 {
        health = source.health();
        if health.last_error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let error = health.last_error.expect("an error is reported");
    assert!(error.starts_with("sluiceidentities: "), "{error}");
    assert!(error.contains("kubectl apply -f deploy/crds"), "{error}");
    assert!(!health.connected);
    assert!(!source.snapshot().synced);
}

#[tokio::test]
async fn objects_that_break_their_kind_are_left_out_and_the_rest_kept() {
    let mut fake = Fake::default();
    fake.lists.insert(IDENTITIES.into(), vec![json!([identity("web", "web"), identity("500", "db")])]);
    let (source, _fake) = start(fake);
    let state = until(&source, "the first sync", |s| s.synced).await;
    assert_eq!(state.identities.keys().copied().collect::<Vec<_>>(), vec![500]);
}

#[test]
fn the_watched_kinds_are_the_ones_the_store_holds() {
    let resources: Vec<String> = watched().into_iter().map(|w| format!("{}/{}", w.group, w.resource)).collect();
    assert_eq!(
        resources,
        [
            "/namespaces",
            "/pods",
            "/services",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/networkpolicies",
            "sluice.dev/sluicenetworkpolicies",
            "sluice.dev/sluiceclusterwidenetworkpolicies",
            "sluice.dev/sluicenodes",
            "sluice.dev/sluiceendpoints",
            "sluice.dev/sluiceendpointslices",
            "sluice.dev/sluiceidentities",
        ]
    );
}
