//! The etcd state source against a real etcd: the first snapshot is synced, changes arrive
//! within a second with growing revisions, the source comes back after etcd restarts (without
//! reading everything again), and a compacted revision makes it read everything anew.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::time::Duration;

use common::{eventually, namespace, TestEtcd};
use etcd_client::CompactionOptions;
use sluice_state::etcd::{EtcdSource, EtcdStore};
use sluice_state::{wait_for, wait_synced, ClusterState, StateSource, Store};

async fn add_namespace(store: &EtcdStore, name: &str) -> u64 {
    store
        .update(|s| {
            s.namespaces.insert(name.into(), namespace(name, "t"));
            Ok(())
        })
        .await
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_snapshot_is_synced_and_changes_follow_within_a_second() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let first = add_namespace(&store, "before").await;

    let source = EtcdSource::spawn(etcd.config());
    let synced = wait_synced(&source, Duration::from_secs(10)).await.unwrap();
    assert!(synced.namespaces.contains_key("before"), "the first snapshot holds what was there");
    assert!(synced.revision >= first, "the first snapshot is at or after the write: {} < {first}", synced.revision);
    assert_eq!(source.health().full_syncs, 1, "one full read at start");
    assert!(source.health().connected, "connected after the first read");
    assert!(source.store().is_some(), "the source shares its connection");

    let mut rx = source.subscribe();
    let written = add_namespace(&store, "after").await;
    let seen = wait_for(&mut rx, Duration::from_secs(1), |s| s.namespaces.contains_key("after"))
        .await
        .expect("the change arrives within a second");
    assert!(seen.revision > synced.revision, "the revision grows: {} -> {}", synced.revision, seen.revision);
    assert_eq!(seen.revision, written, "the snapshot is at the write's revision");
    assert_eq!(seen.objects.generation, written, "the objects carry the revision as their generation");

    // Deletions arrive too, and a burst of writes ends in one consistent view.
    store
        .update(|s| {
            s.namespaces.remove("before");
            Ok(())
        })
        .await
        .unwrap();
    for i in 0..10 {
        add_namespace(&store, &format!("burst-{i}")).await;
    }
    let last = store.load().await.unwrap();
    let seen = wait_for(&mut rx, Duration::from_secs(2), |s| s.revision >= last.generation).await.expect("the burst arrives");
    assert!(!seen.namespaces.contains_key("before"), "the deletion arrived");
    assert_eq!(seen.namespaces.len(), 11, "after + 10 burst namespaces");
    assert_eq!(source.health().full_syncs, 1, "changes never force a full read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_comes_back_after_etcd_restarts() {
    let Some(mut etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    add_namespace(&store, "one").await;
    let source = EtcdSource::spawn(etcd.config());
    let synced = wait_synced(&source, Duration::from_secs(10)).await.unwrap();

    etcd.server.stop().unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async { !source.health().connected }).await,
        "the source notices etcd is gone: {:?}",
        source.health()
    );
    assert!(source.health().last_error.is_some(), "and says why");

    etcd.server.restart().await.unwrap();
    let store = etcd.store().await;
    let written = add_namespace(&store, "two").await;
    let mut rx = source.subscribe();
    let seen =
        wait_for(&mut rx, Duration::from_secs(15), |s| s.namespaces.contains_key("two")).await.expect("a change after the restart arrives");
    assert!(seen.namespaces.contains_key("one"), "what did not change is still there");
    assert!(seen.revision >= written && seen.revision > synced.revision, "the revision moved on");
    assert!(eventually(Duration::from_secs(5), || async { source.health().connected }).await, "connected again: {:?}", source.health());
    assert_eq!(source.health().last_error, None, "the error is cleared on success");
    assert_eq!(source.health().full_syncs, 1, "resumed the watch instead of reading everything again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_forces_a_full_read() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let old = add_namespace(&store, "a").await;
    add_namespace(&store, "b").await;
    store
        .update(|s| {
            s.namespaces.remove("a");
            Ok(())
        })
        .await
        .unwrap();
    let latest = add_namespace(&store, "c").await;
    store.client().compact(i64::try_from(latest).unwrap(), Some(CompactionOptions::new().with_physical())).await.unwrap();

    // A source that resumes from a revision etcd no longer has: its stale view (only `a`) must
    // be replaced by a full read.
    let mut stale = Store::default();
    stale.namespaces.insert("a".into(), namespace("a", "t"));
    let source =
        EtcdSource::spawn_resuming(etcd.config(), ClusterState { revision: old, synced: true, objects: std::sync::Arc::new(stale) });
    let mut rx = source.subscribe();
    let seen = wait_for(&mut rx, Duration::from_secs(10), |s| s.revision >= latest).await.expect("the source catches up");
    let names: Vec<&String> = seen.namespaces.keys().collect();
    assert_eq!(names, ["b", "c"], "the snapshot is the cluster's, not the stale view plus events");
    assert_eq!(source.health().full_syncs, 1, "the compaction forced one full read");

    // It keeps watching afterwards.
    let written = add_namespace(&store, "d").await;
    let seen =
        wait_for(&mut rx, Duration::from_secs(2), |s| s.namespaces.contains_key("d")).await.expect("changes after the resync arrive");
    assert_eq!(seen.revision, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_without_etcd_reports_why() {
    let port = sluice_state::etcd::free_local_port().unwrap();
    let source = EtcdSource::spawn(sluice_state::etcd::EtcdConfig::new(vec![format!("http://127.0.0.1:{port}")]));
    let err = wait_synced(&source, Duration::from_millis(800)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "the error names the endpoint: {err}");
    assert!(!source.health().connected, "not connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_outlives_the_request_timeout() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let source = EtcdSource::spawn(etcd.config());
    wait_synced(&source, Duration::from_secs(10)).await.unwrap();
    // Longer than a request may wait for its answer: the watch stream must not count as one.
    tokio::time::sleep(sluice_state::etcd::REQUEST_TIMEOUT + Duration::from_secs(1)).await;
    assert!(source.health().connected && source.health().last_error.is_none(), "the idle watch is still up: {:?}", source.health());
    add_namespace(&store, "late").await;
    let mut rx = source.subscribe();
    wait_for(&mut rx, Duration::from_secs(1), |s| s.namespaces.contains_key("late"))
        .await
        .expect("a change after a long quiet arrives at once");
}
