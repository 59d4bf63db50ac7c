//! The agent's policy loop: reads pods, namespaces and every policy kind from a cluster
//! snapshot, gives every pod's label set and every policy CIDR a number (held in the identity
//! allocator while in use), compiles this node's tables with the engine and programs them.
//! A round runs when the snapshot's revision or the set of local endpoints changed, and on
//! every resync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;
use sluice_datapath::{DatapathTables, PolicyTables};
use sluice_model::LabelSet;
use sluice_policy::{ClusterView, Compiled, EndpointView, Policy};

use super::program::{LocalEndpoint, PolicyProgrammer, PolicyReport};
use super::proxy::ProxyRulesWriter;
use crate::identity::Identities;
use sluice_state::ClusterState;

/// The inputs and output of the last round: what `policy trace` and `policy get` explain.
#[derive(Debug, Clone, Default)]
pub struct PolicySnapshot {
    pub policies: Vec<Policy>,
    pub view: ClusterView,
    pub compiled: Compiled,
}

/// What the last rounds did, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct PolicyStats {
    pub policies: usize,
    pub entries: usize,
    pub last_compile_micros: u64,
    pub last_program_micros: u64,
    pub last_error: Option<String>,
    pub conntrack_collected: u64,
}

/// How long a round waits for the layer-7 proxy to load new rules before it programs the maps
/// that send it connections they cover.
const PROXY_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A label set as the identity allocator takes it.
type Labels = BTreeMap<String, String>;

pub struct Policies {
    node_addresses: Vec<IpAddr>,
    proxy_port: u16,
    /// The layer-7 proxy's rules file, written before the maps that redirect to the proxy.
    proxy_rules: Mutex<Option<ProxyRulesWriter>>,
    programmer: Mutex<Option<PolicyProgrammer>>,
    /// What the last good round was computed from.
    seen: Mutex<Option<Seen>>,
    /// Identities this loop holds: owner key -> label set.
    held: Mutex<BTreeMap<String, (Labels, u32)>>,
    snapshot: Mutex<Arc<PolicySnapshot>>,
    stats: Mutex<PolicyStats>,
}

