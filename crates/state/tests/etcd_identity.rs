//! Cluster-wide identities against a real etcd: racing agents settle on one number per label
//! set, different label sets get different numbers, and unreferenced numbers are collected
//! after the grace while held ones stay.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::TestEtcd;
use sluice_state::etcd::{EtcdStore, FIRST_CLUSTER_IDENTITY};
use sluice_state::NodeRecord;

fn labels(app: &str) -> (String, BTreeMap<String, String>) {
    let map: BTreeMap<String, String> =
        [("k8s:app".to_string(), app.to_string()), ("k8s:io.kubernetes.pod.namespace".to_string(), "x".to_string())].into_iter().collect();
    let canonical = map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
    (canonical, map)
}

async fn race(etcd: &TestEtcd, apps: Vec<String>) -> Vec<u32> {
    let mut tasks = Vec::new();
    for app in apps {
        let config = etcd.config();
        tasks.push(tokio::spawn(async move {
            let store = EtcdStore::connect(&config).await.unwrap();
            let (canonical, map) = labels(&app);
            store.allocate_identity(&canonical, &map).await.unwrap()
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_settle_on_one_number_per_label_set() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let same = race(&etcd, vec!["web".to_string(); 8]).await;
    let distinct: BTreeSet<u32> = same.iter().copied().collect();
    assert_eq!(distinct.len(), 1, "eight agents, one label set, one number: {same:?}");
    let web = same[0];
    assert!(web >= FIRST_CLUSTER_IDENTITY, "reserved numbers are not handed out: {web}");

    let different = race(&etcd, (0..8).map(|i| format!("app-{i}")).collect()).await;
    let distinct: BTreeSet<u32> = different.iter().copied().collect();
    assert_eq!(distinct.len(), 8, "eight label sets, eight numbers: {different:?}");
    assert!(!distinct.contains(&web), "new label sets do not reuse a taken number");

    let store = etcd.store().await;
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.identities.len(), 9, "nine identities stored");
    assert_eq!(loaded.identities[&web].labels, labels("web").1, "the record holds the labels");
    let (canonical, map) = labels("web");
    assert_eq!(store.allocate_identity(&canonical, &map).await.unwrap(), web, "asking again gives the same number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_identities_are_collected_after_the_grace() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let (held_canonical, held_labels) = labels("held");
    let (free_canonical, free_labels) = labels("free");
    let held = store.allocate_identity(&held_canonical, &held_labels).await.unwrap();
    let free = store.allocate_identity(&free_canonical, &free_labels).await.unwrap();
    let node = NodeRecord {
        name: "n1".into(),
        addresses: vec![],
        pod_cidrs: vec![],
        host_routing: String::new(),
        health: String::new(),
        agent_version: String::new(),
        registered: String::new(),
    };
    let lease = store.register_node(&node, 30).await.unwrap();
    lease.hold_identity(held).await.unwrap();

    let grace = Duration::from_secs(1);
    assert!(store.collect_identities(grace).await.unwrap().is_empty(), "first sight only marks");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.collect_identities(grace).await.unwrap(), vec![free], "the unreferenced identity goes after the grace");
    let loaded = store.load().await.unwrap();
    assert!(loaded.identities.contains_key(&held), "the held identity stays");
    assert!(!loaded.identities.contains_key(&free), "the free one is gone");
    let labels_key = store.keys().identity_labels(&free_canonical);
    assert!(store.client().get(labels_key, None).await.unwrap().kvs().is_empty(), "its label key went with it");

    // The same labels later get a number again.
    let again = store.allocate_identity(&free_canonical, &free_labels).await.unwrap();
    assert!(store.load().await.unwrap().identities.contains_key(&again), "reallocated after collection");

    // A marked identity asked for again loses its mark and survives the next collection.
    assert!(store.collect_identities(grace).await.unwrap().is_empty(), "marks `again`");
    assert_eq!(store.allocate_identity(&free_canonical, &free_labels).await.unwrap(), again, "asked for again");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.collect_identities(grace).await.unwrap().is_empty(), "asking cleared the mark, so nothing is collected yet");
    lease.revoke().await.unwrap();
}
