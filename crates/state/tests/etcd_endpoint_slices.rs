//! A node's endpoint slices against a real etcd: a plan lands in one revision (an endpoint
//! changing identity is never seen in two slices or in none), readers see the slices'
//! endpoints as records, the slices live as long as the node's lease, and a lease granted anew
//! or a new registration of the node publishes them again.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::time::Duration;

use common::{eventually, TestEtcd};
use sluice_model::{Batcher, DesiredEndpoint, SliceWrite};
use sluice_state::etcd::EtcdStore;
use sluice_state::{NodeRecord, Store};

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

fn pod(name: &str, identity: u32, last: u8) -> DesiredEndpoint {
    DesiredEndpoint { namespace: "x".into(), name: name.into(), identity, addresses: vec![format!("198.19.1.{last}").parse().unwrap()] }
}

/// Published endpoints as `(pod, node, identity)`, sorted.
fn published(store: &Store) -> Vec<(String, String, u32)> {
    let mut out: Vec<_> = store.published_endpoints().map(|e| (e.name, e.node, e.identity)).collect();
    out.sort();
    out
}

/// The revision each of the node's slice keys was last written at.
async fn slice_revisions(store: &EtcdStore) -> Vec<i64> {
    let prefix = store.keys().endpoint_slices();
    let response = store.client().get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    response.kvs().iter().map(|kv| kv.mod_revision()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_lands_in_one_revision_and_the_slices_live_with_the_lease() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 30).await.unwrap();
    let batcher = Batcher::new("n1", 2).unwrap();

    // Three pods of one identity: two slices, written together.
    let mut desired = vec![pod("web-0", 300, 10), pod("web-1", 300, 11), pod("web-2", 300, 12)];
    let plan = batcher.plan(&lease.slices().await.unwrap(), &desired).unwrap();
    assert_eq!(plan.writes.len(), 2, "three endpoints in slices of two: {plan:?}");
    let before = store.load().await.unwrap().generation;
    lease.apply_slices(&plan).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.generation, before + 1, "two slices in one revision");
    assert_eq!(loaded.published_slices.len(), 2, "two slice keys");
    let want: Vec<(String, String, u32)> = (0..3).map(|i| (format!("web-{i}"), "n1".into(), 300)).collect();
    assert_eq!(published(&loaded), want, "readers see every endpoint of the slices as a record");
    assert!(loaded.endpoints.is_empty(), "no per-pod record is written in slice mode");

    // web-1 changes identity: it leaves its slice and joins a new one in the same revision.
    desired[1].identity = 301;
    let plan = batcher.plan(&lease.slices().await.unwrap(), &desired).unwrap();
    let kinds: Vec<&str> = plan
        .writes
        .iter()
        .map(|w| match w {
            SliceWrite::Create(_) => "create",
            SliceWrite::Update(_) => "update",
            SliceWrite::Delete { .. } => "delete",
        })
        .collect();
    assert!(kinds.len() >= 2, "a remove and an add: {kinds:?}");
    let before = store.load().await.unwrap().generation;
    lease.apply_slices(&plan).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.generation, before + 1, "the identity change is one revision ({kinds:?})");
    let revisions = slice_revisions(&store).await;
    let touched = revisions.iter().filter(|r| **r == loaded.generation as i64).count();
    assert_eq!(
        touched,
        plan.writes.iter().filter(|w| !matches!(w, SliceWrite::Delete { .. })).count(),
        "every put of the plan at that revision"
    );
    let web1: Vec<_> = published(&loaded).into_iter().filter(|(name, _, _)| name == "web-1").collect();
    assert_eq!(web1, [("web-1".to_string(), "n1".to_string(), 301)], "web-1 once, with its new identity");
    assert!(batcher.plan(&lease.slices().await.unwrap(), &desired).unwrap().writes.is_empty(), "the held slices are what was written");

    // The lease revoked: every slice of the node vanishes with its record, in one revision.
    let before = store.load().await.unwrap().generation;
    lease.revoke().await.unwrap();
    let after = store.load().await.unwrap();
    assert!(after.nodes.is_empty() && after.published_slices.is_empty(), "revoke removes the node and its slices");
    assert_eq!(after.published_endpoints().count(), 0, "no endpoint left to read");
    assert_eq!(after.generation, before + 1, "in one revision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_are_published_again_under_a_new_lease_and_taken_over_by_a_new_registration() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 2).await.unwrap();
    let batcher = Batcher::new("n1", 100).unwrap();
    let desired = vec![pod("web-0", 300, 10), pod("db-0", 302, 20)];
    lease.apply_slices(&batcher.plan(&[], &desired).unwrap()).await.unwrap();
    let first = lease.lease_id();

    // The lease revoked under the agent's feet: the task grants a new one and puts the slices back.
    store.client().lease_revoke(first).await.unwrap();
    assert!(store.load().await.unwrap().published_slices.is_empty(), "the revoke removed the slices");
    let back = eventually(Duration::from_secs(5), || async { store.load().await.unwrap().published_slices.len() == 2 }).await;
    assert!(back, "the slices are published again");
    assert_ne!(lease.lease_id(), first, "under a new lease");

    // The agent dies and starts again before the lease expires: the new registration takes the
    // node's slices over, so its first plan changes nothing and they outlive the old lease.
    lease.abandon();
    let again = store.register_node(&node("n1"), 30).await.unwrap();
    assert_eq!(again.slices().await.unwrap().len(), 2, "the node's slices are taken over");
    assert!(batcher.plan(&again.slices().await.unwrap(), &desired).unwrap().writes.is_empty(), "nothing to write");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.published_slices.len(), 2, "the slices outlive the old lease");
    assert_eq!(published(&loaded).len(), 2, "both endpoints readable");
    again.revoke().await.unwrap();
    assert!(store.load().await.unwrap().published_slices.is_empty(), "the new lease takes them away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_larger_than_a_transaction_is_written_in_several() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 30).await.unwrap();
    let batcher = Batcher::new("n1", 100).unwrap();

    // 150 pods of 150 identities: 150 slices, more than one transaction holds.
    let desired: Vec<DesiredEndpoint> = (0..150u32)
        .map(|i| DesiredEndpoint {
            namespace: "x".into(),
            name: format!("pod-{i}"),
            identity: 1000 + i,
            addresses: vec![format!("198.19.{}.{}", 1 + i / 200, 1 + i % 200).parse().unwrap()],
        })
        .collect();
    let plan = batcher.plan(&lease.slices().await.unwrap(), &desired).unwrap();
    assert_eq!(plan.writes.len(), 150, "one slice per identity");
    lease.apply_slices(&plan).await.expect("a large plan is written, not refused");
    let loaded = store.load().await.unwrap();
    assert_eq!(published(&loaded).len(), 150, "readers see every endpoint");
    assert_eq!(lease.slices().await.unwrap().len(), 150, "the lease holds every slice written");
    assert!(batcher.plan(&lease.slices().await.unwrap(), &desired).unwrap().is_empty(), "nothing left to write");
}

