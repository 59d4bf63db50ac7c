//! An in-memory stand-in for the API server's object endpoints behind kube's mock client
//! (`tower_test`), for the writer's tests: get, list (namespace and `key=value` label
//! selector), create (409 on a taken name), server-side apply, merge and strategic patches
//! (with a resourceVersion precondition), delete (with preconditions). It is a mock because no
//! kube-apiserver runs in CI; it implements only what the writer uses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use serde_json::{json, Value};

/// An object's place: resource (plural), namespace, name.
pub type Key = (String, Option<String>, String);

#[derive(Default)]
pub struct FakeApi {
    pub objects: BTreeMap<Key, Value>,
    version: u64,
    /// When set, the next create of this key finds it already made by someone else (the
    /// value is what they made) and gets `409 AlreadyExists`.
    pub race_on_create: Option<(Key, Value)>,
    /// Every request, as `METHOD path`.
    pub log: Vec<String>,
}

pub type Shared = Arc<Mutex<FakeApi>>;

pub fn lock(fake: &Shared) -> std::sync::MutexGuard<'_, FakeApi> {
    fake.lock().unwrap()
}

impl FakeApi {
    /// Puts an object as if created, with a version, uid and creation time.
    pub fn insert(&mut self, key: Key, mut object: Value) {
        self.version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(self.version.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{}-{}", key.0, key.2));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.objects.insert(key, object);
    }

    pub fn of(&self, resource: &str) -> Vec<&Value> {
        self.objects.iter().filter(|((r, _, _), _)| r == resource).map(|(_, v)| v).collect()
    }
}

type Reply = UnsyncBoxBody<Bytes, Infallible>;

fn reply(status: u16, value: &Value) -> Response<Reply> {
    Response::builder().status(status).body(Full::new(Bytes::from(value.to_string())).boxed_unsync()).unwrap()
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Reply> {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason, "message": message, "code": code}),
    )
}

/// Starts the fake and a client of it.
pub fn start(fake: FakeApi) -> (kube::Client, Shared) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Reply>>();
    let shared = Arc::new(Mutex::new(fake));
    let server = shared.clone();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let body = request.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
            let mut fake = lock(&server);
            fake.log.push(format!("{method} {path}"));
            send.send_response(fake.answer(&method, &path, &query, &content_type, body));
        }
    });
    (kube::Client::new(service, "default"), shared)
}

/// `(resource, namespace, name, subresource)` of a path.
fn parse(path: &str) -> (String, Option<String>, Option<String>) {
    let rest =
        path.strip_prefix("/api/v1/").map(str::to_owned).unwrap_or_else(|| path.splitn(5, '/').nth(4).unwrap_or_default().to_owned());
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail.to_vec()),
        _ => (None, parts.clone()),
    };
    (parts[0].to_owned(), namespace, parts.get(1).map(|s| (*s).to_owned()))
}

/// RFC 7386 merge.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

impl FakeApi {
    fn answer(&mut self, method: &Method, path: &str, query: &str, content_type: &str, body: Value) -> Response<Reply> {
        let (resource, namespace, name) = parse(path);
        let key = |name: &str| (resource.clone(), namespace.clone(), name.to_owned());
        match (method.as_str(), name) {
            ("GET", Some(name)) => match self.objects.get(&key(&name)) {
                Some(object) => reply(200, object),
                None => failure(404, "NotFound", &format!("{resource} \"{name}\" not found")),
            },
            ("GET", None) => {
                let selector = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%2F", "/").replace("%3D", "="))
                    .and_then(|s| s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())));
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((r, ns, _), _)| *r == resource && (namespace.is_none() || *ns == namespace))
                    .filter(|(_, v)| selector.as_ref().is_none_or(|(k, want)| v["metadata"]["labels"][k.as_str()] == json!(want)))
                    .map(|(_, v)| v.clone())
                    .collect();
                reply(
                    200,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
                )
            }
            ("POST", None) => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                if let Some((race_key, theirs)) = self.race_on_create.take() {
                    if race_key == key(&name) {
                        self.insert(race_key, theirs);
                    } else {
                        self.race_on_create = Some((race_key, theirs));
                    }
                }
                if self.objects.contains_key(&key(&name)) {
                    return failure(409, "AlreadyExists", &format!("{resource} \"{name}\" already exists"));
                }
                self.insert(key(&name), body);
                reply(201, &self.objects[&key(&name)])
            }
            ("PATCH", Some(name)) => {
                let existing = self.objects.get(&key(&name)).cloned();
                if content_type.contains("apply-patch") {
                    let mut object = body;
                    if let Some(old) = &existing {
                        object["metadata"]["uid"] = old["metadata"]["uid"].clone();
                        object["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
                    }
                    self.insert(key(&name), object);
                    return reply(200, &self.objects[&key(&name)]);
                }
                let Some(mut object) = existing else {
                    return failure(404, "NotFound", &format!("{resource} \"{name}\" not found"));
                };
                if let Some(want) = body["metadata"]["resourceVersion"].as_str() {
                    if object["metadata"]["resourceVersion"] != json!(want) {
                        return failure(409, "Conflict", "the object has been modified");
                    }
                }
                let mut patch = body;
                if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                merge(&mut object, &patch);
                self.insert(key(&name), object);
                reply(200, &self.objects[&key(&name)])
            }
            ("DELETE", Some(name)) => {
                let Some(object) = self.objects.get(&key(&name)) else {
                    return failure(404, "NotFound", &format!("{resource} \"{name}\" not found"));
                };
                if let Some(want) = body["preconditions"]["resourceVersion"].as_str() {
                    if object["metadata"]["resourceVersion"] != json!(want) {
                        return failure(409, "Conflict", "precondition failed: resourceVersion");
                    }
                }
                let object = self.objects.remove(&key(&name)).unwrap_or_default();
                reply(200, &object)
            }
            _ => failure(405, "MethodNotAllowed", &format!("{method} {path}")),
        }
    }
}
