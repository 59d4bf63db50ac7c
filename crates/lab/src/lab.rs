//! A lab and what a user does with it: up, apply, get, exec, delete, down. Mutating operations
//! hold the lab's lock, so two commands never interleave their changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodCondition, PodIP, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use nix::fcntl::{Flock, FlockArg};
use sluice_model::policy::{SluiceClusterwideNetworkPolicy, SluiceNetworkPolicy};
use sluice_model::{Allocator, Object, ServiceRanges};
use sluice_state::{Datastore, LocalStore, ObjectMapExt, Store, StoreError};

use crate::names::{validate_lab_name, LabNames};
use crate::runtime::{self, Binaries, PodSpec};
use crate::state::{LabState, NodeState};
use crate::{agents, cgroup, topology, LabError};

/// How long a pod's deletion waits for the agents to stop choosing it (a stopped agent would
/// otherwise hold every deletion up).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What `sluice up` asks for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    /// `auto`, `bpf`, `bpf-force` or `legacy`, passed to every agent.
    pub host_routing: String,
    /// `off`, `detect` or `enforce`: the agents' firewall guard.
    pub guard: String,
    /// `off`, `medium` or `all`: the agents' monitor aggregation.
    pub monitor: String,
    /// The `sluice` binary (agents and shims run it); `sluice-cni` must be beside it.
    pub sluice: PathBuf,
    pub agent_timeout: Duration,
    /// Where services get cluster IPs and node ports; must not overlap the lab's networks.
    pub service_ranges: ServiceRanges,
    /// `off`, `auto`, `native` or `generic`: XDP on each node's uplink.
    pub xdp: String,
    /// `local` (a store file, no server) or `etcd` (an etcd server for the lab; the agents
    /// take their pod CIDRs from cluster pools and route between nodes themselves).
    pub datastore: String,
    /// `slices` or `per-pod`: how the agents publish endpoints on etcd (`state.endpoints`).
    pub endpoints: String,
}

impl UpOptions {
    pub fn new(name: &str, sluice: PathBuf) -> Self {
        Self {
            name: name.into(),
            nodes: 1,
            host_routing: "auto".into(),
            guard: "detect".into(),
            monitor: "medium".into(),
            sluice,
            agent_timeout: Duration::from_secs(20),
            service_ranges: ServiceRanges::default(),
            xdp: "off".into(),
            datastore: "local".into(),
            endpoints: "slices".into(),
        }
    }
}

/// One line of `apply`'s report: `pod/web created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedObject {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub action: &'static str,
}

impl std::fmt::Display for AppliedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{} {} (namespace {ns})", self.kind.to_lowercase(), self.name, self.action),
            None => write!(f, "{}/{} {}", self.kind.to_lowercase(), self.name, self.action),
        }
    }
}

pub struct Lab {
    names: LabNames,
    state: LabState,
    store: Datastore,
    bins: Binaries,
    _lock: Option<Flock<File>>,
}

// === impl Lab ===

impl Lab {
    /// Opens a running lab for reading.
    pub fn open(name: &str, sluice: PathBuf) -> Result<Self, LabError> {
        validate_lab_name(name).map_err(LabError::Invalid)?;
        let names = LabNames::new(name);
        let state = LabState::load(&names.dir())?.ok_or_else(|| LabError::NotUp(name.into()))?;
        let store = state.datastore(&names);
        Ok(Self { bins: binaries(sluice), names, state, store, _lock: None })
    }