/// A slice write whose reply is lost may have committed. Such a write is stood in for here by a
/// slice put behind the writer's back (as the lost transaction would have left it) and a failed
/// write (etcd stopped): the next plan starts from what etcd holds, so the stray slice is
/// planned away instead of left for every node to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_write_the_next_plan_starts_from_what_etcd_holds() {
    let Some(mut etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let lease = store.register_node(&node("n1"), 30).await.unwrap();
    let batcher = Batcher::new("n1", 100).unwrap();
    let desired = vec![pod("web-0", 300, 10)];
    lease.apply_slices(&batcher.plan(&[], &desired).unwrap()).await.unwrap();

    // What a committed write with a lost reply leaves: a slice of this node the writer does not
    // know about (pod db-0 started and left meanwhile).
    let grown = vec![pod("web-0", 300, 10), pod("db-0", 302, 20)];
    let plan = batcher.plan(&lease.slices().await.unwrap(), &grown).unwrap();
    let SliceWrite::Create(stray) = plan.writes.iter().find(|w| matches!(w, SliceWrite::Create(_))).unwrap().clone() else {
        unreachable!()
    };
    let key = store.keys().endpoint_slice(&stray.namespace, &stray.name);
    let put = etcd_client::PutOptions::new().with_lease(lease.lease_id());
    store.client().put(key.clone(), serde_json::to_vec(&stray).unwrap(), Some(put)).await.unwrap();

    // The write itself fails: etcd is down.
    etcd.server.stop().unwrap();
    assert!(lease.apply_slices(&plan).await.is_err(), "a write to a stopped etcd fails");
    etcd.server.restart().await.unwrap();

    // The pod is gone again; the next plan must remove the stray slice.
    let existing = lease.slices().await.unwrap();
    assert_eq!(existing.len(), 2, "the slices are read back from etcd, the stray one with them: {existing:?}");
    let plan = batcher.plan(&existing, &desired).unwrap();
    assert!(
        plan.writes.iter().any(|w| matches!(w, SliceWrite::Delete { name, .. } if *name == stray.name)),
        "the stray slice is planned away: {plan:?}"
    );
    lease.apply_slices(&plan).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(published(&loaded), vec![("web-0".to_string(), "n1".to_string(), 300)], "only the pod that runs is published");
    assert_eq!(lease.slices().await.unwrap().len(), 1, "and the writer knows it");
}
