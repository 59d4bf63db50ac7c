//! Node registration against a real etcd: what a node publishes lives as long as its lease, a
//! revoke removes it at once, and a lease lost while the agent lives is granted anew with
//! everything published again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::time::Duration;

use common::{eventually, TestEtcd};
use sluice_state::etcd::EtcdStore;
use sluice_state::{EndpointRecord, NodeRecord};

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        addresses: vec!["198.19.0.1".parse().unwrap()],
        pod_cidrs: vec![],
        host_routing: "bpf".into(),
        health: "ready".into(),
        agent_version: "test".into(),
        registered: String::new(),
    }
}

fn endpoint(name: &str, node: &str) -> EndpointRecord {
    EndpointRecord { namespace: "x".into(), name: name.into(), node: node.into(), ips: vec!["198.19.1.5".parse().unwrap()], identity: 300 }
}

async fn exists(store: &EtcdStore, key: &str) -> bool {
    !store.client().get(key, None).await.unwrap().kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_takes_the_node_and_its_endpoints_away() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 2).await.unwrap();
    lease.publish_endpoint(&endpoint("web", "n1")).await.unwrap();
    lease.hold_identity(300).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert!(loaded.nodes.contains_key("n1"), "the node is registered");
    assert_eq!(loaded.endpoints.get("x/web").map(|e| e.node.as_str()), Some("n1"), "the endpoint is published");
    assert!(exists(&store, &store.keys().identity_ref(300, "n1")).await, "the identity is held");

    // Kept alive past its TTL while the task runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(store.load().await.unwrap().nodes.contains_key("n1"), "the keep-alive holds the lease past its TTL");

    lease.abandon();
    let gone = eventually(Duration::from_secs(4), || async {
        let s = store.load().await.unwrap();
        s.nodes.is_empty() && s.endpoints.is_empty()
    })
    .await;
    assert!(gone, "node and endpoint vanish within TTL + 2 s");
    assert!(!exists(&store, &store.keys().identity_ref(300, "n1")).await, "the hold vanishes with them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_withdrawals_and_revoke() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 30).await.unwrap();
    assert_ne!(lease.lease_id(), 0, "a lease is granted");
    let mut changed = node("n1");
    changed.health = "degraded".into();
    lease.update_node(&changed).await.unwrap();
    lease.publish_endpoint(&endpoint("a", "n1")).await.unwrap();
    lease.publish_endpoint(&endpoint("b", "n1")).await.unwrap();
    lease.withdraw_endpoint("x", "a").await.unwrap();
    lease.hold_identity(301).await.unwrap();
    lease.release_identity(301).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.nodes["n1"].health, "degraded", "the record was replaced");
    assert_eq!(loaded.endpoints.keys().collect::<Vec<_>>(), ["x/b"], "only the endpoint not withdrawn stays");
    assert!(!exists(&store, &store.keys().identity_ref(301, "n1")).await, "the released hold is gone");

    let before = store.load().await.unwrap().generation;
    lease.revoke().await.unwrap();
    let after = store.load().await.unwrap();
    assert!(after.nodes.is_empty() && after.endpoints.is_empty(), "revoke removes everything");
    assert_eq!(after.generation, before + 1, "in one revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_granted_anew_and_everything_published_again() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 2).await.unwrap();
    lease.publish_endpoint(&endpoint("web", "n1")).await.unwrap();
    lease.hold_identity(302).await.unwrap();
    let first = lease.lease_id();

    // Someone (an operator, etcd losing it) revokes the lease under the agent's feet.
    store.client().lease_revoke(first).await.unwrap();
    assert!(store.load().await.unwrap().nodes.is_empty(), "the revoke removed the node");

    let back = eventually(Duration::from_secs(5), || async {
        let s = store.load().await.unwrap();
        s.nodes.contains_key("n1") && s.endpoints.contains_key("x/web")
    })
    .await;
    assert!(back, "node and endpoint are published again");
    assert!(exists(&store, &store.keys().identity_ref(302, "n1")).await, "the hold is published again");
    assert_ne!(lease.lease_id(), first, "under a new lease");
    lease.revoke().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_etcd_is_down_fail_and_are_published_when_it_is_back() {
    let Some(mut etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 10).await.unwrap();
    etcd.server.stop().unwrap();
    let err = lease.publish_endpoint(&endpoint("late", "n1")).await;
    assert!(err.is_err(), "a write to a stopped etcd fails instead of hanging or panicking");
    etcd.server.restart().await.unwrap();
    let back =
        eventually(Duration::from_secs(15), || async { matches!(store.load().await, Ok(s) if s.endpoints.contains_key("x/late")) }).await;
    assert!(back, "the keep-alive task published the endpoint once etcd was back");
    lease.revoke().await.unwrap();
}
