//! The writer against the in-memory API of `fake_api` (kube's mock client; no kube-apiserver
//! runs in CI): identity numbering and its races, collection, joining, health, endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_model::Batcher;
use sluice_state::EndpointRecord;

use super::fake_api::{lock, start, FakeApi, Key};
use super::*;

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("k8s:app".to_owned(), app.to_owned())])
}

fn canonical(app: &str) -> String {
    format!("k8s:app={app}")
}

fn identity_key(id: u32) -> Key {
    ("sluiceidentities".into(), None, id.to_string())
}

fn identity_object(id: u32, app: &str) -> Value {
    json!({"apiVersion": "sluice.dev/v1", "kind": "SluiceIdentity", "metadata": {"name": id.to_string()}, "spec": {"labels": labels(app)}})
}

fn node_object(name: &str, pod_cidrs: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": format!("node-uid-{name}")}, "spec": {"podCIDRs": pod_cidrs}})
}

fn slices_mode(node: &str) -> Option<Batcher> {
    Some(Batcher::new(node, 100).unwrap())
}

#[tokio::test]
async fn a_label_set_gets_its_candidate_number_once_and_keeps_it() {
    let (client, fake) = start(FakeApi::default());
    let cluster = KubeCluster::new(client, "node-1", None);
    let id = cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap();
    assert_eq!(id, identity_candidate(&canonical("web")));
    assert!((256..=16_777_215).contains(&id));
    assert_eq!(cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap(), id);
    let f = lock(&fake);
    assert_eq!(f.of("sluiceidentities").len(), 1);
    assert_eq!(f.log.iter().filter(|l| l.starts_with("POST")).count(), 1, "the second numbering created nothing: {:?}", f.log);
    assert_eq!(f.of("sluiceidentities")[0]["spec"]["labels"]["k8s:app"], "web");
}