    /// Opens a running lab for changes, waiting for the lab's lock.
    pub fn open_locked(name: &str, sluice: PathBuf) -> Result<Self, LabError> {
        validate_lab_name(name).map_err(LabError::Invalid)?;
        let names = LabNames::new(name);
        let lock = lock(&names.dir())?;
        let mut lab = Self::open(name, sluice)?;
        lab._lock = Some(lock);
        Ok(lab)
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn store(&self) -> &Datastore {
        &self.store
    }

    pub fn names(&self) -> &LabNames {
        &self.names
    }

    /// Builds a lab: bridge, nodes, agents; waits for every agent to be ready. A failure part
    /// way removes what was made.
    pub async fn up(opts: UpOptions, progress: &mut dyn FnMut(&str)) -> Result<Self, LabError> {
        validate_lab_name(&opts.name).map_err(LabError::Invalid)?;
        if !(1..=8).contains(&opts.nodes) {
            return Err(LabError::Invalid(format!("--nodes {} is outside 1..=8", opts.nodes)));
        }
        if !["auto", "bpf", "bpf-force", "legacy"].contains(&opts.host_routing.as_str()) {
            return Err(LabError::Invalid(format!("host routing {:?} is not one of auto, bpf, bpf-force, legacy", opts.host_routing)));
        }
        if !["off", "detect", "enforce"].contains(&opts.guard.as_str()) {
            return Err(LabError::Invalid(format!("guard {:?} is not one of off, detect, enforce", opts.guard)));
        }
        if !["off", "medium", "all"].contains(&opts.monitor.as_str()) {
            return Err(LabError::Invalid(format!("monitor {:?} is not one of off, medium, all", opts.monitor)));
        }
        check_service_ranges(&opts.service_ranges)?;
        let names = LabNames::new(&opts.name);
        let dir = names.dir();
        let lock = lock(&dir)?;
        if LabState::load(&dir)?.is_some() {
            return Err(LabError::AlreadyUp(opts.name.clone()));
        }
        let mut lab = Self {
            bins: binaries(opts.sluice.clone()),
            store: Datastore::Local(LocalStore::new(dir.join("store.json"))),
            state: LabState {
                name: opts.name.clone(),
                host_routing: opts.host_routing.clone(),
                service_cidrs: opts.service_ranges.cidrs.clone(),
                node_port_range: format!("{}-{}", opts.service_ranges.node_ports.start(), opts.service_ranges.node_ports.end()),
                ..Default::default()
            },
            names,
            _lock: Some(lock),
        };
        if !lab.bins.cni_plugin.exists() {
            return Err(LabError::Invalid(format!("CNI plugin not found at {}", lab.bins.cni_plugin.display())));
        }
        lab.save()?;
        match lab.build(&opts, progress).await {
            Ok(()) => Ok(lab),
            Err(e) => {
                progress("start failed; removing what was made");
                let _ = lab.teardown(&mut |_| {}).await;
                Err(e)
            }
        }
    }

    async fn build(&mut self, opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let cg = cgroup::lab_cgroup(&cgroup::cgroup2_root()?, &self.state.name);
        cgroup::create(&cg)?;
        self.state.cgroup = Some(cg.clone());
        self.state.bridge = Some(topology::create_bridge(&self.names).await?);
        self.save()?;
        progress(&format!("underlay bridge {} up", self.names.bridge()));
        let etcd = opts.datastore == "etcd";
        if etcd {
            let nodes: Vec<String> = (0..opts.nodes).map(LabNames::node_name).collect();
            // Recorded before it starts, so `down` removes the host even when etcd fails.
            self.state.etcd = Some(crate::state::EtcdState {
                netns: self.names.control_plane_netns(),
                pid: None,
                client: crate::etcd::agent_etcd_config(&self.names.dir(), "cli"),
            });
            self.save()?;
            let started = crate::etcd::start(&self.names, &nodes, &cg, opts.agent_timeout).await;
            if let Ok(state) = &started {
                self.state.etcd = Some(state.clone());
            }
            self.save()?;
            started?;
            self.store = self.state.datastore(&self.names);
            progress(&format!(
                "etcd up on the control-plane host {} (TLS, one client certificate per agent)",
                crate::names::CONTROL_PLANE_IPV4
            ));
        }
        for index in 0..opts.nodes {
            let name = LabNames::node_name(index);
            let dir = self.names.node_dir(&name);
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
            let node = NodeState {
                index,
                netns: self.names.node_netns(&name),
                uplink_root_side: self.names.uplink_root_side(index),
                socket: dir.join("agent.sock"),
                bpffs: dir.join("bpf"),
                cgroup: cg.join(&name),
                dir,
                name,
                agent_pid: None,
                proxy_pid: None,
                draining_proxy_pids: Vec::new(),
            };
            self.state.nodes.push(node.clone());
            self.save()?;
            // On etcd the agents route between nodes themselves.
            topology::create_node(&self.names, index, if etcd { 0 } else { opts.nodes }, &node.netns).await?;
            cgroup::create(&node.cgroup)?;
            let config = agents::agent_config(&node, &self.names.dir(), opts);
            std::fs::write(node.dir.join("agent.yaml"), config).map_err(|e| LabError::io("writing agent.yaml", e))?;
            let pid = agents::start_agent(&self.bins.sluice, &node, &self.names)?;
            self.state.nodes[index].agent_pid = Some(pid);
            self.state.nodes[index].proxy_pid = Some(agents::start_proxy(&self.bins.sluice, &node, &self.names)?);
            self.save()?;
            if !etcd {
                let status = agents::wait_ready(&node, pid, opts.agent_timeout).await?;
                progress(&format!(
                    "{}: agent ready, host routing {} ({})",
                    node.name, status.host_routing.mode, status.host_routing.reason
                ));
            }
        }
        if etcd {
            // The agents of a cluster start at once, as nodes booting together do; etcd
            // settles who gets which pod CIDR.
            for node in self.state.nodes.clone() {
                let pid = node.agent_pid.ok_or_else(|| LabError::Invalid(format!("{}: agent not started", node.name)))?;
                let status = agents::wait_ready(&node, pid, opts.agent_timeout).await?;
                progress(&format!(
                    "{}: agent ready, pod CIDRs {:?}, host routing {} ({})",
                    node.name, status.pod_cidrs, status.host_routing.mode, status.host_routing.reason
                ));
            }
        }
        let ext = self.names.external_netns();
        self.state.external_netns = Some(ext.clone());
        self.save()?;
        topology::create_external(&self.names, &ext).await?;
        progress(&format!("external client {ext} on the underlay ({}, {})", crate::names::EXTERNAL_IPV4, crate::names::EXTERNAL_IPV6));
        self.store.update(|s| {
            s.namespaces.entry("default".into()).or_insert_with(|| namespace_object("default", BTreeMap::new()));
            Ok(())
        })?;
        Ok(())
    }

    /// Removes a lab entirely: pods, agents, pins, namespaces, links, cgroups, files. What is
    /// already gone is skipped, so `down` also cleans up after a crash.
    pub async fn down(name: &str, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        validate_lab_name(name).map_err(LabError::Invalid)?;
        let names = LabNames::new(name);
        let lock = lock(&names.dir())?;
        let state = LabState::load(&names.dir())?.ok_or_else(|| LabError::NotUp(name.into()))?;
        let sluice = std::env::current_exe().map_err(|e| LabError::io("finding the sluice binary", e))?;
        let mut lab = Self { bins: binaries(sluice), store: state.datastore(&names), names, state, _lock: Some(lock) };
        lab.teardown(progress).await
    }

    async fn teardown(&mut self, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let mut first_error: Option<LabError> = None;
        let mut keep = |r: Result<(), LabError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        for (key, pod) in std::mem::take(&mut self.state.pods) {
            let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
            if let Some(node) = self.state.node(&pod.node).cloned() {
                keep(runtime::stop_pod(&self.names, &node, &self.bins, &pod, ns, name).await);
            }
            progress(&format!("pod {key} removed"));
        }
        for node in self.state.nodes.clone() {
            for pid in node.proxy_pid.iter().chain(&node.draining_proxy_pids) {
                agents::stop_agent(*pid);
            }
            if let Some(pid) = node.agent_pid {
                agents::stop_agent(pid);
            }
            keep(sluice_datapath::unmount_bpffs(&node.bpffs).map_err(LabError::from));
            keep(topology::delete_node(&node.uplink_root_side, &node.netns).await);
            progress(&format!("{} removed", node.name));
        }
        if let Some(ext) = self.state.external_netns.clone() {
            keep(topology::delete_node(&self.names.external_root_side(), &ext).await);
        }
        if let Some(etcd) = self.state.etcd.clone() {
            keep(crate::etcd::stop(&self.names, &etcd).await);
            progress("etcd removed");
        }
        if let Some(bridge) = &self.state.bridge {
            keep(topology::delete_bridge(bridge).await);
        }
        if let Some(cg) = &self.state.cgroup {
            keep(cgroup::remove_tree(cg));
            if let Some(parent) = cg.parent() {
                let _ = std::fs::remove_dir(parent); // the shared "sluice" level, if now empty
            }
        }
        match first_error {
            Some(e) => {
                self.save()?;
                Err(e)
            }
            None => {
                std::fs::remove_dir_all(self.names.dir())
                    .map_err(|e| LabError::io(format!("removing {}", self.names.dir().display()), e))?;
                progress("lab removed");
                Ok(())
            }
        }
    }

    /// Applies a manifest: validated whole first, services allocated, all inside one store
    /// update (nothing changes when any document is invalid or any allocation fails), then
    /// new pods are started. Returns when every new pod runs with addresses, or with the
    /// first failure.
    pub async fn apply(
        &mut self,
        file: &str,
        text: &str,
        timeout: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<AppliedObject>, LabError> {
        let objects = sluice_model::parse_manifests(file, text)?;
        let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        let ranges = self.state.service_ranges()?;
        let (applied, to_start) = self.store.update(|store| apply_objects(store, file, &objects, &nodes, &ranges))?;
        for key in to_start {
            self.start_pod(&key, timeout, progress).await?;
        }
        Ok(applied)
    }

    async fn start_pod(&mut self, key: &str, timeout: Duration, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let pod = self.store.load()?.pods.get(key).cloned().ok_or_else(|| LabError::Invalid(format!("pod {key} vanished")))?;
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let node =
            self.state.node(&node_name).cloned().ok_or_else(|| LabError::Invalid(format!("pod {key}: node {node_name} not in the lab")))?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = PodSpec { namespace: ns, name, uid: &uid, argv: pod_argv(&pod) };
        let started = runtime::start_pod(&self.names, &node, &self.bins, &spec, timeout).await;
        match started {
            Ok((rt, addrs)) => {
                self.state.pods.insert(key.to_owned(), rt.clone());
                self.save()?;
                let (phase, _) = runtime::phase(&rt);
                self.store.update(|s| {
                    if let Some(p) = s.pods.get_mut(key) {
                        let ips: Vec<String> = addrs.ips.iter().map(|i| i.to_string()).collect();
                        p.status = Some(PodStatus {
                            phase: Some(phase.into()),
                            pod_ip: ips.first().cloned(),
                            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
                            host_ip: Some(crate::names::node_ipv4(node.index).to_string()),
                            start_time: Some(Time(now())),
                            conditions: Some(ready_conditions(phase == "Running")),
                            ..Default::default()
                        });
                    }
                    Ok(())
                })?;
                progress(&format!(
                    "pod {key} running on {} with {}",
                    node.name,
                    addrs.ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                self.store.update(|s| {
                    if let Some(p) = s.pods.get_mut(key) {
                        p.status = Some(PodStatus { phase: Some("Failed".into()), message: Some(message.clone()), ..Default::default() });
                    }
                    Ok(())
                })?;
                Err(e)
            }
        }
    }

    /// Deletes what a manifest names (services, endpoint slices, policies, pods, and
    /// namespaces with everything in them).
    pub async fn delete_manifest(&mut self, file: &str, text: &str, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let objects = sluice_model::parse_manifests(file, text)?;
        for object in &objects {
            let ns = object.namespace().unwrap_or("default");
            match object {
                Object::Service(_) => self.delete_service(ns, object.name(), true, progress)?,
                Object::EndpointSlice(_) => self.delete_endpoint_slice(ns, object.name(), true, progress)?,
                Object::NetworkPolicy(_) => self.delete_network_policy(ns, object.name(), true, progress)?,
                Object::SluiceNetworkPolicy(_) => self.delete_sluice_policy(ns, object.name(), true, progress)?,
                Object::SluiceClusterwideNetworkPolicy(_) => self.delete_clusterwide_policy(object.name(), true, progress)?,
                Object::Pod(_) | Object::Namespace(_) => {}
            }
        }
        for object in objects.iter().filter(|o| matches!(o, Object::Pod(_))) {
            self.delete_pod(object.namespace().unwrap_or("default"), object.name(), true, progress).await?;
        }
        for object in objects.iter().filter(|o| matches!(o, Object::Namespace(_))) {
            self.delete_namespace(object.name(), progress).await?;
        }
        Ok(())
    }

    pub async fn delete_namespace(&mut self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let pods: Vec<String> = self.store.load()?.pods.keys().filter(|k| k.starts_with(&format!("{name}/"))).cloned().collect();
        for key in pods {
            let (ns, pod) = key.split_once('/').unwrap_or((name, key.as_str()));
            self.delete_pod(ns, pod, true, progress).await?;
        }
        let prefix = format!("{name}/");
        let existed = self.store.update(|s| {
            s.services.retain(|key, _| !key.starts_with(&prefix));
            s.endpoint_slices.retain(|key, _| !key.starts_with(&prefix));
            s.network_policies.retain(|key, _| !key.starts_with(&prefix));
            s.sluice_policies.retain(|key, _| !key.starts_with(&prefix));
            Ok(s.namespaces.remove(name).is_some())
        })?;
        if existed {
            progress(&format!("namespace/{name} deleted"));
        } else {
            progress(&format!("namespace/{name} not found"));
        }
        Ok(())
    }

    /// Deletes a service; its cluster IPs and node ports are free again.
    pub fn delete_service(
        &mut self,
        namespace: &str,
        name: &str,
        missing_ok: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let key = Store::key(namespace, name);
        let existed = self.store.update(|s| Ok(s.services.remove(&key).is_some()))?;
        report_delete("service", namespace, name, existed, missing_ok, progress)
    }

    /// Deletes an endpoint slice applied by hand (derived slices go with their pods).
    pub fn delete_endpoint_slice(
        &mut self,
        namespace: &str,
        name: &str,
        missing_ok: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let key = Store::key(namespace, name);
        let existed = self.store.update(|s| Ok(s.endpoint_slices.remove(&key).is_some()))?;
        report_delete("endpointslice", namespace, name, existed, missing_ok, progress)
    }

    /// Deletes a NetworkPolicy.
    pub fn delete_network_policy(
        &mut self,
        namespace: &str,
        name: &str,
        missing_ok: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let key = Store::key(namespace, name);
        let existed = self.store.update(|s| Ok(s.network_policies.remove(&key).is_some()))?;
        report_delete("networkpolicy", namespace, name, existed, missing_ok, progress)
    }

    /// Deletes a SluiceNetworkPolicy.
    pub fn delete_sluice_policy(
        &mut self,
        namespace: &str,
        name: &str,
        missing_ok: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let key = Store::key(namespace, name);
        let existed = self.store.update(|s| Ok(s.sluice_policies.remove(&key).is_some()))?;
        report_delete("sluicenetworkpolicy", namespace, name, existed, missing_ok, progress)
    }

    /// Deletes a SluiceClusterwideNetworkPolicy.
    pub fn delete_clusterwide_policy(&mut self, name: &str, missing_ok: bool, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
        let existed = self.store.update(|s| Ok(s.clusterwide_policies.remove(name).is_some()))?;
        let kind = "sluiceclusterwidenetworkpolicy";
        match (existed, missing_ok) {
            (true, _) => progress(&format!("{kind}/{name} deleted")),
            (false, true) => progress(&format!("{kind}/{name} not found")),
            (false, false) => return Err(LabError::Invalid(format!("{kind} {name} not found"))),
        }
        Ok(())
    }

    /// Deletes a pod in Kubernetes' order: marked terminating first (services stop choosing it
    /// for new connections on every node), then stopped, its network released, and removed from
    /// the store (every node then closes the connections still open to it).
    pub async fn delete_pod(
        &mut self,
        namespace: &str,
        name: &str,
        missing_ok: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(), LabError> {
        let key = Store::pod_key(namespace, name);
        let known = self.store.load()?.pods.contains_key(&key);
        if !known && !self.state.pods.contains_key(&key) {
            if missing_ok {
                progress(&format!("pod/{name} not found (namespace {namespace})"));
                return Ok(());
            }
            return Err(LabError::PodNotFound { namespace: namespace.into(), name: name.into() });
        }
        if known {
            self.drain_pod(&key).await?;
        }
        if let Some(rt) = self.state.pods.get(&key).cloned() {
            if let Some(node) = self.state.node(&rt.node).cloned() {
                runtime::stop_pod(&self.names, &node, &self.bins, &rt, namespace, name).await?;
            }
            self.state.pods.remove(&key);
            self.save()?;
        }
        self.store.update(|s| Ok(s.pods.remove(&key)))?;
        progress(&format!("pod/{name} deleted (namespace {namespace})"));
        Ok(())
    }

    /// Marks a pod terminating and, when services exist, waits (at most `DRAIN_TIMEOUT`) until
    /// every running agent has programmed the store that says so.
    async fn drain_pod(&mut self, key: &str) -> Result<(), LabError> {
        let (services, generation) = self.store.update_at(|s| {
            if let Some(pod) = s.pods.get_mut(key) {
                pod.metadata.deletion_timestamp.get_or_insert_with(|| Time(now()));
            }
            Ok(!s.services.is_empty())
        })?;
        if !services {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        for node in self.state.nodes.iter().filter(|n| n.agent_pid.is_some()) {
            let client = sluice_api::Client::new(&node.socket);
            loop {
                let status = client.get::<sluice_api::Status>(sluice_api::paths::STATUS_BRIEF).await.ok();
                let programmed = status.and_then(|s| s.services).and_then(|s| s.store_generation).unwrap_or(0);
                if programmed >= generation || std::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The position of `node` among the lab's nodes.
    fn node_index(&self, node: &str) -> Result<usize, LabError> {
        self.state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("no node {node:?} in lab {}", self.state.name)))
    }

    /// Stops a node's agent and starts it again (as an upgrade or a crash and restart would);
    /// returns when the new agent is ready. Pod traffic keeps flowing meanwhile: programs and
    /// maps stay pinned.
    pub async fn restart_agent(&mut self, node: &str, timeout: Duration) -> Result<(sluice_api::Status, Duration), LabError> {
        let index = self.node_index(node)?;
        if let Some(pid) = self.state.nodes[index].agent_pid {
            agents::stop_agent(pid);
        }
        let node_state = self.state.nodes[index].clone();
        let started = std::time::Instant::now();
        let pid = agents::start_agent(&self.bins.sluice, &node_state, &self.names)?;
        self.state.nodes[index].agent_pid = Some(pid);
        self.save()?;
        let status = agents::wait_ready(&node_state, pid, timeout).await?;
        Ok((status, started.elapsed()))
    }

    /// Replaces a node's layer-7 proxy: starts a new one beside it, and once the new one
    /// listens (on the same port: both listeners are reuseport), stops the old one, which
    /// closes its listeners and lets its open connections finish (up to 25 s) on its own.
    /// Returns how long the new one took to listen.
    pub async fn restart_proxy(&mut self, node: &str, timeout: Duration) -> Result<Duration, LabError> {
        let index = self.node_index(node)?;
        let node_state = self.state.nodes[index].clone();
        let log = node_state.dir.join("proxy.log");
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let started = std::time::Instant::now();
        let pid = agents::start_proxy(&self.bins.sluice, &node_state, &self.names)?;
        let old = self.state.nodes[index].proxy_pid.replace(pid);
        self.state.nodes[index].draining_proxy_pids.retain(|p| crate::process::alive(*p));
        self.save()?;
        let ready = loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default()).into_owned();
            if new.contains(crate::PROXY_READY_LINE) {
                break started.elapsed();
            }
            if !crate::process::alive(pid) || started.elapsed() > timeout {
                return Err(LabError::Invalid(format!("{node}: the new proxy did not start within {timeout:?}; see {}", log.display())));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if let Some(old) = old.filter(|p| crate::process::alive(*p)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), nix::sys::signal::Signal::SIGTERM);
            self.state.nodes[index].draining_proxy_pids.push(old);
            self.save()?;
        }
        Ok(ready)
    }

    /// The lab's nodes. On etcd, as their agents registered them (a node whose agent died
    /// disappears when its lease expires); on the local store, as the lab made them.
    pub fn nodes(&self) -> Result<Vec<sluice_state::NodeRecord>, LabError> {
        if self.state.etcd.is_some() {
            return Ok(self.store.load()?.nodes.into_values().collect());
        }
        Ok(self
            .state
            .nodes
            .iter()
            .map(|n| sluice_state::NodeRecord {
                name: n.name.clone(),
                addresses: vec![crate::names::node_ipv4(n.index).into(), crate::names::node_ipv6(n.index).into()],
                pod_cidrs: vec![crate::names::pod_cidr_v4(n.index).into(), crate::names::pod_cidr_v6(n.index).into()],
                host_routing: self.state.host_routing.clone(),
                health: if n.agent_pid.is_some_and(crate::process::alive) { "ready".into() } else { "agent not running".into() },
                agent_version: env!("CARGO_PKG_VERSION").into(),
                registered: String::new(),
            })
            .collect())
    }

    /// Stops the lab's etcd and starts it again on the same data, as a crash and restart of the
    /// control plane would; returns when it answers. Agents keep forwarding meanwhile and
    /// resynchronise when it is back.
    pub async fn restart_etcd(&mut self, timeout: Duration) -> Result<Duration, LabError> {
        let Some(etcd) = self.state.etcd.clone() else {
            return Err(LabError::Invalid(format!(
                "lab {} runs on its local store, not etcd (start it with --datastore etcd)",
                self.state.name
            )));
        };
        let cgroup = self.state.cgroup.clone().ok_or_else(|| LabError::Invalid("the lab has no cgroup".into()))?;
        let started = std::time::Instant::now();
        let pid = crate::etcd::restart(&self.names, &etcd, &cgroup, timeout).await?;
        if let Some(e) = self.state.etcd.as_mut() {
            e.pid = Some(pid);
        }
        self.save()?;
        Ok(started.elapsed())
    }

    /// Pods with their phase as the shims report it now; `namespace` None means all.
    pub fn pods(&self, namespace: Option<&str>) -> Result<Vec<Pod>, LabError> {
        let store = self.store.load()?;
        let mut out = Vec::new();
        for (key, pod) in store.pods {
            if namespace.is_some_and(|ns| !key.starts_with(&format!("{ns}/"))) {
                continue;
            }
            let mut pod = pod;
            if let Some(rt) = self.state.pods.get(&key) {
                let (phase, message) = runtime::phase(rt);
                let status = pod.status.get_or_insert_with(Default::default);
                if status.phase.as_deref() != Some(phase) {
                    status.conditions = Some(ready_conditions(phase == "Running"));
                }
                status.phase = Some(phase.into());
                if message.is_some() {
                    status.message = message;
                }
            }
            out.push(pod);
        }
        Ok(out)
    }

    pub fn namespaces(&self) -> Result<Vec<Namespace>, LabError> {
        Ok(self.store.load()?.namespaces.into_values().collect())
    }

    /// Services as stored (allocated); `namespace` None means all.
    pub fn services(&self, namespace: Option<&str>) -> Result<Vec<Service>, LabError> {
        let store = self.store.load()?;
        Ok(store.services.into_iter().filter(|(key, _)| in_namespace(key, namespace)).map(|(_, s)| s).collect())
    }

    /// NetworkPolicies as applied; `namespace` None means all.
    pub fn network_policies(&self, namespace: Option<&str>) -> Result<Vec<NetworkPolicy>, LabError> {
        let store = self.store.load()?;
        Ok(store.network_policies.into_iter().filter(|(key, _)| in_namespace(key, namespace)).map(|(_, p)| p).collect())
    }

    /// SluiceNetworkPolicies as applied; `namespace` None means all.
    pub fn sluice_policies(&self, namespace: Option<&str>) -> Result<Vec<SluiceNetworkPolicy>, LabError> {
        let store = self.store.load()?;
        Ok(store.sluice_policies.into_iter().filter(|(key, _)| in_namespace(key, namespace)).map(|(_, p)| p).collect())
    }

    /// SluiceClusterwideNetworkPolicies as applied.
    pub fn clusterwide_policies(&self) -> Result<Vec<SluiceClusterwideNetworkPolicy>, LabError> {
        Ok(self.store.load()?.clusterwide_policies.into_values().collect())
    }

    /// Endpoint slices: those applied by hand, then those derived from the pods (with their
    /// live phase) for every service with a selector. Derived slices carry the label
    /// `endpointslice.kubernetes.io/managed-by: endpointslice-controller.sluice.io`.
    pub fn endpoint_slices(&self, namespace: Option<&str>) -> Result<Vec<EndpointSlice>, LabError> {
        let store = self.store.load()?;
        let pods = self.pods(namespace)?;
        let mut slices: Vec<EndpointSlice> =
            store.endpoint_slices.into_iter().filter(|(key, _)| in_namespace(key, namespace)).map(|(_, s)| s).collect();
        for (_, service) in store.services.iter().filter(|(key, _)| in_namespace(key, namespace)) {
            slices.extend(sluice_model::derive_endpoint_slices(service, &pods));
        }
        Ok(slices)
    }

    /// Runs a command in a pod; returns its exit code.
    pub fn exec(&self, namespace: &str, name: &str, argv: &[String]) -> Result<i32, LabError> {
        let key = Store::pod_key(namespace, name);
        let rt = self.state.pods.get(&key).ok_or_else(|| LabError::PodNotFound { namespace: namespace.into(), name: name.into() })?;
        runtime::exec(rt, argv)
    }

    /// Runs `argv` in a pod; its exit code and standard output.
    pub fn exec_output(&self, namespace: &str, name: &str, argv: &[String]) -> Result<(i32, String), LabError> {
        let key = Store::pod_key(namespace, name);
        let rt = self.state.pods.get(&key).ok_or_else(|| LabError::PodNotFound { namespace: namespace.into(), name: name.into() })?;
        runtime::exec_output(rt, argv)
    }

    /// Runs `argv` in the external client's namespace (outside every node, on the underlay).
    pub fn exec_external(&self, argv: &[String]) -> Result<i32, LabError> {
        let ns = self
            .state
            .external_netns
            .as_ref()
            .ok_or_else(|| LabError::Invalid(format!("lab {} has no external client (made by a newer sluice up)", self.state.name)))?;
        let Some((program, args)) = argv.split_first() else { return Err(LabError::Invalid("exec needs a command".into())) };
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        crate::process::enter_on_exec(&mut cmd, &sluice_datapath::netns::named_netns_path(ns), None, false)?;
        let status = cmd.status().map_err(|e| LabError::io(format!("running {program} in the external client"), e))?;
        Ok(status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
    }

    /// The agent socket of a node (the first node when `node` is None).
    pub fn node_socket(&self, node: Option<&str>) -> Result<PathBuf, LabError> {
        let found = match node {
            Some(n) => self.state.node(n),
            None => self.state.nodes.first(),
        };
        found
            .map(|n| n.socket.clone())
            .ok_or_else(|| LabError::Invalid(format!("no node {:?} in lab {}", node.unwrap_or("node0"), self.state.name)))
    }

    fn save(&self) -> Result<(), LabError> {
        self.state.save(&self.names.dir())
    }
}

fn binaries(sluice: PathBuf) -> Binaries {
    let cni_plugin = sluice.parent().unwrap_or(Path::new("/")).join("sluice-cni");
    Binaries { sluice, cni_plugin }
}

fn lock(dir: &Path) -> Result<Flock<File>, LabError> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lab.lock"))
        .map_err(|e| LabError::io("opening the lab lock", e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| LabError::io("locking the lab", e))
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn namespace_object(name: &str, labels: BTreeMap<String, String>) -> Namespace {
    // As the API server does: every namespace carries its own name as a label.
    let labels = sluice_model::labels::namespace_labels(name, Some(&labels));
    Namespace {
        metadata: ObjectMeta { name: Some(name.into()), labels: Some(labels), creation_timestamp: Some(Time(now())), ..Default::default() },
        ..Default::default()
    }
}

/// Validates and stores a manifest's objects into `store`; returns the report and the keys of
/// pods to start. Runs inside one store update: any error leaves the store as it was.
fn apply_objects(
    store: &mut Store,
    file: &str,
    objects: &[Object],
    nodes: &[String],
    ranges: &ServiceRanges,
) -> Result<(Vec<AppliedObject>, Vec<String>), StoreError> {
    let mut applied = Vec::new();
    let mut to_start = Vec::new();
    let new_namespaces: Vec<&str> = objects.iter().filter(|&o| matches!(o, Object::Namespace(_))).map(|o| o.name()).collect();
    // Built on the first service only: a file of pods pays nothing for it.
    let mut allocator: Option<Allocator> = None;
    for (i, object) in objects.iter().enumerate() {
        let where_ = format!("{file}: document {} ({} {:?})", i + 1, object.kind(), object.name());
        let ns = object.namespace().unwrap_or("default");
        if object.kind().is_namespaced() && !store.namespaces.contains_key(ns) && !new_namespaces.contains(&ns) {
            return Err(StoreError::Rejected(format!("{where_}: metadata.namespace: namespace {ns:?} does not exist")));
        }
        match object {
            Object::Namespace(namespace) => applied.push(apply_namespace(store, namespace)),
            Object::Pod(pod) => {
                let (result, start) = apply_pod(store, pod, ns, nodes).map_err(|m| StoreError::Rejected(format!("{where_}: {m}")))?;
                if start {
                    to_start.push(Store::pod_key(ns, object.name()));
                }
                applied.push(result);
            }
            Object::Service(service) => {
                let allocator = allocator.get_or_insert_with(|| Allocator::new(ranges, store.services.values()));
                let result = apply_service(store, allocator, service, ns).map_err(|m| StoreError::Rejected(format!("{where_}: {m}")))?;
                applied.push(result);
            }
            Object::EndpointSlice(slice) => applied.push(apply_endpoint_slice(store, slice, ns)),
            Object::NetworkPolicy(policy) => {
                applied.push(apply_as_given(&mut store.network_policies, Store::key(ns, object.name()), policy, Some(ns)))
            }
            Object::SluiceNetworkPolicy(policy) => {
                applied.push(apply_as_given(&mut store.sluice_policies, Store::key(ns, object.name()), policy, Some(ns)))
            }
            Object::SluiceClusterwideNetworkPolicy(policy) => {
                applied.push(apply_as_given(&mut store.clusterwide_policies, object.name().to_owned(), policy, None))
            }
        }
    }
    Ok((applied, to_start))
}

fn apply_namespace(store: &mut Store, ns: &Namespace) -> AppliedObject {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let wanted = namespace_object(&name, ns.metadata.labels.clone().unwrap_or_default());
    let action = match store.namespaces.get_mut(&name) {
        Some(existing) if existing.metadata.labels == wanted.metadata.labels => "unchanged",
        Some(existing) => {
            existing.metadata.labels = wanted.metadata.labels;
            "configured"
        }
        None => {
            store.namespaces.insert(name.clone(), wanted);
            "created"
        }
    };
    AppliedObject { kind: "Namespace".into(), namespace: None, name, action }
}

/// Stores a pod; returns whether it must be started. A pod's spec is immutable once created
/// (as in Kubernetes); its labels may change.
fn apply_pod(store: &mut Store, pod: &Pod, ns: &str, nodes: &[String]) -> Result<(AppliedObject, bool), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = Store::pod_key(ns, &name);
    let requested_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if let Some(node) = &requested_node {
        if !nodes.contains(node) {
            return Err(format!("spec.nodeName: node {node:?} is not in the lab (nodes: {})", nodes.join(", ")));
        }
    }
    let applied = |action| AppliedObject { kind: "Pod".into(), namespace: Some(ns.into()), name: name.clone(), action };
    if let Some(existing) = store.pods.get_mut(&key) {
        let same_containers = existing.spec.as_ref().map(|s| &s.containers) == pod.spec.as_ref().map(|s| &s.containers);
        let same_node = requested_node.is_none() || existing.spec.as_ref().and_then(|s| s.node_name.as_ref()) == requested_node.as_ref();
        if !same_containers || !same_node {
            return Err("spec: a pod's spec cannot change once created; delete the pod and apply again".into());
        }
        if existing.metadata.labels == pod.metadata.labels {
            return Ok((applied("unchanged"), false));
        }
        existing.metadata.labels = pod.metadata.labels.clone();
        return Ok((applied("configured"), false));
    }
    let node = match requested_node {
        Some(n) => n,
        None => least_loaded(store, nodes),
    };
    let mut stored = pod.clone();
    stored.metadata.namespace = Some(ns.into());
    stored.metadata.uid = Some(new_uid());
    stored.metadata.creation_timestamp = Some(Time(now()));
    stored.spec.get_or_insert_with(Default::default).node_name = Some(node);
    stored.status = Some(PodStatus { phase: Some("Pending".into()), ..Default::default() });
    store.pods.insert(key, stored);
    Ok((applied("created"), true))
}

fn least_loaded(store: &Store, nodes: &[String]) -> String {
    nodes
        .iter()
        .min_by_key(|n| store.pods.values().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(n)).count())
        .cloned()
        .unwrap_or_else(|| "node0".into())
}

/// The pod's process: command + args of its first container, or a pause-like sleep.
fn pod_argv(pod: &Pod) -> Vec<String> {
    let container = pod.spec.as_ref().and_then(|s| s.containers.first());
    let mut argv: Vec<String> = container.and_then(|c| c.command.clone()).unwrap_or_default();
    argv.extend(container.and_then(|c| c.args.clone()).unwrap_or_default());
    if argv.is_empty() {
        argv = vec!["sleep".into(), "infinity".into()];
    }
    argv
}

/// A UUID v4 from the kernel's random source.
fn new_uid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn in_namespace(key: &str, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| key.split_once('/').is_some_and(|(k, _)| k == ns))
}

fn report_delete(
    kind: &str,
    namespace: &str,
    name: &str,
    existed: bool,
    missing_ok: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    if existed {
        progress(&format!("{kind}/{name} deleted (namespace {namespace})"));
    } else if missing_ok {
        progress(&format!("{kind}/{name} not found (namespace {namespace})"));
    } else {
        return Err(LabError::Invalid(format!("{kind} {namespace}/{name} not found")));
    }
    Ok(())
}

/// The conditions kubelet reports for a pod whose containers run (or not). Lab pods have no
/// probes, so running is ready; endpoint slices take readiness from `Ready`.
fn ready_conditions(running: bool) -> Vec<PodCondition> {
    let status = if running { "True" } else { "False" };
    ["Initialized", "ContainersReady", "Ready"]
        .into_iter()
        .map(|type_| PodCondition {
            type_: type_.into(),
            status: if type_ == "Initialized" { "True".into() } else { status.into() },
            last_transition_time: Some(Time(now())),
            ..Default::default()
        })
        .collect()
}

/// Service ranges must not overlap the lab's underlay or pod networks: a cluster IP that is
/// also a pod or node address would be ambiguous to the datapath.
fn check_service_ranges(ranges: &ServiceRanges) -> Result<(), LabError> {
    let underlay_v4 = IpNet::new(crate::names::node_ipv4(0).into(), crate::names::UNDERLAY_V4_PREFIX);
    let underlay_v6 = IpNet::new(crate::names::node_ipv6(0).into(), crate::names::UNDERLAY_V6_PREFIX);
    let mut taken: Vec<IpNet> = underlay_v4.into_iter().chain(underlay_v6).map(|n| n.trunc()).collect();
    for index in 0..8 {
        taken.push(crate::names::pod_cidr_v4(index).into());
        taken.push(crate::names::pod_cidr_v6(index).into());
    }
    for cidr in &ranges.cidrs {
        if let Some(other) = taken.iter().find(|t| t.contains(&cidr.network()) || cidr.contains(&t.network())) {
            return Err(LabError::Invalid(format!("--service-cidr {cidr} overlaps the lab network {other}; pick a range outside it")));
        }
    }
    Ok(())
}

/// Stores a service with its cluster IPs and node ports allocated. Re-applying keeps them
/// (a cluster IP never changes once given, as in Kubernetes).
fn apply_service(store: &mut Store, allocator: &mut Allocator, service: &Service, ns: &str) -> Result<AppliedObject, String> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let key = Store::key(ns, &name);
    let mut wanted = service.clone();
    wanted.metadata.namespace = Some(ns.into());
    allocator.allocate(&mut wanted).map_err(|e| e.to_string())?;
    let applied = |action| AppliedObject { kind: "Service".into(), namespace: Some(ns.into()), name: name.clone(), action };
    let action = match store.services.get(&key) {
        Some(existing) => {
            wanted.metadata.uid = existing.metadata.uid.clone();
            wanted.metadata.creation_timestamp = existing.metadata.creation_timestamp.clone();
            if *existing == wanted {
                return Ok(applied("unchanged"));
            }
            "configured"
        }
        None => {
            wanted.metadata.uid = Some(new_uid());
            wanted.metadata.creation_timestamp = Some(Time(now()));
            "created"
        }
    };
    store.services.insert(key, wanted);
    Ok(applied(action))
}

/// Stores an endpoint slice as given: it is how a service without a selector gets backends.
fn apply_endpoint_slice(store: &mut Store, slice: &EndpointSlice, ns: &str) -> AppliedObject {
    let key = Store::key(ns, slice.metadata.name.as_deref().unwrap_or_default());
    apply_as_given(&mut store.endpoint_slices, key, slice, Some(ns))
}

/// Stores an object as given (endpoint slices, policies) under `key`, keeping the uid and
/// creation time of the object it replaces; `ns` is `None` for cluster-scoped kinds.
fn apply_as_given<T>(map: &mut sluice_state::ObjectMap<T>, key: String, object: &T, ns: Option<&str>) -> AppliedObject
where
    T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Clone + PartialEq,
{
    let name = object.metadata().name.clone().unwrap_or_default();
    let mut wanted = object.clone();
    wanted.metadata_mut().namespace = ns.map(str::to_owned);
    let action = match map.get(&key) {
        Some(existing) => {
            let meta = wanted.metadata_mut();
            meta.uid = existing.metadata().uid.clone();
            meta.creation_timestamp = existing.metadata().creation_timestamp.clone();
            if *existing == wanted {
                "unchanged"
            } else {
                "configured"
            }
        }
        None => {
            let meta = wanted.metadata_mut();
            meta.uid = Some(new_uid());
            meta.creation_timestamp = Some(Time(now()));
            "created"
        }
    };
    if action != "unchanged" {
        map.insert(key, wanted);
    }
    AppliedObject { kind: T::KIND.into(), namespace: ns.map(str::to_owned), name, action }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_default_namespace() -> Store {
        let mut store = Store::default();
        store.namespaces.insert("default".into(), namespace_object("default", BTreeMap::new()));
        store
    }

    fn apply_text(store: &mut Store, text: &str) -> Result<Vec<(String, &'static str)>, String> {
        let objects = sluice_model::parse_manifests("m.yaml", text).map_err(|e| e.to_string())?;
        let (applied, _) =
            apply_objects(store, "m.yaml", &objects, &["node0".into()], &ServiceRanges::default()).map_err(|e| e.to_string())?;
        Ok(applied.into_iter().map(|a| (a.name, a.action)).collect())
    }

    const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: NodePort, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.7]}]
ports: [{port: 443}]
";

