//! Cluster-pool IPAM against a real etcd: racing nodes get disjoint pod CIDRs, a node asking
//! again gets its own back, and allocations of vanished nodes are released after the grace.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestEtcd;
use ipnet::IpNet;
use sluice_state::etcd::{EtcdError, EtcdStore};
use sluice_state::NodeRecord;

fn pools() -> Vec<IpNet> {
    vec!["198.19.0.0/16".parse().unwrap(), "fd00:198:19::/48".parse().unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_nodes_get_disjoint_cidrs_and_keep_them() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let mut tasks = Vec::new();
    for i in 0..8 {
        let config = etcd.config();
        tasks.push(tokio::spawn(async move {
            // Each node its own client, as separate agents would be.
            let store = EtcdStore::connect(&config).await.unwrap();
            store.allocate_pod_cidrs(&format!("n{i}"), &pools(), 24, 64).await.unwrap()
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let cidrs = task.await.unwrap();
        assert_eq!(cidrs.len(), 2, "one CIDR per pool: {cidrs:?}");
        assert_eq!(cidrs[0].prefix_len(), 24, "a /24 from the IPv4 pool");
        assert_eq!(cidrs[1].prefix_len(), 64, "a /64 from the IPv6 pool");
        assert!(pools()[0].contains(&cidrs[0]) && pools()[1].contains(&cidrs[1]), "inside the pools: {cidrs:?}");
        all.extend(cidrs);
    }
    let distinct: BTreeSet<IpNet> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 16, "no CIDR is given twice: {all:?}");

    let store = etcd.store().await;
    let first = store.allocate_pod_cidrs("n3", &pools(), 24, 64).await.unwrap();
    let again = store.allocate_pod_cidrs("n3", &pools(), 24, 64).await.unwrap();
    assert_eq!(first, again, "a node asking twice gets the same CIDRs");
    assert_eq!(store.pod_cidr_allocations().await.unwrap().len(), 16, "asking again allocates nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_says_so() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let pool: IpNet = "198.19.6.0/23".parse().unwrap();
    store.allocate_pod_cidrs("a", &[pool], 24, 64).await.unwrap();
    store.allocate_pod_cidrs("b", &[pool], 24, 64).await.unwrap();
    let err = store.allocate_pod_cidrs("c", &[pool], 24, 64).await.unwrap_err();
    assert!(matches!(err, EtcdError::PoolExhausted { .. }), "exhaustion is reported: {err}");
    assert!(err.to_string().contains("198.19.6.0/23"), "naming the pool: {err}");
    let err = store.allocate_pod_cidrs("c", &[pool], 22, 64).await.unwrap_err();
    assert!(matches!(err, EtcdError::BadPool { .. }), "a node prefix wider than the pool is refused: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_cidrs_are_released_after_the_grace() {
    let Some(etcd) = TestEtcd::start().await else { return };
    let store = etcd.store().await;
    let record = |name: &str| NodeRecord {
        name: name.into(),
        addresses: vec![],
        pod_cidrs: vec![],
        host_routing: String::new(),
        health: String::new(),
        agent_version: String::new(),
        registered: String::new(),
    };
    let live = store.register_node(&record("live"), 30).await.unwrap();
    let live_cidrs = store.allocate_pod_cidrs("live", &pools(), 24, 64).await.unwrap();
    let gone_cidrs = store.allocate_pod_cidrs("gone", &pools(), 24, 64).await.unwrap();
    let back_cidrs = store.allocate_pod_cidrs("back", &pools(), 24, 64).await.unwrap();

    let grace = Duration::from_secs(1);
    assert!(store.release_orphaned_pod_cidrs(grace).await.unwrap().is_empty(), "first sight only marks");
    // `back` returns within the grace: asking again clears its mark and keeps its CIDRs.
    assert_eq!(store.allocate_pod_cidrs("back", &pools(), 24, 64).await.unwrap(), back_cidrs, "a returning node keeps its CIDRs");
    let back = store.register_node(&record("back"), 30).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let released: BTreeSet<IpNet> = store.release_orphaned_pod_cidrs(grace).await.unwrap().into_iter().collect();
    assert_eq!(released, gone_cidrs.iter().copied().collect(), "only the vanished node's CIDRs are released");
    let left = store.pod_cidr_allocations().await.unwrap();
    for cidr in live_cidrs.iter().chain(&back_cidrs) {
        assert!(left.contains_key(cidr), "{cidr} of a live node stays");
    }
    assert_eq!(left.len(), 4, "live and back keep two each");
    live.revoke().await.unwrap();
    back.revoke().await.unwrap();
}