#[tokio::test]
async fn a_number_taken_by_other_labels_moves_on_to_the_next() {
    let web = identity_candidate(&canonical("web"));
    let mut fake = FakeApi::default();
    fake.insert(identity_key(web), identity_object(web, "db"));
    let (client, _fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    assert_eq!(cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap(), web + 1);
}

#[tokio::test]
async fn losing_a_create_race_to_the_same_labels_takes_the_winners_number() {
    let web = identity_candidate(&canonical("web"));
    let mut fake = FakeApi::default();
    fake.race_on_create = Some((identity_key(web), identity_object(web, "web")));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    assert_eq!(cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap(), web);
    let f = lock(&fake);
    assert_eq!(f.of("sluiceidentities").len(), 1, "one object for one label set");
    assert!(f.race_on_create.is_none(), "the race was run");
}

#[tokio::test]
async fn losing_a_create_race_to_other_labels_takes_the_next_number() {
    let web = identity_candidate(&canonical("web"));
    let mut fake = FakeApi::default();
    fake.race_on_create = Some((identity_key(web), identity_object(web, "db")));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    assert_eq!(cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap(), web + 1);
    assert_eq!(lock(&fake).of("sluiceidentities").len(), 2);
}

#[tokio::test]
async fn agents_numbering_one_label_set_at_once_agree() {
    let (client, fake) = start(FakeApi::default());
    let a = KubeCluster::new(client.clone(), "node-1", None);
    let b = KubeCluster::new(client, "node-2", None);
    let (text, set) = (canonical("web"), labels("web"));
    let (x, y) = tokio::join!(a.allocate_identity(&text, &set), b.allocate_identity(&text, &set));
    assert_eq!(x.unwrap(), y.unwrap());
    assert_eq!(lock(&fake).of("sluiceidentities").len(), 1);
}

#[tokio::test]
async fn unused_identities_are_marked_then_deleted_and_a_reused_one_survives() {
    let (web, db, api) = (300, 301, identity_candidate(&canonical("api")));
    let mut fake = FakeApi::default();
    fake.insert(identity_key(web), identity_object(web, "web"));
    fake.insert(identity_key(db), identity_object(db, "db"));
    fake.insert(identity_key(api), identity_object(api, "api"));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    let in_use = BTreeSet::from([web]);

    // First round: db and api marked, nothing deleted (the grace period has not passed).
    assert_eq!(cluster.collect_identities(&in_use, Duration::from_secs(3600)).await.unwrap(), Vec::<u32>::new());
    let marked = |fake: &super::fake_api::Shared, id: u32| {
        lock(fake).objects[&identity_key(id)]["metadata"]["annotations"].get(UNUSED_SINCE).is_some()
    };
    assert!(!marked(&fake, web) && marked(&fake, db) && marked(&fake, api));

    // api is numbered again (a pod with its labels started): the mark goes.
    assert_eq!(cluster.allocate_identity(&canonical("api"), &labels("api")).await.unwrap(), api);
    assert!(!marked(&fake, api), "reuse clears the mark");

    // With no grace left: db goes; api, seen unused again, is only marked again.
    let deleted = cluster.collect_identities(&in_use, Duration::ZERO).await.unwrap();
    assert_eq!(deleted, vec![db]);
    let f = lock(&fake);
    assert!(f.objects.contains_key(&identity_key(web)));
    assert!(f.objects.contains_key(&identity_key(api)));
    assert!(!f.objects.contains_key(&identity_key(db)));
}

#[tokio::test]
async fn numbering_a_marked_identity_clears_its_mark() {
    let web = identity_candidate(&canonical("web"));
    let mut fake = FakeApi::default();
    let mut object = identity_object(web, "web");
    object["metadata"]["annotations"] = json!({UNUSED_SINCE: "2026-01-01T00:00:00Z"});
    fake.insert(identity_key(web), object);
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    assert_eq!(cluster.allocate_identity(&canonical("web"), &labels("web")).await.unwrap(), web);
    assert!(lock(&fake).objects[&identity_key(web)]["metadata"]["annotations"].get(UNUSED_SINCE).is_none());
    // A collector with a zero grace period now finds it in use by nobody, but freshly
    // unmarked: it marks it again instead of deleting it.
    assert!(cluster.collect_identities(&BTreeSet::new(), Duration::ZERO).await.unwrap().is_empty());
    assert!(lock(&fake).objects.contains_key(&identity_key(web)));
}

#[tokio::test]
async fn joining_takes_the_nodes_pod_cidrs_and_registers_an_owned_sluice_node() {
    let mut fake = FakeApi::default();
    fake.insert(("nodes".into(), None, "node-1".into()), node_object("node-1", &["198.19.1.0/24", "2001:db8:1::/64"]));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", slices_mode("node-1"));
    let cidrs = cluster.join(vec!["198.18.0.11".parse().unwrap()], &[], Duration::from_secs(1)).await.unwrap();
    assert_eq!(cidrs, vec!["198.19.1.0/24".parse().unwrap(), "2001:db8:1::/64".parse().unwrap()]);
    {
        let f = lock(&fake);
        let node = &f.objects[&("sluicenodes".into(), None, "node-1".into())];
        assert_eq!(node["spec"]["podCIDRs"], json!(["198.19.1.0/24", "2001:db8:1::/64"]));
        assert_eq!(node["spec"]["health"], "starting");
        assert_eq!(node["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(node["metadata"]["ownerReferences"][0]["uid"], "node-uid-node-1");
        assert_eq!(node["metadata"]["labels"][NODE_LABEL], "node-1");
    }

    cluster.set_health("ready", "bpf").await.unwrap();
    let f = lock(&fake);
    let node = &f.objects[&("sluicenodes".into(), None, "node-1".into())];
    assert_eq!(node["spec"]["health"], "ready");
    assert_eq!(node["spec"]["hostRouting"], "bpf");
    let condition = &f.objects[&("nodes".into(), None, "node-1".into())]["status"]["conditions"][0];
    assert_eq!(condition["type"], "NetworkUnavailable");
    assert_eq!(condition["status"], "False");
}

#[tokio::test]
async fn joining_explains_a_missing_node_and_unallocated_pod_cidrs() {
    let mut fake = FakeApi::default();
    fake.insert(("nodes".into(), None, "bare".into()), node_object("bare", &[]));
    let (client, _fake) = start(fake);
    let missing = KubeCluster::new(client.clone(), "nowhere", None).join(vec![], &[], Duration::ZERO).await.unwrap_err();
    assert!(missing.to_string().contains("no such Node"), "{missing}");
    let bare = KubeCluster::new(client.clone(), "bare", None).join(vec![], &[], Duration::from_millis(600)).await.unwrap_err();
    assert!(bare.to_string().contains("--allocate-node-cidrs"), "{bare}");
    // Configured pod CIDRs need nothing from the Node.
    let configured = ["198.19.9.0/24".parse().unwrap()];
    assert_eq!(KubeCluster::new(client, "bare", None).join(vec![], &configured, Duration::ZERO).await.unwrap(), configured);
}

fn endpoint(name: &str, ip: &str, identity: u32) -> (String, EndpointRecord) {
    let record =
        EndpointRecord { namespace: "shop".into(), name: name.into(), node: "node-1".into(), ips: vec![ip.parse().unwrap()], identity };
    (format!("shop/{name}"), record)
}

#[tokio::test]
async fn endpoints_are_published_in_slices_owned_by_the_node() {
    let mut fake = FakeApi::default();
    fake.insert(("nodes".into(), None, "node-1".into()), node_object("node-1", &["198.19.1.0/24"]));
    // Another node's slice, which this node must leave alone.
    fake.insert(
        ("sluiceendpointslices".into(), Some("shop".into()), "node-2-300-0".into()),
        json!({"apiVersion": "sluice.dev/v1", "kind": "SluiceEndpointSlice",
               "metadata": {"name": "node-2-300-0", "namespace": "shop", "labels": {NODE_LABEL: "node-2"}},
               "spec": {"node": "node-2", "identity": 300, "endpoints": [{"name": "x", "addresses": ["198.19.2.2"]}]}}),
    );
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", slices_mode("node-1"));
    cluster.join(vec![], &[], Duration::ZERO).await.unwrap();

    let wanted: BTreeMap<_, _> =
        [endpoint("a", "198.19.1.2", 300), endpoint("b", "198.19.1.3", 300), endpoint("c", "198.19.1.4", 301)].into();
    assert_eq!(cluster.publish_endpoints(wanted.clone()).await.unwrap(), 2, "one slice per identity");
    let own = |fake: &super::fake_api::Shared| -> Vec<Value> {
        lock(fake).of("sluiceendpointslices").into_iter().filter(|s| s["spec"]["node"] == "node-1").cloned().collect()
    };
    let slices = own(&fake);
    assert_eq!(slices.len(), 2);
    for slice in &slices {
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "SluiceNode");
        assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], "uid-sluicenodes-node-1");
        assert_eq!(slice["metadata"]["labels"][NODE_LABEL], "node-1");
    }
    assert_eq!(cluster.publish_endpoints(wanted.clone()).await.unwrap(), 0, "nothing changed, nothing written");

    let fewer: BTreeMap<_, _> = [endpoint("a", "198.19.1.2", 300)].into();
    assert_eq!(cluster.publish_endpoints(fewer).await.unwrap(), 2, "one slice updated, one deleted");
    assert_eq!(own(&fake).len(), 1);
    assert_eq!(cluster.publish_endpoints(BTreeMap::new()).await.unwrap(), 1);
    assert!(own(&fake).is_empty());
    assert_eq!(lock(&fake).of("sluiceendpointslices").len(), 1, "the other node's slice is still there");
}

