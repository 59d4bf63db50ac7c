//! A simulated node: the agent's own cluster membership and endpoint publication
//! ([`sluice_agent::cluster::etcd::EtcdMember`], in the mode under test, with the agent's debounce),
//! and a watch of the endpoint kind on the node's own etcd connection that keeps the
//! IP-to-identity cache a real node keeps. No datapath: what is measured is the control plane.
//!
//! Every node reports into one [`Tally`]: events and bytes received, writes made, and for each
//! pod how many nodes hold its address with the right identity, and when the last one did.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use sluice_agent::cluster::etcd::EtcdMember;
use sluice_agent::config::EndpointsMode;
use sluice_agent::AgentConfig;
use sluice_model::SluiceEndpointSlice;
use sluice_state::etcd::EtcdConfig;
use sluice_state::EndpointRecord;
use tokio::sync::mpsc;

use super::workload::{Pod, Shape};
use crate::BenchError;

/// What every simulated node adds to.
pub struct Tally {
    origin: Instant,
    shape: Shape,
    /// By pod index: the identity its address must map to (0: never started).
    expected: Vec<AtomicU32>,
    /// By pod index: when it was handed to its node's agent, µs after `origin` (0: not yet).
    started_us: Vec<AtomicU64>,
    /// By pod index: nodes whose cache holds its address.
    seen: Vec<AtomicU32>,
    /// By pod index: when the last node's cache took its address, µs after `origin`.
    complete_us: Vec<AtomicU64>,
    /// Sum of every node's cache size.
    pub cache_entries: AtomicI64,
    pub events: AtomicU64,
    pub responses: AtomicU64,
    /// Keys and values received, bytes.
    pub payload_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub publish_rounds: AtomicU64,
    pub write_errors: AtomicU64,
    /// Addresses read with another identity than their pod's, or outside the benchmark's.
    pub wrong: AtomicU64,
}

impl Tally {
    pub fn new(shape: Shape) -> Self {
        let n = shape.indices();
        let zeros32 = || (0..n).map(|_| AtomicU32::new(0)).collect();
        let zeros64 = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            origin: Instant::now(),
            shape,
            expected: zeros32(),
            started_us: zeros64(),
            seen: zeros32(),
            complete_us: zeros64(),
            cache_entries: AtomicI64::new(0),
            events: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            payload_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            publish_rounds: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
        }
    }

    fn now_us(&self) -> u64 {
        (self.origin.elapsed().as_micros() as u64).max(1)
    }

    /// Marks `pod` as running now: from here its propagation is timed.
    pub fn started(&self, pod: &Pod) {
        let i = pod.index as usize;
        self.expected[i].store(pod.identity, Relaxed);
        self.started_us[i].store(self.now_us(), Relaxed);
    }

    /// A node's cache took `address` with `identity`.
    fn took(&self, address: IpAddr, identity: u32) {
        self.cache_entries.fetch_add(1, Relaxed);
        let Some(i) = self.shape.index_of(address) else {
            self.wrong.fetch_add(1, Relaxed);
            return;
        };
        if self.expected[i].load(Relaxed) != identity {
            self.wrong.fetch_add(1, Relaxed);
            return;
        }
        if self.seen[i].fetch_add(1, Relaxed) + 1 == self.shape.nodes as u32 {
            self.complete_us[i].store(self.now_us(), Relaxed);
        }
    }

    fn dropped(&self) {
        self.cache_entries.fetch_sub(1, Relaxed);
    }

    /// Whether every node holds `pod`'s address.
    pub fn complete(&self, index: u32) -> bool {
        self.complete_us[index as usize].load(Relaxed) != 0
    }

    /// Milliseconds from `index`'s start until every node held it.
    pub fn propagation_ms(&self, index: u32) -> Option<f64> {
        let (start, done) = (self.started_us[index as usize].load(Relaxed), self.complete_us[index as usize].load(Relaxed));
        (start != 0 && done != 0).then(|| done.saturating_sub(start) as f64 / 1000.0)
    }
}

/// A pod change handed to a node's agent.
#[derive(Debug)]
pub enum Change {
    Start(Pod),
    Stop(Pod),
}

/// One simulated node; dropping it stops its tasks (its lease then expires with etcd).
pub struct SimNode {
    changes: mpsc::UnboundedSender<Change>,
    writer: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.writer.abort();
        self.watcher.abort();
    }
}

/// How a simulated node runs.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub etcd: EtcdConfig,
    pub mode: EndpointsMode,
    pub endpoints_per_slice: usize,
    pub debounce: Duration,
    pub lease_seconds: u64,
}

