//! The agent's core: the endpoint lifecycle behind the CNI calls (ADD, DEL, CHECK, GC), the
//! resync that heals the datapath, and the status it reports. Each CNI call is all or nothing:
//! a failure part way undoes what was done, so no address, interface or identity leaks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use sluice_api::{CniAddResult, CniAttachment, CniGcRequest, CniGcResult, CniInterface, CniIpConfig, CniRequest, CniRoute};
use sluice_datapath::plumb::{PlumbRequest, GATEWAY_V4, GATEWAY_V6};
use sluice_datapath::DatapathTables;
use sluice_state::StateSource;

use crate::config::AgentConfig;
use crate::endpoints::{record_key, EndpointRecord, EndpointStore};
use crate::error::AgentError;
use crate::identity::Identities;
use crate::ipam::{Ipam, Owner};
use crate::metrics::{Metrics, Snapshot};
use crate::events::Events;
use crate::observer::{Enrichment, Observer};
use crate::plumber::Plumber;
use crate::reconciler::{reconcile, ReconcileReport};

/// Host routing in force and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoutingDecision {
    pub mode: sluice_datapath::HostRouting,
    pub reason: String,
}

pub struct Agent {
    config: AgentConfig,
    ipam: Ipam,
    identities: Identities,
    endpoints: EndpointStore,
    /// Shared with blocking tasks: attaching a program waits for an RCU grace period, which
    /// ADD overlaps with configuring the interface.
    datapath: Arc<Mutex<Box<dyn DatapathTables>>>,
    plumber: Box<dyn Plumber>,
    state: Option<Arc<dyn StateSource>>,
    host_routing: HostRoutingDecision,
    netdevs: Vec<String>,
    started: Instant,
    observer: Arc<Observer>,
    events: Arc<Events>,
    metrics: Metrics,
    /// CNI calls are serialised: they are rare, and one at a time keeps rollback simple.
    cni_lock: tokio::sync::Mutex<()>,
    services: Option<Arc<crate::services::sync::Services>>,
    policies: Option<Arc<crate::policy::sync::Policies>>,
    /// Where socket LB is attached, or why it is not.
    socket_lb: String,
    xdp: Option<Arc<Mutex<sluice_datapath::XdpNetdev>>>,
    /// Cluster mode: the node's membership (etcd).
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Everything [`Agent::new`] needs.
pub struct AgentParts {
    pub config: AgentConfig,
    pub db: Arc<crate::db::AgentDb>,
    pub datapath: Box<dyn DatapathTables>,
    pub plumber: Box<dyn Plumber>,
    pub state: Option<Arc<dyn StateSource>>,
    pub host_routing: HostRoutingDecision,
    pub netdevs: Vec<String>,
    pub started: Instant,
    pub observer: Arc<Observer>,
    /// The service loop's state; `None` when this agent programs no services.
    pub services: Option<Arc<crate::services::sync::Services>>,
    /// The policy loop's state; `None` when this agent enforces no policy.
    pub policies: Option<Arc<crate::policy::sync::Policies>>,
    pub socket_lb: String,
    /// The XDP program on the node's devices, when configured.
    pub xdp: Option<Arc<Mutex<sluice_datapath::XdpNetdev>>>,
    pub events: Arc<Events>,
    /// Cluster mode: the node's membership; identities are numbered by the cluster.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The host-side interface name of an attachment: "lxc" and 11 hex digits of a hash of the
/// attachment, unique on the node and stable across retries.
pub fn host_ifname(owner: &Owner) -> String {
    let digest = Sha256::digest(record_key(owner).as_bytes());
    format!("lxc{}", &hex::encode(digest)[..11])
}

// === impl Agent ===

impl Agent {
    pub fn new(parts: AgentParts) -> Result<Self, AgentError> {
        let ipam = Ipam::new(parts.db.clone(), parts.config.ipv4_cidr(), parts.config.ipv6_cidr())?;
        let identities = match &parts.cluster {
            Some(c) => Identities::with_numbering(parts.db.clone(), Arc::new(crate::cluster::numbering::ClusterNumbering::new(c.store().clone(), tokio::runtime::Handle::current())))?,
            None => Identities::new(parts.db.clone())?,
        };
        let endpoints = EndpointStore::new(parts.db)?;
        Ok(Self {
            config: parts.config,
            ipam,
            identities,
            endpoints,
            datapath: Arc::new(Mutex::new(parts.datapath)),
            plumber: parts.plumber,
            state: parts.state,
            host_routing: parts.host_routing,
            netdevs: parts.netdevs,
            started: parts.started,
            observer: parts.observer,
            events: parts.events,
            metrics: Metrics::default(),
            cni_lock: tokio::sync::Mutex::new(()),
            services: parts.services,
            policies: parts.policies,
            socket_lb: parts.socket_lb,
            xdp: parts.xdp,
            cluster: parts.cluster,
        })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn with_datapath<T>(&self, f: impl FnOnce(&mut dyn DatapathTables) -> Result<T, sluice_datapath::DatapathError>) -> Result<T, AgentError> {
        with_tables(&self.datapath, f)
    }

    // --- CNI ---

    pub async fn cni_add(&self, req: CniRequest) -> Result<CniAddResult, AgentError> {
        let started = Instant::now();
        validate_attachment(&req, true)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        let mut undo = Undo::default();
        let result = match self.add_locked(&req, &owner, &mut undo).await {
            Ok(record) => {
                // The pod's policy is in place before ADD returns, so before its processes run.
                if let Err(e) = self.sync_policies_blocking(true) {
                    tracing::warn!(attachment = %record_key(&owner), "programming policy for the new endpoint: {e}");
                }
                Ok(add_result(&record))
            }
            Err(e) => {
                tracing::warn!(attachment = %record_key(&owner), "ADD failed, rolling back: {e}");
                self.roll_back(&owner, &undo).await;
                Err(e)
            }
        };
        self.refresh_enrichment();
        self.metrics.cni_add_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn add_locked(&self, req: &CniRequest, owner: &Owner, undo: &mut Undo) -> Result<EndpointRecord, AgentError> {
        let host_ifname = host_ifname(owner);
        undo.host_ifname = Some(host_ifname.clone());
        let previous = self.endpoints.get(owner)?;
        if let Some(old) = &previous {
            // ADD retried: rebuild the interface, keep the addresses and the endpoint number.
            undo.entry = Some(old.entry());
            self.with_datapath(|dp| {
                dp.detach_endpoint(&old.host_ifname)?;
                dp.remove_endpoint(&old.entry())
            })?;
            self.plumber.unplumb(&old.host_ifname).await?;
        }
        let t = Instant::now();
        let labels = self.label_set(req).await?;
        let alloc = self.ipam.allocate(owner)?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: labels and addresses");
        let plumb = PlumbRequest {
            netns: req.netns.clone().into(),
            ifname: req.ifname.clone(),
            host_ifname,
            ipv4: alloc.ipv4,
            ipv6: alloc.ipv6,
            mtu: req.mtu.unwrap_or(self.config.mtu),
        };
        let t = Instant::now();
        let plumbed = self.plumber.create_pair(&plumb).await?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: pair created");
        let id = match &previous {
            Some(old) => old.id,
            None => self.endpoints.next_id()?,
        };
        let mut record = EndpointRecord {
            id,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            ipv4: alloc.ipv4,
            ipv6: alloc.ipv6,
            mac: plumbed.pod_mac,
            host_ifname: plumb.host_ifname.clone(),
            host_ifindex: plumbed.host_ifindex,
            host_mac: plumbed.host_mac,
            identity: 0,
            labels,
            mtu: plumb.mtu,
        };
        // Identity, record and map entries first, so the program finds the endpoint from its
        // first packet; then the program is attached while the interface is configured (the
        // attach waits for an RCU grace period; doing both at once hides it).
        record.identity = self.identities.acquire(&record.labels, &record.key())?;
        self.endpoints.put(&record)?;
        let entry = record.entry();
        undo.entry = Some(entry.clone());
        self.with_datapath(|dp| dp.upsert_endpoint(&entry))?;
        let t = Instant::now();
        let tables = self.datapath.clone();
        let ifname = entry.host_ifname.clone();
        let attach = tokio::task::spawn_blocking(move || with_tables(&tables, |dp| dp.attach_endpoint(&ifname)));
        let configured = self.plumber.configure_pair(&plumb).await;
        let attached = attach.await.map_err(|source| AgentError::TaskFailed { task: "attaching from-pod", source })?;
        configured?;
        attached?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1000.0, "ADD: configured and attached");
        Ok(record)
    }

    /// Undoes a failed ADD completely, whatever step it reached: the attachment ends up with
    /// no record, interface, map entry, identity or address, as after DEL.
    async fn roll_back(&self, owner: &Owner, undo: &Undo) {
        let key = record_key(owner);
        if let Some(entry) = &undo.entry {
            if let Err(e) = self.with_datapath(|dp| {
                dp.detach_endpoint(&entry.host_ifname)?;
                dp.remove_endpoint(entry)
            }) {
                tracing::error!(attachment = %key, "rollback: removing datapath entries failed: {e}");
            }
        }
        if let Some(ifname) = &undo.host_ifname {
            if let Err(e) = self.with_datapath(|dp| dp.detach_endpoint(ifname)) {
                tracing::error!(attachment = %key, "rollback: detaching from {ifname} failed: {e}");
            }
            if let Err(e) = self.plumber.unplumb(ifname).await {
                tracing::error!(attachment = %key, "rollback: removing interface {ifname} failed: {e}");
            }
        }
        if let Err(e) = self.identities.release(&key) {
            tracing::error!(attachment = %key, "rollback: releasing identity failed: {e}");
        }
        if let Err(e) = self.endpoints.delete(owner) {
            tracing::error!(attachment = %key, "rollback: deleting record failed: {e}");
        }
        self.release_addresses(owner);
    }

    pub async fn cni_del(&self, req: CniRequest) -> Result<(), AgentError> {
        let started = Instant::now();
        let result = self.del(req).await;
        self.refresh_enrichment();
        self.metrics.cni_del_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn del(&self, req: CniRequest) -> Result<(), AgentError> {
        validate_attachment(&req, false)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        match self.endpoints.get(&owner)? {
            Some(record) => self.destroy(&record).await,
            None => {
                // Nothing recorded; make sure nothing is held either (idempotent DEL).
                self.identities.release(&record_key(&owner))?;
                self.ipam.release(&owner)?;
                Ok(())
            }
        }
    }

    pub async fn cni_check(&self, req: CniRequest) -> Result<(), AgentError> {
        validate_attachment(&req, true)?;
        let _one = self.cni_lock.lock().await;
        let owner = Owner::new(req.container_id.clone(), req.ifname.clone());
        let record = self.endpoints.get(&owner)?.ok_or_else(|| AgentError::UnknownAttachment(record_key(&owner)))?;
        let plumb = PlumbRequest {
            netns: req.netns.clone().into(),
            ifname: record.ifname.clone(),
            host_ifname: record.host_ifname.clone(),
            ipv4: record.ipv4,
            ipv6: record.ipv6,
            mtu: record.mtu,
        };
        self.plumber.check(&plumb).await.map_err(|reason| AgentError::CheckFailed { key: record.key(), reason })?;
        let programmed = self.with_datapath(|dp| dp.programmed_ifindexes())?;
        if !programmed.iter().any(|(i, info)| *i == record.host_ifindex && *info == record.entry().info()) {
            return Err(AgentError::CheckFailed { key: record.key(), reason: "datapath entry missing or stale".into() });
        }
        Ok(())
    }

    pub async fn cni_gc(&self, req: CniGcRequest) -> Result<CniGcResult, AgentError> {
        let _one = self.cni_lock.lock().await;
        let valid: BTreeSet<Owner> = req.valid_attachments.iter().map(|a| Owner::new(a.container_id.clone(), a.ifname.clone())).collect();
        let mut released = Vec::new();
        for record in self.endpoints.list()? {
            if !valid.contains(&record.owner()) {
                if let Err(e) = self.destroy(&record).await {
                    tracing::warn!(endpoint = record.id, "GC could not release the endpoint: {e}");
                    continue;
                }
                released.push(CniAttachment { container_id: record.container_id.clone(), ifname: record.ifname.clone() });
            }
        }
        for owner in self.ipam.release_all_except(&valid)? {
            let _ = self.identities.release(&record_key(&owner));
            released.push(CniAttachment { container_id: owner.container_id, ifname: owner.ifname });
        }
        self.identities.gc()?;
        Ok(CniGcResult { released })
    }

    /// Removes an endpoint: program and entries first (nothing forwards to it any more), then
    /// the interface, and the address last so it cannot be handed out while still in use.
    async fn destroy(&self, record: &EndpointRecord) -> Result<(), AgentError> {
        let entry = record.entry();
        self.with_datapath(|dp| {
            dp.detach_endpoint(&entry.host_ifname)?;
            dp.remove_endpoint(&entry)
        })?;
        self.plumber.unplumb(&record.host_ifname).await?;
        self.identities.release(&record.key())?;
        self.endpoints.delete(&record.owner())?;
        self.ipam.release(&record.owner())?;
        Ok(())
    }

    fn release_addresses(&self, owner: &Owner) {
        if let Err(e) = self.ipam.release(owner) {
            tracing::error!(attachment = %record_key(owner), "releasing addresses failed: {e}");
        }
    }

    /// The pod's label set from the cluster view. A pod not in the view is waited for (the
    /// runtime may have been told of it before this agent); in cluster mode it then fails with
    /// "try again later", on one machine it gets the labels of its namespace alone.
    async fn label_set(&self, req: &CniRequest) -> Result<BTreeMap<String, String>, AgentError> {
        let (Some(ns), Some(name)) = (&req.pod_namespace, &req.pod_name) else { return Ok(BTreeMap::new()) };
        let Some(state) = &self.state else {
            return Ok(sluice_model::LabelSet::for_pod(&BTreeMap::new(), ns, &sluice_model::labels::namespace_labels(ns, None)).as_map().clone());
        };
        let mut rx = state.subscribe();
        let cluster = self.config.state.is_cluster();
        let waited = if cluster { std::time::Duration::from_secs(self.config.state.pod_wait_seconds) } else { std::time::Duration::from_millis(200) };
        let key = sluice_state::Store::pod_key(ns, name);
        if let Some(snapshot) = sluice_state::wait_for(&mut rx, waited, |s| s.synced && s.pods.contains_key(&key)).await {
            if let Some(set) = snapshot.pod_label_set(ns, name) {
                return Ok(set.as_map().clone());
            }
        }
        if cluster {
            let health = state.health();
            return Err(AgentError::PodUnknown { namespace: ns.clone(), name: name.clone(), waited, source_kind: health.kind, connected: health.connected });
        }
        let snapshot = state.snapshot();
        let ns_labels = sluice_model::labels::namespace_labels(ns, snapshot.namespaces.get(ns).and_then(|n| n.metadata.labels.as_ref()));
        Ok(sluice_model::LabelSet::for_pod(&BTreeMap::new(), ns, &ns_labels).as_map().clone())
    }

    /// The newest cluster snapshot; an empty unsynced one when the agent has no source. In
    /// cluster mode pods without a status carry the addresses their nodes published.
    pub fn cluster_snapshot(&self) -> sluice_state::ClusterState {
        let snapshot = self.state.as_ref().map(|s| s.snapshot()).unwrap_or_default();
        if self.cluster.is_some() {
            return crate::cluster::view::with_published_endpoints(snapshot);
        }
        snapshot
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Cluster mode, one round: publishes this node's endpoints, holds the identities it uses,
    /// routes the other nodes' pod CIDRs. Level-triggered: each step compares what is with what
    /// should be, so a missed change heals on the next round.
    pub async fn sync_cluster(&self) -> Result<(), AgentError> {
        let Some(cluster) = &self.cluster else { return Ok(()) };
        let mut endpoints = BTreeMap::new();
        for e in self.endpoints.list()? {
            let (Some(namespace), Some(name)) = (e.pod_namespace.clone(), e.pod_name.clone()) else { continue };
            let ips: Vec<IpAddr> = e.ipv4.map(IpAddr::from).into_iter().chain(e.ipv6.map(IpAddr::from)).collect();
            let record = sluice_state::EndpointRecord { namespace: namespace.clone(), name: name.clone(), node: self.config.node_name.clone(), ips, identity: e.identity };
            endpoints.insert(sluice_state::Store::key(&namespace, &name), record);
        }
        cluster.publish_endpoints(endpoints).await?;
        let held: BTreeSet<u32> = self.identities.list()?.into_iter().filter(|i| i.references > 0).map(|i| i.id).collect();
        cluster.hold_identities(held).await?;
        let snapshot = self.cluster_snapshot();
        if snapshot.synced {
            let nl = sluice_datapath::netlink::Netlink::current()?;
            let mut networks = Vec::new();
            for dev in &self.netdevs {
                let link = nl.link(dev).await?;
                networks.extend(nl.networks(link.index).await?.into_iter().map(|n| (n, link.index)));
            }
            let desired = crate::cluster::routes::desired_routes(&self.config.node_name, snapshot.nodes.values(), &networks);
            let report = crate::cluster::routes::reconcile(&desired).await?;
            for r in &report.added {
                tracing::info!(destination = %r.destination, via = %r.gateway, "route to a node's pods added");
            }
            for r in &report.removed {
                tracing::info!(destination = %r.destination, via = %r.gateway, "route to a vanished node's pods withdrawn");
            }
        }
        cluster.set_health("ready", self.host_routing.mode.as_str()).await?;
        Ok(())
    }

    // --- resync ---

    /// Heals the datapath from the records: endpoints whose interface vanished are released,
    /// addresses no record holds are freed, and the maps and attachments are reconciled.
    pub async fn resync(&self, reattach_all: bool) -> Result<ReconcileReport, AgentError> {
        let started = Instant::now();
        let result = self.resync_locked(reattach_all).await;
        self.refresh_enrichment();
        self.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.inc();
        }
        result
    }

    async fn resync_locked(&self, reattach_all: bool) -> Result<ReconcileReport, AgentError> {
        let _one = self.cni_lock.lock().await;
        let started = Instant::now();
        let mut desired = Vec::new();
        for mut record in self.endpoints.list()? {
            match self.plumber.host_ifindex(&record.host_ifname).await? {
                None => {
                    tracing::info!(endpoint = record.id, "interface {} is gone, releasing the endpoint", record.host_ifname);
                    if let Err(e) = self.destroy(&record).await {
                        tracing::warn!(endpoint = record.id, "releasing the endpoint failed, will retry: {e}");
                    }
                    continue;
                }
                Some(index) if index != record.host_ifindex => {
                    record.host_ifindex = index;
                    self.endpoints.put(&record)?;
                }
                Some(_) => {}
            }
            desired.push(record);
        }
        let held: BTreeSet<Owner> = desired.iter().map(|r| r.owner()).collect();
        for leaked in self.ipam.release_all_except(&held)? {
            tracing::info!(attachment = %record_key(&leaked), "released addresses no endpoint holds");
        }
        let checked = started.elapsed();
        let entries: Vec<_> = desired.iter().map(|r| r.entry()).collect();
        let report = self.with_datapath(|dp| reconcile(&entries, dp, reattach_all))?;
        tracing::debug!(
            checked_ms = checked.as_secs_f64() * 1000.0,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            endpoints = entries.len(),
            "resync"
        );
        if report.changed() {
            tracing::info!(?report, "datapath reconciled");
        }
        Ok(report)
    }

    // --- observability ---

    /// Tells the observer the names of the node's endpoints.
    fn refresh_enrichment(&self) {
        let Ok(records) = self.endpoints.list() else { return };
        let mut e = Enrichment::default();
        for r in &records {
            let (ns, pod) = (r.pod_namespace.as_deref().unwrap_or(""), r.pod_name.as_deref().unwrap_or(&r.container_id));
            for ip in [r.ipv4.map(IpAddr::from), r.ipv6.map(IpAddr::from)].into_iter().flatten() {
                e.insert(ip, r.host_ifindex, ns, pod, r.identity);
            }
        }
        if let Some(p) = &self.policies {
            e.set_policy_rules(p.rule_names());
        }
        self.observer.set_enrichment(e);
    }

    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The host firewall audit, now, in the agent's namespace (`sluice preflight`).
    pub fn preflight(&self) -> serde_json::Value {
        let ctx = crate::firewall::AuditContext { pod_cidrs: self.config.pod_cidrs.clone(), devices: self.config.devices.clone() };
        let audit = crate::firewall::audit(&ctx, None);
        serde_json::json!({
            "node": self.config.node_name,
            "hostRouting": self.host_routing.mode.as_str(),
            "report": audit.report,
            "table": audit.report.render_table(false),
            "sourcesRead": audit.sources_read,
            "problems": audit.problems.iter().map(|p| serde_json::json!({"source": p.source, "problem": p.problem})).collect::<Vec<_>>(),
        })
    }

    /// Datapath losses by reason, named as the API names them.
    fn datapath_losses(&self) -> Result<Vec<sluice_api::LostEvents>, AgentError> {
        let losses = self.with_datapath(|dp| dp.event_losses())?;
        Ok(sluice_abi::EVENT_LOSSES
            .iter()
            .map(|l| sluice_api::LostEvents {
                count: losses.get(*l as usize).copied().unwrap_or(0),
                reason: sluice_abi::event_loss_name(*l).into(),
            })
            .collect())
    }

    pub fn flows(&self, filter: &sluice_api::FlowFilter) -> Result<sluice_api::FlowsResponse, AgentError> {
        Ok(sluice_api::FlowsResponse { flows: self.observer.recent(filter), lost: self.datapath_losses()? })
    }

    pub fn metrics_text(&self) -> Result<String, AgentError> {
        let (drops, fwd, maps) = self.with_datapath(|dp| Ok((dp.drop_counters()?, dp.forward_counters()?, dp.map_pressure())))?;
        let directions = ["from-pod", "from-netdev", "to-pod"];
        let reasons = sluice_abi::sluice_drop_reason::SLUICE_DROP_REASON_MAX as usize;
        let kinds = sluice_abi::sluice_forward_kind::SLUICE_FWD_KIND_MAX as usize;
        let mut snapshot = Snapshot::default();
        for (p, direction) in directions.iter().enumerate() {
            for r in sluice_abi::DROP_REASONS {
                let c = drops.get(p * reasons + r as usize).copied().unwrap_or_default();
                snapshot.drops.push((sluice_abi::drop_reason_name(r).into(), (*direction).into(), c.packets, c.bytes));
            }
            for k in sluice_abi::FORWARD_KINDS {
                let c = fwd.get(p * kinds + k as usize).copied().unwrap_or_default();
                snapshot.forwarded.push((sluice_abi::forward_kind_name(k).into(), (*direction).into(), c.packets, c.bytes));
            }
        }
        snapshot.maps = maps.into_iter().map(|m| (m.map.to_owned(), m.entries as u64, m.capacity as u64)).collect();
        snapshot.events_lost = self.datapath_losses()?.into_iter().map(|l| (l.reason, l.count)).collect();
        snapshot.flows_observed = self.observer.decoded();
        let records = self.endpoints.list()?;
        snapshot.endpoints = records.len() as u64;
        snapshot.identities = records.iter().map(|r| r.identity).collect::<BTreeSet<_>>().len() as u64;
        crate::metrics::render(&self.metrics, snapshot).map_err(|_| AgentError::InvalidRequest { code: 999, message: "metrics could not be encoded".into() })
    }

    // --- status ---

    pub fn endpoints(&self) -> Result<Vec<sluice_api::Endpoint>, AgentError> {
        Ok(self.endpoints.list()?.iter().map(EndpointRecord::to_api).collect())
    }

    pub fn status(&self) -> Result<sluice_api::Status, AgentError> {
        let endpoint_count = self.endpoints.list()?.len();
        let (attached, counters, fwd) = self.with_datapath(|dp| Ok((dp.attached_endpoints()?, dp.drop_counters()?, dp.forward_counters()?)))?;
        let mut programs = vec![sluice_api::AttachedProgram {
            program: "from_pod".into(),
            interface: "pod veths (host side)".into(),
            attach: "tcx/ingress".into(),
            count: attached.len(),
        }];
        for dev in &self.netdevs {
            programs.push(sluice_api::AttachedProgram { program: "from_netdev".into(), interface: dev.clone(), attach: "tcx/ingress".into(), count: 1 });
        }
        let mut xdp_counts = Vec::new();
        if let Some(x) = &self.xdp {
            let x = x.lock().unwrap_or_else(|p| p.into_inner());
            for (dev, mode) in x.attachments() {
                programs.push(sluice_api::AttachedProgram { program: "xdp_netdev".into(), interface: dev, attach: format!("xdp/{}", mode.as_str()), count: 1 });
            }
            xdp_counts = x.counters()?;
        }
        // Totals over both observation points.
        let total = |v: &[sluice_datapath::CounterValue], stride: usize, i: usize| {
            let mut t = sluice_datapath::CounterValue::default();
            for p in 0..sluice_abi::sluice_obs_point::SLUICE_POINT_MAX as usize {
                let c = v.get(p * stride + i).copied().unwrap_or_default();
                t.packets += c.packets;
                t.bytes += c.bytes;
            }
            t
        };
        let reasons = sluice_abi::sluice_drop_reason::SLUICE_DROP_REASON_MAX as usize;
        let kinds = sluice_abi::sluice_forward_kind::SLUICE_FWD_KIND_MAX as usize;
        let drops = sluice_abi::DROP_REASONS
            .iter()
            .map(|r| {
                let c = total(&counters, reasons, *r as usize);
                sluice_api::DropCount { reason: sluice_abi::drop_reason_name(*r).into(), packets: c.packets, bytes: c.bytes }
            })
            .collect();
        let mut drops: Vec<sluice_api::DropCount> = drops;
        let mut forwards: Vec<sluice_api::DropCount> = sluice_abi::FORWARD_KINDS
            .iter()
            .map(|k| {
                let c = total(&fwd, kinds, *k as usize);
                sluice_api::DropCount { reason: sluice_abi::forward_kind_name(*k).into(), packets: c.packets, bytes: c.bytes }
            })
            .collect();
        if let Some(c) = xdp_counts.get(sluice_abi::sluice_xdp_counter::SLUICE_XDP_FORWARDED as usize) {
            forwards.push(sluice_api::DropCount { reason: "xdp forward".into(), packets: c.packets, bytes: c.bytes });
        }
        if let Some(c) = xdp_counts.get(sluice_abi::sluice_xdp_counter::SLUICE_XDP_DROPPED_NO_FRONTEND as usize) {
            drops.push(sluice_api::DropCount { reason: "xdp: NodePort without frontend".into(), packets: c.packets, bytes: c.bytes });
        }
        Ok(sluice_api::Status {
            node_name: self.config.node_name.clone(),
            healthy: true,
            version: env!("CARGO_PKG_VERSION").into(),
            host_routing: sluice_api::HostRoutingStatus {
                mode: self.host_routing.mode.as_str().into(),
                requested: self.config.host_routing.as_str().into(),
                reason: self.host_routing.reason.clone(),
            },
            endpoint_count,
            pod_cidrs: self.config.pod_cidrs.clone(),
            programs,
            drops,
            forwards,
            uptime_seconds: self.started.elapsed().as_secs(),
            maps: self.with_datapath(|dp| Ok(dp.map_pressure()))?
                .into_iter()
                .map(|m| sluice_api::MapUsage { map: m.map.into(), entries: m.entries, capacity: m.capacity })
                .collect(),
            services: self.services.as_ref().map(|s| {
                let st = s.stats();
                sluice_api::ServicesStatus {
                    socket_lb: self.socket_lb.clone(),
                    frontends: st.frontends,
                    last_program_micros: st.last_program_micros,
                    last_error: st.last_error,
                    conntrack_collected: st.conntrack_collected,
                    sockets_destroyed: st.sockets_destroyed,
                    store_generation: st.store_generation,
                }
            }),
        })
    }

    /// One round of the service loop: programs services when the store changed (or `force`),
    /// then closes established connections to backends that are gone, in every pod's network
    /// namespace and the node's.
    pub async fn sync_services(self: &Arc<Self>, force: bool) -> Result<Option<crate::services::program::ProgramReport>, AgentError> {
        let Some(services) = self.services.clone() else { return Ok(None) };
        let agent = self.clone();
        let snapshot = self.cluster_snapshot();
        let report = tokio::task::spawn_blocking(move || {
            let mut guard = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
            services.sync(guard.as_mut(), &snapshot, force)
        })
        .await
        .map_err(|source| AgentError::TaskFailed { task: "service sync", source })??;
        if let Some(r) = &report {
            if !r.backends_removed.is_empty() {
                let mut netns: Vec<Option<std::path::PathBuf>> = vec![None];
                netns.extend(self.endpoints.list()?.into_iter().map(|e| Some(std::path::PathBuf::from(e.netns))));
                let removed = r.backends_removed.clone();
                let services = self.services.clone();
                let closed = tokio::task::spawn_blocking(move || services.map(|s| s.close_connections(&removed, &netns)).unwrap_or(0))
                    .await
                    .unwrap_or(0);
                tracing::info!(backends = r.backends_removed.len(), closed, "backends removed; their established connections closed");
            }
        }
        Ok(report)
    }

    /// Removes expired service and policy conntrack entries.
    pub fn collect_conntrack(&self) -> Result<usize, AgentError> {
        let Some(services) = &self.services else { return Ok(0) };
        let mut guard = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = services.collect_conntrack(guard.as_mut())?;
        if let Some(policies) = &self.policies {
            let c = &self.config.services;
            n += policies.collect_conntrack(guard.as_mut(), c.conntrack_tcp_timeout, c.conntrack_tcp_closing_timeout, c.conntrack_other_timeout)?;
        }
        Ok(n)
    }

    /// One round of the policy loop: compiles and programs this node's policy tables when the
    /// store or the local endpoints changed (or `force`).
    pub async fn sync_policies(self: &Arc<Self>, force: bool) -> Result<Option<crate::policy::program::PolicyReport>, AgentError> {
        let agent = self.clone();
        tokio::task::spawn_blocking(move || agent.sync_policies_blocking(force))
            .await
            .map_err(|source| AgentError::TaskFailed { task: "policy sync", source })?
    }

    fn sync_policies_blocking(&self, force: bool) -> Result<Option<crate::policy::program::PolicyReport>, AgentError> {
        let Some(policies) = self.policies.clone() else { return Ok(None) };
        let local: Vec<crate::policy::program::LocalEndpoint> = self
            .endpoints
            .list()?
            .into_iter()
            .filter_map(|e| {
                let ips = e.ipv4.map(std::net::IpAddr::from).into_iter().chain(e.ipv6.map(std::net::IpAddr::from)).collect();
                Some(crate::policy::program::LocalEndpoint { id: e.id, pod: format!("{}/{}", e.pod_namespace?, e.pod_name?), ips })
            })
            .collect();
        let report = {
            let mut guard = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            policies.sync(guard.as_mut(), &self.identities, &self.cluster_snapshot(), local, force).map_err(|e| AgentError::Policy(e.to_string()))?
        };
        if report.as_ref().is_some_and(|r| r.entries_written > 0) {
            self.refresh_enrichment();
        }
        Ok(report)
    }

    /// The policy loop's last inputs and tables.
    pub fn policy_snapshot(&self) -> Option<Arc<crate::policy::sync::PolicySnapshot>> {
        self.policies.as_ref().map(|p| p.snapshot())
    }

    /// Names the policies behind a flow's rule cookie.
    pub fn describe_policy_rule(&self, cookie: u32) -> Option<String> {
        self.policies.as_ref()?.describe_rule(cookie)
    }

    /// The frontends as programmed, for `sluice service list`.
    pub fn service_list(&self) -> Vec<sluice_api::ServiceFrontend> {
        use crate::services::desired::Scope;
        let Some(services) = &self.services else { return Vec::new() };
        services
            .list()
            .into_iter()
            .map(|f| {
                let flag = |bit: u32| f.flags & bit as u16 != 0;
                let kind = if flag(sluice_abi::SLUICE_LB_F_NODEPORT) {
                    "NodePort"
                } else if flag(sluice_abi::SLUICE_LB_F_EXTERNAL) {
                    "ExternalIP"
                } else {
                    "ClusterIP"
                };
                let mut flags = Vec::new();
                for (bit, name) in [(sluice_abi::SLUICE_LB_F_LOCAL_ONLY, "local-only"), (sluice_abi::SLUICE_LB_F_AFFINITY, "affinity"), (sluice_abi::SLUICE_LB_F_MAGLEV, "maglev")] {
                    if flag(bit) {
                        flags.push(name.to_string());
                    }
                }
                let mut backends: Vec<sluice_api::ServiceBackend> = f
                    .backends
                    .iter()
                    .map(|((addr, port, _), local)| sluice_api::ServiceBackend { address: *addr, port: *port, state: "active".into(), local: *local })
                    .collect();
                backends.extend(f.terminating.iter().map(|(addr, port, _)| sluice_api::ServiceBackend { address: *addr, port: *port, state: "terminating".into(), local: false }));
                sluice_api::ServiceFrontend {
                    service: f.service.as_ref().map(|s| format!("{}/{}", s.namespace, s.service)),
                    port_name: f.service.as_ref().map(|s| s.port_name.clone()).filter(|n| !n.is_empty()),
                    address: f.key.addr,
                    port: f.key.port,
                    protocol: f.key.protocol.as_str().into(),
                    kind: kind.into(),
                    scope: match f.key.scope {
                        Scope::External => "external".into(),
                        Scope::Internal => "internal".into(),
                    },
                    flags,
                    backends,
                }
            })
            .collect()
    }
}

fn with_tables<T>(
    tables: &Mutex<Box<dyn DatapathTables>>,
    f: impl FnOnce(&mut dyn DatapathTables) -> Result<T, sluice_datapath::DatapathError>,
) -> Result<T, AgentError> {
    let mut guard = tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(f(guard.as_mut())?)
}

/// What a failed ADD must undo.
#[derive(Default)]
struct Undo {
    host_ifname: Option<String>,
    entry: Option<sluice_datapath::EndpointEntry>,
}

/// The CNI specification's rules for container IDs and interface names, checked again here
/// because the API is not only for the plugin.
fn validate_attachment(req: &CniRequest, need_netns: bool) -> Result<(), AgentError> {
    let bad = |code, message: String| Err(AgentError::InvalidRequest { code, message });
    let cid = &req.container_id;
    if cid.is_empty() || !cid.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) || !cid.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return bad(4, format!("invalid container ID {cid:?}"));
    }
    let ifname = &req.ifname;
    if ifname.is_empty() || ifname.len() > 15 || ifname == "." || ifname == ".." || ifname.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return bad(4, format!("invalid interface name {ifname:?}"));
    }
    if let Some(mtu) = req.mtu {
        if !(1280..=65535).contains(&mtu) {
            return bad(7, format!("MTU {mtu} is outside 1280..=65535 (IPv6 needs at least 1280)"));
        }
    }
    if need_netns {
        if req.netns.is_empty() {
            return bad(4, "CNI_NETNS is required".into());
        }
        if !Path::new(&req.netns).exists() {
            return bad(4, format!("network namespace {} does not exist", req.netns));
        }
    }
    Ok(())
}

fn add_result(record: &EndpointRecord) -> CniAddResult {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(v4) = record.ipv4 {
        ips.push(CniIpConfig { address: IpNet::from(IpAddr::V4(v4)), gateway: IpAddr::V4(GATEWAY_V4), interface: 1 });
        routes.push(CniRoute { dst: IpNet::V4(ipnet::Ipv4Net::default()), gw: IpAddr::V4(GATEWAY_V4) });
    }
    if let Some(v6) = record.ipv6 {
        ips.push(CniIpConfig { address: IpNet::from(IpAddr::V6(v6)), gateway: IpAddr::V6(GATEWAY_V6), interface: 1 });
        routes.push(CniRoute { dst: IpNet::V6(ipnet::Ipv6Net::default()), gw: IpAddr::V6(GATEWAY_V6) });
    }
    CniAddResult {
        interfaces: vec![
            CniInterface { name: record.host_ifname.clone(), mac: record.host_mac.to_string(), mtu: record.mtu, sandbox: None },
            CniInterface { name: record.ifname.clone(), mac: record.mac.to_string(), mtu: record.mtu, sandbox: Some(record.netns.clone()) },
        ],
        ips,
        routes,
    }
}