#[tokio::test]
async fn endpoints_are_published_per_pod_when_configured() {
    let mut fake = FakeApi::default();
    fake.insert(("nodes".into(), None, "node-1".into()), node_object("node-1", &["198.19.1.0/24"]));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    cluster.join(vec![], &[], Duration::ZERO).await.unwrap();
    let wanted: BTreeMap<_, _> = [endpoint("a", "198.19.1.2", 300), endpoint("b", "198.19.1.3", 301)].into();
    assert_eq!(cluster.publish_endpoints(wanted).await.unwrap(), 2);
    assert_eq!(lock(&fake).of("sluiceendpoints").len(), 2);
    let fewer: BTreeMap<_, _> = [endpoint("a", "198.19.1.2", 300)].into();
    assert_eq!(cluster.publish_endpoints(fewer).await.unwrap(), 1);
    let f = lock(&fake);
    assert_eq!(f.of("sluiceendpoints").len(), 1);
    assert_eq!(f.of("sluiceendpoints")[0]["spec"]["identity"], 300);
}

#[tokio::test]
async fn publishing_before_joining_is_refused() {
    let (client, _fake) = start(FakeApi::default());
    let cluster = KubeCluster::new(client, "node-1", None);
    let error = cluster.publish_endpoints(BTreeMap::new()).await.unwrap_err();
    assert!(error.to_string().contains("has not joined"), "{error}");
}

#[tokio::test]
async fn events_are_posted_about_the_node_once() {
    let mut fake = FakeApi::default();
    fake.insert(("nodes".into(), None, "node-1".into()), node_object("node-1", &["198.19.1.0/24"]));
    let (client, fake) = start(fake);
    let cluster = KubeCluster::new(client, "node-1", None);
    cluster.join(vec![], &[], Duration::ZERO).await.unwrap();
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "node-1.0000000000000001", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "node-1", "apiVersion": "v1"},
        "reason": "HostRoutingEnabled", "message": "bpf host routing is on", "type": "Normal"
    }))
    .unwrap();
    cluster.post_event(&event).await.unwrap();
    cluster.post_event(&event).await.expect("an event already posted is not an error");
    let f = lock(&fake);
    let posted = f.of("events");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["involvedObject"]["uid"], "node-uid-node-1", "listed with the Node");
    assert_eq!(posted[0]["reason"], "HostRoutingEnabled");
}