    #[test]
    fn services_are_allocated_and_reapply_is_unchanged() {
        let mut store = store_with_default_namespace();
        let first = apply_text(&mut store, SERVICES);
        assert_eq!(first, Ok(vec![("web".into(), "created"), ("ext".into(), "created")]), "first apply creates");
        let spec = store.services.get("default/web").and_then(|s| s.spec.clone()).unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("198.18.128.1"), "cluster IP allocated");
        assert_eq!(spec.ports.unwrap_or_default()[0].node_port, Some(30000), "node port allocated");
        let again = apply_text(&mut store, SERVICES);
        assert_eq!(again, Ok(vec![("web".into(), "unchanged"), ("ext".into(), "unchanged")]), "re-apply keeps allocations");
    }

    #[test]
    fn allocation_errors_name_the_document() {
        let mut store = store_with_default_namespace();
        let taken = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 198.18.128.9, ports: [{port: 80}]}\n";
        let conflict = format!("{taken}---\n{}", taken.replace("name: a", "name: b"));
        let result = apply_text(&mut store, &conflict);
        assert_eq!(
            result,
            Err("m.yaml: document 2 (Service \"b\"): spec.clusterIP: 198.18.128.9 is already allocated to service default/a".into()),
            "the second service's request conflicts with the first"
        );
        let missing = apply_text(&mut store, &taken.replace("name: a}", "name: a, namespace: shop}"));
        assert!(missing.is_err_and(|e| e.contains("namespace \"shop\" does not exist")), "services need their namespace");
    }

    #[test]
    fn service_ranges_must_not_overlap_the_lab() {
        let pods = ServiceRanges { cidrs: vec![ServiceRanges::parse_cidr("198.19.0.0/20").unwrap()], ..Default::default() };
        assert!(check_service_ranges(&pods).is_err(), "overlaps the pod CIDRs");
        assert!(check_service_ranges(&ServiceRanges::default()).is_ok(), "the defaults fit");
    }

    const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec: {podSelector: {matchLabels: {app: web}}}
