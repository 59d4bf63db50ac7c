//! The etcd store as writers use it, against a real etcd: every kind round-trips, writers that
//! race lose nothing, a refused update writes nothing, big updates are written in chunks, and
//! `update` leaves the records other owners write alone.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::BTreeMap;

use common::{namespace, TestEtcd};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sluice_state::etcd::{EtcdStore, ObjectKind, MAX_TXN_OPS};
use sluice_state::{Datastore, EtcdAccess, NodeRecord, Store, StoreError};

const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}], clusterIP: 198.19.200.10}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: x, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [198.19.1.1]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 198.19.0.0/16}}]}]}
---
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: web, namespace: x}
spec: {endpointSelector: {matchLabels: {app: web}}, ingressDeny: [{fromEntities: [world]}]}
---
apiVersion: sluice.dev/v1
kind: SluiceClusterwideNetworkPolicy
metadata: {name: audit-all}
spec: {endpointSelector: {}, enforcementMode: audit, egress: [{toPorts: [{ports: [{port: '53', protocol: UDP}]}]}]}
";

/// One object of every kind, keyed as the local store keys them.
fn every_kind() -> Store {
    let mut store = Store::default();
    for object in sluice_model::parse_manifests("all.yaml", MANIFESTS).unwrap() {
        use sluice_model::Object as O;
        match object {
            O::Namespace(o) => drop(store.namespaces.insert("x".into(), o)),
            O::Pod(o) => drop(store.pods.insert(Store::key("x", "web"), o)),
            O::Service(o) => drop(store.services.insert(Store::key("x", "web"), o)),
            O::EndpointSlice(o) => drop(store.endpoint_slices.insert(Store::key("x", "ext-1"), o)),
            O::NetworkPolicy(o) => drop(store.network_policies.insert(Store::key("x", "web"), o)),
            O::SluiceNetworkPolicy(o) => drop(store.sluice_policies.insert(Store::key("x", "web"), o)),
            O::SluiceClusterwideNetworkPolicy(o) => drop(store.clusterwide_policies.insert("audit-all".into(), o)),
        }
    }
    store
}