/// State revision, local endpoints and objects of a round.
type Seen = (u64, Vec<LocalEndpoint>, Arc<sluice_state::Store>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the state store: {0}")]
    Store(#[from] sluice_state::StoreError),
    #[error("allocating an identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("programming the policy maps: {0}")]
    Datapath(#[from] sluice_datapath::DatapathError),
    /// The layer-7 proxy's rules could not be written; the maps are left as they were.
    #[error("writing the layer-7 proxy's rules to {path}: {source}")]
    ProxyRules { path: std::path::PathBuf, source: std::io::Error },
}

// === impl Policies ===

impl Policies {
    pub fn new(node_addresses: Vec<IpAddr>) -> Self {
        Self {
            node_addresses,
            proxy_port: 0,
            proxy_rules: Mutex::new(None),
            programmer: Mutex::new(None),
            seen: Mutex::new(None),
            held: Mutex::new(BTreeMap::new()),
            snapshot: Mutex::new(Arc::new(PolicySnapshot::default())),
            stats: Mutex::new(PolicyStats::default()),
        }
    }

    /// Entries allowed only through the layer-7 proxy send connections to `port`; its rules
    /// are written to `rules_path`.
    pub fn with_proxy(mut self, port: u16, rules_path: std::path::PathBuf) -> Self {
        self.proxy_port = port;
        self.proxy_rules = Mutex::new(Some(ProxyRulesWriter::new(rules_path)));
        self
    }

    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        lock(&self.snapshot).clone()
    }

    pub fn stats(&self) -> PolicyStats {
        lock(&self.stats).clone()
    }

    /// The rules behind a cookie of a flow, in words.
    pub fn describe_rule(&self, cookie: u32) -> Option<String> {
        let guard = lock(&self.programmer);
        Some(describe(guard.as_ref()?.rules_of(cookie)?))
    }

    /// Rule cookies in words, filled as they are handed out (`None` before the first round).
    pub fn rule_names(&self) -> Option<super::program::RuleNames> {
        lock(&self.programmer).as_ref().map(|p| p.names())
    }

    /// One round; `None` when nothing changed.
    pub fn sync(
        &self,
        datapath: &mut dyn DatapathTables,
        identities: &Identities,
        objects: &ClusterState,
        local: Vec<LocalEndpoint>,
        force: bool,
    ) -> Result<Option<PolicyReport>, PolicyError> {
        if !objects.synced {
            return Ok(None);
        }
        if !force {
            let mut seen = lock(&self.seen);
            if let Some((revision, seen_local, seen_objects)) = seen.as_mut() {
                if *seen_local == local && (*revision == objects.revision || same_policy_inputs(seen_objects, &objects.objects)) {
                    // Nothing policy reads changed (a Service, say): no round.
                    *revision = objects.revision;
                    *seen_objects = objects.objects.clone();
                    return Ok(None);
                }
            }
        }
        let started = Instant::now();
        let result = self.round(objects, datapath, identities, &local, started);
        let mut stats = lock(&self.stats);
        match &result {
            Ok(_) => {
                *lock(&self.seen) = Some((objects.revision, local, objects.objects.clone()));
                stats.last_error = None;
            }
            Err(e) => stats.last_error = Some(e.to_string()),
        }
        result.map(Some)
    }

    fn round(
        &self,
        objects: &ClusterState,
        datapath: &mut dyn DatapathTables,
        identities: &Identities,
        local: &[LocalEndpoint],
        started: Instant,
    ) -> Result<PolicyReport, PolicyError> {
        let policies = lowered(objects);
        let local_pods: BTreeMap<&str, &LocalEndpoint> = local.iter().map(|e| (e.pod.as_str(), e)).collect();
        let mut wanted: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut endpoints = Vec::new();
        let mut remote_nodes = BTreeSet::new();
        let empty = BTreeMap::new();
        let mut namespace_labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (key, pod) in &objects.pods {
            let mut ips: Vec<IpAddr> = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ips.as_ref())
                .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
                .unwrap_or_default();
            if let Some(ep) = local_pods.get(key.as_str()) {
                // A pod being added: its addresses are known here before the store has them.
                ips.clone_from(&ep.ips);
            }
            if ips.is_empty() {
                continue;
            }
            let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let ns_labels = namespace_labels.entry(namespace.clone()).or_insert_with(|| {
                // As the API server does: every namespace carries its name as a label.
                sluice_model::labels::namespace_labels(
                    &namespace,
                    objects.namespaces.get(&namespace).and_then(|n| n.metadata.labels.as_ref()),
                )
            });
            let labels = LabelSet::for_pod(pod.metadata.labels.as_ref().unwrap_or(&empty), &namespace, ns_labels);
            let owner = format!("policy:pod:{key}");
            wanted.insert(owner.clone(), labels.as_map().clone());
            let is_local = local_pods.contains_key(key.as_str());
            if !is_local {
                if let Some(host) = pod.status.as_ref().and_then(|s| s.host_ip.as_ref()).and_then(|h| h.parse::<IpAddr>().ok()) {
                    remote_nodes.insert(host);
                }
            }
            endpoints.push((
                owner,
                EndpointView { key: key.clone(), namespace, labels, identity: 0, ips, local: is_local, named_ports: named_ports(pod) },
            ));
        }
        for cidr in sluice_policy::required_cidrs(&policies) {
            let mut labels = BTreeMap::new();
            labels.insert(format!("cidr:{cidr}"), String::new());
            wanted.insert(format!("policy:cidr:{cidr}"), labels);
        }
        let ids = self.hold(identities, &wanted)?;
        let mut view = ClusterView::default();
        for (owner, mut ep) in endpoints {
            ep.identity = ids.get(&owner).copied().unwrap_or(sluice_policy::IDENTITY_WORLD);
            view.endpoints.push(ep);
        }
        for (owner, id) in &ids {
            if let Some(cidr) = owner.strip_prefix("policy:cidr:").and_then(|c| c.parse::<IpNet>().ok()) {
                view.cidr_identities.insert(cidr, *id);
            }
        }
        view.local_node_ips = self.node_addresses.clone();
        view.remote_node_ips = remote_nodes.into_iter().filter(|a| !self.node_addresses.contains(a)).collect();
        let compiled = sluice_policy::compile(&policies, &view);
        let compile_micros = started.elapsed().as_micros() as u64;

        // The proxy learns new grants before connections they cover reach it, and loses old
        // ones only after the maps stop sending such connections.
        let mut proxy = lock(&self.proxy_rules);
        if let Some(writer) = proxy.as_mut() {
            let path = writer.path().to_owned();
            if let Some(generation) = writer.write_union(&compiled, &view).map_err(|source| PolicyError::ProxyRules { path, source })? {
                if !writer.wait_loaded(generation, PROXY_ACK_TIMEOUT) {
                    tracing::warn!(
                        "the layer-7 proxy has not loaded rules generation {generation} within {PROXY_ACK_TIMEOUT:?}: is it running? \
                         Connections its rules cover are dropped until it is"
                    );
                }
            }
        }
        let mut guard = lock(&self.programmer);
        if guard.is_none() {
            *guard = Some(PolicyProgrammer::adopt(datapath, self.proxy_port)?);
        }
        let Some(programmer) = guard.as_mut() else { return Ok(PolicyReport::default()) };
        let report = programmer.program(datapath, &compiled, local)?;
        if let Some(writer) = proxy.as_mut() {
            writer.write(&compiled, &view).map_err(|source| PolicyError::ProxyRules { path: writer.path().to_owned(), source })?;
        }
        drop(proxy);
        let mut stats = lock(&self.stats);
        stats.policies = policies.len();
        stats.entries = programmer.entry_count();
        stats.last_compile_micros = compile_micros;
        stats.last_program_micros = started.elapsed().as_micros() as u64;
        drop(stats);
        *lock(&self.snapshot) = Arc::new(PolicySnapshot { policies, view, compiled });
        Ok(report)
    }

    /// Holds an identity for every wanted owner (acquiring only what is new or changed) and
    /// releases the rest; returns owner -> identity.
    fn hold(
        &self,
        identities: &Identities,
        wanted: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, u32>, PolicyError> {
        let mut held = lock(&self.held);
        let gone: Vec<String> = held.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for owner in gone {
            identities.release(&owner)?;
            held.remove(&owner);
        }
        let mut out = BTreeMap::new();
        for (owner, labels) in wanted {
            let id = match held.get(owner) {
                Some((l, id)) if l == labels => *id,
                _ => {
                    let id = identities.acquire(labels, owner)?;
                    held.insert(owner.clone(), (labels.clone(), id));
                    id
                }
            };
            out.insert(owner.clone(), id);
        }
        Ok(out)
    }

    /// Removes policy conntrack entries idle past their timeout (the service timeouts).
    pub fn collect_conntrack(
        &self,
        datapath: &mut dyn PolicyTables,
        tcp: u64,
        closing: u64,
        other: u64,
    ) -> Result<usize, sluice_datapath::DatapathError> {
        let now = crate::services::sync::monotonic_ns();
        let secs = |s: u64| s.saturating_mul(1_000_000_000);
        let mut removed = 0;
        for (key, entry) in datapath.policy_conntrack()? {
            let timeout = if key.proto == 6 {
                if entry.flags & sluice_abi::SLUICE_PCT_F_CLOSING as u8 != 0 {
                    secs(closing)
                } else {
                    secs(tcp)
                }
            } else {
                secs(other)
            };
            if now.saturating_sub(entry.last_seen_ns) > timeout {
                datapath.remove_policy_conntrack(&key)?;
                removed += 1;
            }
        }
        lock(&self.stats).conntrack_collected += removed as u64;
        Ok(removed)
    }
}

/// `NetworkPolicy x/web (ingress rule 0)`: how flows, status and `policy get` name a rule.
pub fn rule_text(r: &sluice_policy::RuleRef) -> String {
    format!("{} ({} rule {})", r.policy, if r.ingress { "ingress" } else { "egress" }, r.index)
}

/// The rules behind an entry, each once, in order.
pub(crate) fn describe(rules: &[sluice_policy::RuleRef]) -> String {
    let names: BTreeSet<String> = rules.iter().map(rule_text).collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// Every stored policy, lowered to the engine's form. Stored objects passed validation when
/// applied; one that still cannot be lowered is left out and logged.
/// Whether two snapshots agree on everything a policy round reads: pods, namespaces and the
/// policy kinds. Snapshots share structure, so this costs what differs.
fn same_policy_inputs(a: &sluice_state::Store, b: &sluice_state::Store) -> bool {
    a.pods == b.pods
        && a.namespaces == b.namespaces
        && a.network_policies == b.network_policies
        && a.sluice_policies == b.sluice_policies
        && a.clusterwide_policies == b.clusterwide_policies
}

fn lowered(store: &sluice_state::Store) -> Vec<Policy> {
    let mut out: Vec<Policy> = store.network_policies.values().map(sluice_policy::lower_network_policy).collect();
    for p in store.sluice_policies.values() {
        match sluice_policy::sluice::lower_namespaced(p) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!("SluiceNetworkPolicy left out: {e}"),
        }
    }
    for p in store.clusterwide_policies.values() {
        match sluice_policy::sluice::lower_clusterwide(p) {
            Ok(p) => out.push(p),
            Err(e) => tracing::warn!("SluiceClusterwideNetworkPolicy left out: {e}"),
        }
    }
    out
}

/// A pod's named container ports: name -> (IP protocol, port).
fn named_ports(pod: &k8s_openapi::api::core::v1::Pod) -> BTreeMap<String, (u8, u16)> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let Some(name) = &p.name else { continue };
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => sluice_policy::PROTO_UDP,
                "SCTP" => sluice_policy::PROTO_SCTP,
                _ => sluice_policy::PROTO_TCP,
            };
            if let Ok(port) = u16::try_from(p.container_port) {
                out.insert(name.clone(), (proto, port));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use sluice_datapath::fake::FakeDatapath;
    use sluice_state::{ClusterState, Store};

    use super::*;

    fn pod(name: &str, app: &str, ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus { pod_ips: Some(vec![PodIP { ip: ip.into() }]), ..Default::default() }),
        }
    }

    #[test]
    fn a_change_policy_does_not_read_runs_no_round_and_one_it_reads_does() {
        let dir = tempfile::tempdir().unwrap();
        let identities = Identities::new(Arc::new(crate::db::AgentDb::open(dir.path()).unwrap())).unwrap();
        let policies = Policies::new(vec!["192.0.2.10".parse().unwrap()]);
        let mut dp = FakeDatapath::default();
        let local = vec![LocalEndpoint { id: 1, pod: "default/web".into(), ips: vec!["198.19.0.2".parse().unwrap()] }];
        let mut store = Store::default();
        store.pods.insert(Store::key("default", "web"), pod("web", "web", "198.19.0.2"));
        let mut revision = 0;
        let mut sync = |store: &Store| {
            revision += 1;
            let state = ClusterState { revision, synced: true, objects: Arc::new(store.clone()) };
            policies.sync(&mut dp, &identities, &state, local.clone(), false).unwrap()
        };
        assert!(sync(&store).is_some(), "the first snapshot makes a round");
        store.services.insert(
            Store::key("default", "svc"),
            Service { metadata: ObjectMeta { name: Some("svc".into()), ..Default::default() }, ..Default::default() },
        );
        assert!(sync(&store).is_none(), "a Service changed: policy reads nothing of it, no round");
        store.pods.insert(Store::key("default", "db"), pod("db", "db", "198.19.1.2"));
        assert!(sync(&store).is_some(), "a pod appeared: a round");
    }
}