impl SimNode {
    /// Joins the cluster as node `node` (the agent's own join, with the node's pod CIDR given)
    /// and starts watching the endpoint kind; returns once the watch is in place.
    pub async fn start(node: u32, settings: &NodeSettings, tally: Arc<Tally>) -> Result<Self, BenchError> {
        let name = format!("sim-{node}");
        let config = agent_config(&name, tally.shape.node_cidr(node), settings)?;
        let address = IpAddr::from([198, 18, (node >> 8) as u8, node as u8]);
        let (cluster, _) =
            EtcdMember::join(&config, vec![address]).await.map_err(|e| BenchError::Check(format!("node {name} joining: {e}")))?;
        let cluster = Arc::new(cluster);
        let prefix = super::endpoint_prefix(cluster.store().keys(), settings.mode);
        let mut client = cluster.store().client();
        let stream = client
            .watch(prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| BenchError::Check(format!("node {name} watching {prefix}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(cluster, rx, settings.debounce, tally.clone()));
        let watcher = tokio::spawn(watch_loop(stream, settings.mode, tally));
        Ok(Self { changes: tx, writer, watcher })
    }

    /// Hands `change` to the node's agent; a start is timed from here, as the moment the pod
    /// runs with its address (its CNI ADD returned).
    pub fn send(&self, change: Change, tally: &Tally) {
        if let Change::Start(pod) = &change {
            tally.started(pod);
        }
        let _ = self.changes.send(change);
    }
}

/// The agent configuration a simulated node joins with.
fn agent_config(name: &str, cidr: ipnet::IpNet, settings: &NodeSettings) -> Result<AgentConfig, BenchError> {
    let mode = super::mode_name(settings.mode);
    let etcd = serde_json::to_string(&settings.etcd).map_err(|e| BenchError::io("encoding the etcd configuration", e))?;
    let text = format!(
        "nodeName: {name}\npodCIDRs: [{cidr}]\nstate: {{source: etcd, etcd: {etcd}, endpoints: {mode}, endpointsPerSlice: {}, endpointsDebounceMillis: {}, leaseSeconds: {}}}\n",
        settings.endpoints_per_slice,
        settings.debounce.as_millis(),
        settings.lease_seconds,
    );
    AgentConfig::parse(std::path::Path::new("simulated-node.yaml"), &text).map_err(|e| BenchError::Invalid(e.to_string()))
}

/// The agent's publication: a change opens a debounce window; when it closes, the node's
/// endpoints as they are then are published in one call (retried until it succeeds).
async fn write_loop(cluster: Arc<EtcdMember>, mut changes: mpsc::UnboundedReceiver<Change>, debounce: Duration, tally: Arc<Tally>) {
    let mut running: BTreeMap<String, EndpointRecord> = BTreeMap::new();
    let node = cluster.node().to_string();
    let apply = |change: Change, running: &mut BTreeMap<String, EndpointRecord>| match change {
        Change::Start(pod) => {
            let key = format!("{}/{}", pod.namespace, pod.name);
            let record = EndpointRecord {
                namespace: pod.namespace,
                name: pod.name,
                node: node.clone(),
                ips: vec![pod.address],
                identity: pod.identity,
            };
            running.insert(key, record);
        }
        Change::Stop(pod) => drop(running.remove(&format!("{}/{}", pod.namespace, pod.name))),
    };
    while let Some(first) = changes.recv().await {
        apply(first, &mut running);
        tokio::time::sleep(debounce).await;
        while let Ok(change) = changes.try_recv() {
            apply(change, &mut running);
        }
        loop {
            match cluster.publish_endpoints(running.clone()).await {
                Ok(writes) => {
                    tally.writes.fetch_add(writes as u64, Relaxed);
                    tally.publish_rounds.fetch_add(1, Relaxed);
                    break;
                }
                Err(_) => {
                    tally.write_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

fn key_hash(key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The node's view of the endpoint kind: addresses by key (to withdraw them on deletion) and
/// the IP-to-identity cache.
async fn watch_loop(mut stream: etcd_client::WatchStream, mode: EndpointsMode, tally: Arc<Tally>) {
    let mut by_key: HashMap<u64, Vec<IpAddr>> = HashMap::new();
    let mut cache: HashMap<IpAddr, u32> = HashMap::new();
    while let Ok(Some(response)) = stream.message().await {
        tally.responses.fetch_add(1, Relaxed);
        tally.events.fetch_add(response.events().len() as u64, Relaxed);
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            tally.payload_bytes.fetch_add((kv.key().len() + kv.value().len()) as u64, Relaxed);
            let key = key_hash(kv.key());
            let (identity, addresses) = match event.event_type() {
                EventType::Delete => (0, Vec::new()),
                EventType::Put => match decode(mode, kv.value()) {
                    Some(decoded) => decoded,
                    None => {
                        tally.wrong.fetch_add(1, Relaxed);
                        continue;
                    }
                },
            };
            let old = by_key.remove(&key).unwrap_or_default();
            for gone in old.iter().filter(|a| !addresses.contains(a)) {
                if cache.remove(gone).is_some() {
                    tally.dropped();
                }
            }
            for address in &addresses {
                if cache.insert(*address, identity).is_none() {
                    tally.took(*address, identity);
                }
            }
            if !addresses.is_empty() {
                by_key.insert(key, addresses);
            }
        }
    }
}

fn decode(mode: EndpointsMode, value: &[u8]) -> Option<(u32, Vec<IpAddr>)> {
    match mode {
        EndpointsMode::PerPod => serde_json::from_slice::<EndpointRecord>(value).ok().map(|r| (r.identity, r.ips)),
        EndpointsMode::Slices => serde_json::from_slice::<SluiceEndpointSlice>(value)
            .ok()
            .map(|s| (s.identity, s.endpoints.into_iter().flat_map(|e| e.addresses).collect())),
    }
}