/// The store as JSON without its generation, to compare contents.
fn contents(store: &Store) -> serde_json::Value {
    let mut value = serde_json::to_value(store).unwrap();
    value.as_object_mut().unwrap().remove("generation");
    value
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(format!("s{i}")), namespace: Some("bulk".into()), ..Default::default() },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_through_load_and_update() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let wanted = every_kind();
    for kind in ObjectKind::ALL {
        let count = match kind {
            ObjectKind::Namespaces => wanted.namespaces.len(),
            ObjectKind::Pods => wanted.pods.len(),
            ObjectKind::Services => wanted.services.len(),
            ObjectKind::EndpointSlices => wanted.endpoint_slices.len(),
            ObjectKind::NetworkPolicies => wanted.network_policies.len(),
            ObjectKind::SluiceNetworkPolicies => wanted.sluice_policies.len(),
            ObjectKind::SluiceClusterwideNetworkPolicies => wanted.clusterwide_policies.len(),
        };
        assert_eq!(count, 1, "the fixture has one {kind:?}");
    }
    let empty = store.load().await.unwrap();
    let (_, revision) = store
        .update(|s| {
            *s = wanted.clone();
            Ok(())
        })
        .await
        .unwrap();
    assert!(revision > empty.generation, "a write moves the revision: {} -> {revision}", empty.generation);
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.generation, revision, "load reports the revision it read at");
    assert_eq!(contents(&loaded), contents(&wanted), "every kind comes back as written");

    // The keys are where the layout says.
    let key = store.keys().object(ObjectKind::Pods, "x/web");
    let raw = store.client().get(key.clone(), None).await.unwrap();
    assert_eq!(raw.kvs().len(), 1, "the pod is stored under {key}");

    // Deleting through update removes the key; an update that changes nothing writes nothing.
    let (_, after_delete) = store
        .update(|s| {
            s.pods.clear();
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.load().await.unwrap().pods.is_empty(), "the pod is deleted");
    let (_, unchanged) = store.update(|_| Ok(())).await.unwrap();
    assert_eq!(unchanged, after_delete, "an update without changes keeps the revision");

    // The same through the Datastore seam.
    let datastore = Datastore::Etcd(EtcdAccess { config: etcd.config(), netns: None });
    assert_eq!(datastore.kind(), "etcd");
    let answer = datastore.update(|s| Ok(s.namespaces.len())).unwrap();
    assert_eq!(answer, 1, "the closure sees the stored namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_writers_lose_no_update() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let a = etcd.store().await;
    let b = etcd.store().await;
    a.update(|s| {
        s.namespaces.insert("counter".into(), namespace("counter", "0"));
        Ok(())
    })
    .await
    .unwrap();
    // Both increment the same label 20 times and each adds namespaces of its own.
    let writer = |store: EtcdStore, name: &'static str| async move {
        for i in 0..20 {
            store
                .update(|s| {
                    let ns = s.namespaces.get_mut("counter").expect("the counter namespace");
                    let labels = ns.metadata.labels.get_or_insert_with(BTreeMap::new);
                    let n: u32 = labels.get("team").and_then(|v| v.parse().ok()).unwrap_or(0);
                    labels.insert("team".into(), (n + 1).to_string());
                    s.namespaces.insert(format!("{name}-{i}"), namespace(&format!("{name}-{i}"), name));
                    Ok(())
                })
                .await
                .unwrap();
        }
    };
    let (ra, rb) = tokio::join!(tokio::spawn(writer(a.clone(), "a")), tokio::spawn(writer(b.clone(), "b")));
    ra.unwrap();
    rb.unwrap();
    let loaded = a.load().await.unwrap();
    let counter = loaded.namespaces["counter"].metadata.labels.as_ref().unwrap()["team"].clone();
    assert_eq!(counter, "40", "each of the 40 increments is kept");
    assert_eq!(loaded.namespaces.len(), 41, "both writers' namespaces are there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_in_between_makes_the_other_writer_retry() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let a = etcd.store().await;
    let b = etcd.store().await;
    a.update(|s| {
        s.namespaces.insert("gone".into(), namespace("gone", "1"));
        Ok(())
    })
    .await
    .unwrap();
    // b's closure deletes `gone` from under its own first attempt; on the retry it sees that
    // the namespace is gone and must not bring it back.
    let mut runs = 0;
    let a2 = a.clone();
    b.update(|s| {
        runs += 1;
        if runs == 1 {
            // Stands in for another writer deleting in between; blocking is fine in a test.
            let a2 = a2.clone();
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(a2.update(|s| {
                    s.namespaces.remove("gone");
                    Ok(())
                }))
            })
            .join()
            .unwrap()
            .unwrap();
        }
        if let Some(ns) = s.namespaces.get_mut("gone") {
            ns.metadata.labels = Some([("team".to_string(), "2".to_string())].into_iter().collect());
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(runs, 2, "the deletion in between made the update run again");
    assert!(!a.load().await.unwrap().namespaces.contains_key("gone"), "the deleted namespace stays deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_writes_nothing() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    store
        .update(|s| {
            s.namespaces.insert("keep".into(), namespace("keep", "1"));
            Ok(())
        })
        .await
        .unwrap();
    let before = store.load().await.unwrap();
    let err = store
        .update(|s| {
            s.namespaces.clear();
            s.namespaces.insert("new".into(), namespace("new", "1"));
            Err::<(), _>(StoreError::Rejected("no".into()))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "the closure's error comes back: {err}");
    let after = store.load().await.unwrap();
    assert_eq!(after.generation, before.generation, "nothing was written");
    assert_eq!(contents(&after), contents(&before), "the objects are as before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_300_objects_is_written_in_chunks() {
    let Some(etcd) = TestEtcd::start_with(|options, _| options.max_txn_ops = 128).await else { return };
    let store = etcd.store().await;
    let before = store.load().await.unwrap().generation;
    let (_, revision) = store
        .update(|s| {
            for i in 0..300 {
                s.services.insert(Store::key("bulk", &format!("s{i}")), service(i));
            }
            Ok(())
        })
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.services.len(), 300, "all 300 services are stored");
    let chunks = 300usize.div_ceil(MAX_TXN_OPS - 1) as u64;
    assert_eq!(revision - before, chunks, "one revision per chunk of at most {MAX_TXN_OPS} operations");
    // And all of them go away again.
    store
        .update(|s| {
            s.services.clear();
            Ok(())
        })
        .await
        .unwrap();
    assert!(store.load().await.unwrap().services.is_empty(), "all 300 services are deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_leaves_nodes_endpoints_and_identities_to_their_owners() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let node = NodeRecord {
        name: "n1".into(),
        addresses: vec![],
        pod_cidrs: vec![],
        host_routing: "bpf".into(),
        health: "ready".into(),
        agent_version: "t".into(),
        registered: String::new(),
    };
    let lease = store.register_node(&node, 30).await.unwrap();
    store
        .update(|s| {
            s.nodes.clear();
            s.nodes.insert("fake".into(), NodeRecord { name: "fake".into(), ..node.clone() });
            s.namespaces.insert("x".into(), namespace("x", "1"));
            Ok(())
        })
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert!(
        loaded.nodes.contains_key("n1") && !loaded.nodes.contains_key("fake"),
        "update did not touch nodes: {:?}",
        loaded.nodes.keys().collect::<Vec<_>>()
    );
    assert!(loaded.namespaces.contains_key("x"), "the object change was written");
    lease.revoke().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_clearly() {
    let port = sluice_state::etcd::free_local_port().unwrap();
    let config = sluice_state::etcd::EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]);
    let started = std::time::Instant::now();
    let err = EtcdStore::connect(&config).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "the error names the endpoint: {err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(12), "it fails within the connect timeout");
}