---
apiVersion: sluice.dev/v1
kind: SluiceNetworkPolicy
metadata: {name: web}
spec: {endpointSelector: {matchLabels: {app: web}}, ingressDeny: [{fromEntities: [world]}]}
---
apiVersion: sluice.dev/v1
kind: SluiceClusterwideNetworkPolicy
metadata: {name: audit}
spec: {endpointSelector: {}, enforcementMode: audit}
";

    #[test]
    fn policies_are_stored_and_reapply_is_unchanged() {
        let mut store = store_with_default_namespace();
        let first = apply_text(&mut store, POLICIES);
        assert_eq!(
            first,
            Ok(vec![("web".into(), "created"), ("web".into(), "created"), ("audit".into(), "created")]),
            "first apply creates"
        );
        assert!(store.network_policies.contains_key("default/web"), "NetworkPolicy stored by namespace/name");
        assert!(store.sluice_policies.contains_key("default/web"), "SluiceNetworkPolicy stored by namespace/name");
        let audit = store.clusterwide_policies.get("audit");
        assert!(
            audit.is_some_and(|p| p.metadata.namespace.is_none() && p.metadata.uid.is_some()),
            "cluster-wide policy stored by name, with a uid and no namespace"
        );
        let again = apply_text(&mut store, POLICIES);
        assert_eq!(
            again,
            Ok(vec![("web".into(), "unchanged"), ("web".into(), "unchanged"), ("audit".into(), "unchanged")]),
            "re-apply is unchanged"
        );
        let changed = apply_text(&mut store, &POLICIES.replace("enforcementMode: audit", "enforcementMode: enforce"));
        assert_eq!(changed.map(|a| a[2].1), Ok("configured"), "a changed spec is configured");
    }

    #[test]
    fn policies_need_their_namespace_and_a_bad_one_rejects_the_file() {
        let mut store = store_with_default_namespace();
        let missing = apply_text(&mut store, &POLICIES.replace("metadata: {name: web}", "metadata: {name: web, namespace: shop}"));
        assert!(missing.is_err_and(|e| e.contains("namespace \"shop\" does not exist")), "policies need their namespace");
        let bad = apply_text(&mut store, &POLICIES.replace("fromEntities: [world]", "fromEntities: [moon]"));
        assert!(bad.is_err(), "an invalid policy is rejected");
        assert!(store.network_policies.is_empty() && store.clusterwide_policies.is_empty(), "nothing of a rejected file is stored");
    }

    #[test]
    fn applied_namespaces_carry_their_name_label() {
        let mut store = store_with_default_namespace();
        let applied = apply_text(&mut store, "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n");
        assert_eq!(applied, Ok(vec![("shop".into(), "created")]), "namespace created");
        let labels = store.namespaces.get("shop").and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        assert_eq!(labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("shop"), "name label added: {labels:?}");
        let default = store.namespaces.get("default").and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        assert_eq!(default.get("kubernetes.io/metadata.name").map(String::as_str), Some("default"), "the lab's default namespace too");
    }

    #[test]
    fn running_pods_are_ready() {
        let ready = |running| ready_conditions(running).into_iter().find(|c| c.type_ == "Ready").map(|c| c.status);
        assert_eq!(ready(true), Some("True".into()), "running: Ready=True");
        assert_eq!(ready(false), Some("False".into()), "not running: Ready=False");
    }
}
