//! The agent's endpoint lifecycle without root: CNI ADD, DEL, CHECK and GC, resync and restart,
//! against an in-memory datapath, plumber and state source. Each case checks what every store
//! holds afterwards: records, addresses, identities, map entries, attachments and interfaces.

// A failed expect is a failed test, and its message says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sluice_abi::endpoint_info;
use sluice_agent::agent::{host_ifname, Agent, AgentParts, HostRoutingDecision};
use sluice_agent::db::AgentDb;
use sluice_agent::identity::{Identities, FIRST_DYNAMIC};
use sluice_agent::ipam::{Allocation, Ipam, Owner};
use sluice_agent::plumber::{BoxFuture, Plumber};
use sluice_agent::reconciler::ReconcileReport;
use sluice_agent::{AgentConfig, AgentError};
use sluice_api::{CniAddResult, CniAttachment, CniGcRequest, CniIpConfig, CniRequest, CniRoute, Endpoint};
use sluice_datapath::fake::FakeDatapath;
use sluice_datapath::plumb::{PlumbRequest, Plumbed};
use sluice_datapath::{CounterValue, DatapathError, DatapathTables, EndpointEntry, HostRouting, Mac};
use sluice_model::LabelSet;
use sluice_state::StateSource;
use tempfile::TempDir;

const V4_CIDR: &str = "198.19.0.0/24";
const V6_CIDR: &str = "2001:2::/64";
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

fn injected(action: &str) -> DatapathError {
    DatapathError::Os { action: format!("{action} (injected failure)"), source: std::io::Error::other("injected by the test") }
}

// === fakes ===

/// The agent's datapath tables, shared with the test so that it can read them and change them
/// behind the agent's back (a leak from a crash, a refused attach).
#[derive(Clone, Default)]
struct SharedFake(Arc<Mutex<DatapathState>>);

#[derive(Default)]
struct DatapathState {
    tables: FakeDatapath,
    /// The next attach fails, as when the kernel refuses the link.
    fail_next_attach: bool,
}

impl SharedFake {
    fn lock(&self) -> MutexGuard<'_, DatapathState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the tables as they are now.
    fn tables(&self) -> FakeDatapath {
        self.lock().tables.clone()
    }
}

impl sluice_datapath::PolicyTables for SharedFake {
    fn ipcache(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        self.lock().tables.ipcache()
    }
    fn upsert_ipcache(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.lock().tables.upsert_ipcache(prefix, identity)
    }
    fn remove_ipcache(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.lock().tables.remove_ipcache(prefix)
    }
    fn ipblocks(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        self.lock().tables.ipblocks()
    }
    fn upsert_ipblock(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.lock().tables.upsert_ipblock(prefix, identity)
    }
    fn remove_ipblock(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.lock().tables.remove_ipblock(prefix)
    }
    fn policy_entries(&self) -> Result<Vec<(sluice_abi::policy_key, sluice_abi::policy_entry)>, DatapathError> {
        self.lock().tables.policy_entries()
    }
    fn upsert_policy_entry(&mut self, key: &sluice_abi::policy_key, value: &sluice_abi::policy_entry) -> Result<(), DatapathError> {
        self.lock().tables.upsert_policy_entry(key, value)
    }
    fn remove_policy_entry(&mut self, key: &sluice_abi::policy_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_policy_entry(key)
    }
    fn policy_endpoints(&self) -> Result<Vec<(u32, sluice_abi::policy_endpoint)>, DatapathError> {
        self.lock().tables.policy_endpoints()
    }
    fn upsert_policy_endpoint(&mut self, endpoint_id: u32, value: &sluice_abi::policy_endpoint) -> Result<(), DatapathError> {
        self.lock().tables.upsert_policy_endpoint(endpoint_id, value)
    }
    fn remove_policy_endpoint(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.lock().tables.remove_policy_endpoint(endpoint_id)
    }
    fn policy_conntrack(&self) -> Result<Vec<(sluice_abi::ct_key, sluice_abi::policy_ct_entry)>, DatapathError> {
        self.lock().tables.policy_conntrack()
    }
    fn remove_policy_conntrack(&mut self, key: &sluice_abi::ct_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_policy_conntrack(key)
    }
    fn policy_pressure(&self) -> Vec<sluice_datapath::MapPressure> {
        self.lock().tables.policy_pressure()
    }
}

impl sluice_datapath::ServiceTables for SharedFake {
    fn frontends(&self) -> Result<Vec<(sluice_abi::lb_frontend_key, sluice_abi::lb_frontend)>, DatapathError> {
        self.lock().tables.frontends()
    }
    fn upsert_frontend(&mut self, key: &sluice_abi::lb_frontend_key, value: &sluice_abi::lb_frontend) -> Result<(), DatapathError> {
        self.lock().tables.upsert_frontend(key, value)
    }
    fn remove_frontend(&mut self, key: &sluice_abi::lb_frontend_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_frontend(key)
    }
    fn backends(&self) -> Result<Vec<(u32, sluice_abi::lb_backend)>, DatapathError> {
        self.lock().tables.backends()
    }
    fn upsert_backend(&mut self, id: u32, value: &sluice_abi::lb_backend) -> Result<(), DatapathError> {
        self.lock().tables.upsert_backend(id, value)
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        self.lock().tables.remove_backend(id)
    }
    fn slots(&self) -> Result<Vec<(sluice_abi::lb_slot_key, u32)>, DatapathError> {
        self.lock().tables.slots()
    }
    fn upsert_slot(&mut self, key: &sluice_abi::lb_slot_key, backend_id: u32) -> Result<(), DatapathError> {
        self.lock().tables.upsert_slot(key, backend_id)
    }
    fn remove_slot(&mut self, key: &sluice_abi::lb_slot_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_slot(key)
    }
    fn maglev_keys(&self) -> Result<Vec<sluice_abi::lb_maglev_key>, DatapathError> {
        self.lock().tables.maglev_keys()
    }
    fn upsert_maglev(&mut self, key: &sluice_abi::lb_maglev_key, chunk: &sluice_abi::lb_maglev_chunk) -> Result<(), DatapathError> {
        self.lock().tables.upsert_maglev(key, chunk)
    }
    fn remove_maglev(&mut self, key: &sluice_abi::lb_maglev_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_maglev(key)
    }
    fn conntrack(&self) -> Result<Vec<(sluice_abi::ct_key, sluice_abi::ct_entry)>, DatapathError> {
        self.lock().tables.conntrack()
    }
    fn remove_conntrack(&mut self, key: &sluice_abi::ct_key) -> Result<(), DatapathError> {
        self.lock().tables.remove_conntrack(key)
    }
    fn service_pressure(&self) -> Vec<sluice_datapath::MapPressure> {
        self.lock().tables.service_pressure()
    }
}

impl DatapathTables for SharedFake {
    fn upsert_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.lock().tables.upsert_endpoint(entry)
    }

    fn remove_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.lock().tables.remove_endpoint(entry)
    }

    fn programmed_ifindexes(&self) -> Result<Vec<(u32, endpoint_info)>, DatapathError> {
        self.lock().tables.programmed_ifindexes()
    }

    fn programmed_addresses(&self) -> Result<Vec<(IpAddr, endpoint_info)>, DatapathError> {
        self.lock().tables.programmed_addresses()
    }

    fn remove_address(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
        self.lock().tables.remove_address(addr)
    }

    fn remove_ifindex(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.lock().tables.remove_ifindex(ifindex)
    }

    fn attach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_next_attach) {
            return Err(injected("attaching from-pod"));
        }
        state.tables.attach_endpoint(host_ifname)
    }

    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        self.lock().tables.detach_endpoint(host_ifname)
    }

    fn attached_endpoints(&self) -> Result<Vec<String>, DatapathError> {
        self.lock().tables.attached_endpoints()
    }

    fn drop_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        self.lock().tables.drop_counters()
    }

    fn forward_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        self.lock().tables.forward_counters()
    }

    fn event_losses(&self) -> Result<Vec<u64>, DatapathError> {
        self.lock().tables.event_losses()
    }

    fn map_pressure(&self) -> Vec<sluice_datapath::MapPressure> {
        self.lock().tables.map_pressure()
    }
}

/// A pod's interface pair as the fake plumber made it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FakeIface {
    ifindex: u32,
    host_mac: Mac,
    pod_mac: Mac,
    netns: PathBuf,
    ifname: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    mtu: u32,
}

#[derive(Debug, Default)]
struct PlumberState {
    /// Host interface name -> the pair.
    interfaces: BTreeMap<String, FakeIface>,
    /// Interfaces created so far; ifindexes are never reused, as in the kernel.
    created: u32,
    /// Names passed to `unplumb`, in order.
    unplumbed: Vec<String>,
    /// The next plumb fails and creates nothing.
    fail_next_plumb: bool,
    /// Every CHECK fails with this reason.
    check_failure: Option<String>,
}

/// Interface plumbing in memory; the test keeps a handle to look at the interfaces and to make
/// them vanish as they do when a pod's namespace is deleted.
#[derive(Clone, Default)]
struct FakePlumber(Arc<Mutex<PlumberState>>);

impl FakePlumber {
    fn lock(&self) -> MutexGuard<'_, PlumberState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn interfaces(&self) -> BTreeMap<String, FakeIface> {
        self.lock().interfaces.clone()
    }

    fn fail_next_plumb(&self) {
        self.lock().fail_next_plumb = true;
    }

    fn fail_checks(&self, reason: &str) {
        self.lock().check_failure = Some(reason.to_owned());
    }

    /// The interface disappears without the agent's doing (the pod's namespace was removed).
    fn vanish(&self, host_ifname: &str) {
        let removed = self.lock().interfaces.remove(host_ifname);
        assert!(removed.is_some(), "test setup: {host_ifname} must exist before it can vanish");
    }

    /// The interface is re-created under the same name and gets a new ifindex.
    fn recreate(&self, host_ifname: &str) -> u32 {
        let mut state = self.lock();
        state.created += 1;
        let ifindex = 100 + state.created;
        let iface = state.interfaces.get_mut(host_ifname).expect("test setup: the interface to re-create exists");
        iface.ifindex = ifindex;
        ifindex
    }

    fn check_now(&self, req: &PlumbRequest) -> Result<(), String> {
        let state = self.lock();
        if let Some(reason) = &state.check_failure {
            return Err(reason.clone());
        }
        let iface = state.interfaces.get(&req.host_ifname).ok_or_else(|| format!("host interface {} is missing", req.host_ifname))?;
        let expected = (&req.netns, &req.ifname, req.ipv4, req.ipv6);
        if (&iface.netns, &iface.ifname, iface.ipv4, iface.ipv6) != expected {
            return Err(format!("pod side is {iface:?}, expected {expected:?}"));
        }
        Ok(())
    }
}

impl Plumber for FakePlumber {
    fn configure_pair<'a>(&'a self, _req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), DatapathError>> {
        Box::pin(async { Ok(()) })
    }

    fn create_pair<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<Plumbed, DatapathError>> {
        let mut state = self.lock();
        if std::mem::take(&mut state.fail_next_plumb) {
            return Box::pin(async { Err(injected("creating the veth pair")) });
        }
        state.created += 1;
        let ifindex = 100 + state.created;
        let [_, _, hi, lo] = ifindex.to_be_bytes();
        let iface = FakeIface {
            ifindex,
            host_mac: Mac([0x02, 0xee, 0, 0, hi, lo]),
            pod_mac: Mac([0x02, 0, 0, 0, hi, lo]),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            ipv4: req.ipv4,
            ipv6: req.ipv6,
            mtu: req.mtu,
        };
        let plumbed = Plumbed { host_ifindex: ifindex, host_mac: iface.host_mac, pod_mac: iface.pod_mac };
        // Like the real plumber, a repeated plumb replaces what an earlier one left.
        state.interfaces.insert(req.host_ifname.clone(), iface);
        Box::pin(async move { Ok(plumbed) })
    }

    fn unplumb<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<bool, DatapathError>> {
        let mut state = self.lock();
        state.unplumbed.push(host_ifname.to_owned());
        let existed = state.interfaces.remove(host_ifname).is_some();
        Box::pin(async move { Ok(existed) })
    }

    fn check<'a>(&'a self, req: &'a PlumbRequest) -> BoxFuture<'a, Result<(), String>> {
        let result = self.check_now(req);
        Box::pin(async move { result })
    }

    fn host_ifindex<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, Result<Option<u32>, DatapathError>> {
        let index = self.lock().interfaces.get(host_ifname).map(|i| i.ifindex);
        Box::pin(async move { Ok(index) })
    }

    fn veths(&self) -> BoxFuture<'_, Result<Vec<String>, DatapathError>> {
        let names = self.lock().interfaces.keys().cloned().collect();
        Box::pin(async move { Ok(names) })
    }
}

/// Labels by object: a namespace's name, or a pod's (namespace, name).
type Labelled<'a, K> = &'a [(K, &'a BTreeMap<String, String>)];

/// A state source holding one synced snapshot: the given namespaces (with labels) and pods.
fn source_with(namespaces: Labelled<'_, &str>, pods: Labelled<'_, (&str, &str)>) -> Arc<dyn StateSource> {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let mut store = sluice_state::Store::default();
    for (name, labels) in namespaces {
        let meta = ObjectMeta { name: Some((*name).into()), labels: Some((*labels).clone()), ..Default::default() };
        store.namespaces.insert((*name).into(), Namespace { metadata: meta, ..Default::default() });
    }
    for ((ns, name), labels) in pods {
        let meta =
            ObjectMeta { name: Some((*name).into()), namespace: Some((*ns).into()), labels: Some((*labels).clone()), ..Default::default() };
        store.pods.insert(sluice_state::Store::pod_key(ns, name), Pod { metadata: meta, ..Default::default() });
    }
    let publisher = sluice_state::SnapshotPublisher::new("test");
    publisher.publish(sluice_state::ClusterState { revision: 1, synced: true, objects: Arc::new(store) });
    Arc::new(publisher)
}

// === harness ===

/// One agent on a temporary state directory, with handles on its fakes.
struct Harness {
    agent: Agent,
    db: Arc<AgentDb>,
    config: AgentConfig,
    datapath: SharedFake,
    plumber: FakePlumber,
    state: Option<Arc<dyn StateSource>>,
    /// Holds the database and the network namespace files; dropped last.
    dir: TempDir,
}

impl Harness {
    fn new() -> Self {
        Self::build(V4_CIDR, None)
    }

    fn with_v4_cidr(cidr: &str) -> Self {
        Self::build(cidr, None)
    }

    fn with_source(source: Arc<dyn StateSource>) -> Self {
        Self::build(V4_CIDR, Some(source))
    }

    fn build(v4_cidr: &str, state: Option<Arc<dyn StateSource>>) -> Self {
        Self::build_with(v4_cidr, "", state)
    }

    /// As `build`, with `extra` appended to the configuration.
    fn build_with(v4_cidr: &str, extra: &str, state: Option<Arc<dyn StateSource>>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let yaml = format!("nodeName: n0\npodCIDRs: [{v4_cidr}, \"{V6_CIDR}\"]\nstateDir: {}\n{extra}", state_dir(&dir).display());
        let config = AgentConfig::parse(Path::new("agent.yaml"), &yaml).expect("the test configuration is valid");
        let db = Arc::new(AgentDb::open(&state_dir(&dir)).expect("open the agent database"));
        let (datapath, plumber) = (SharedFake::default(), FakePlumber::default());
        let agent = start(&config, &db, &datapath, &plumber, &state);
        Self { agent, db, config, datapath, plumber, state, dir }
    }

    /// Stops the agent and starts a new one on the same database, maps and interfaces.
    fn restart(self) -> Self {
        let Harness { agent, db, config, datapath, plumber, state, dir } = self;
        drop(agent);
        drop(db);
        let db = Arc::new(AgentDb::open(&state_dir(&dir)).expect("the database opens again once the old agent is gone"));
        let agent = start(&config, &db, &datapath, &plumber, &state);
        Self { agent, db, config, datapath, plumber, state, dir }
    }

    /// An ADD/DEL/CHECK request for `container_id` on eth0; its network namespace file exists.
    fn request(&self, container_id: &str) -> CniRequest {
        let netns = self.dir.path().join("netns").join(container_id);
        std::fs::create_dir_all(self.dir.path().join("netns")).expect("netns directory");
        std::fs::write(&netns, b"").expect("netns file");
        CniRequest {
            container_id: container_id.to_owned(),
            ifname: "eth0".to_owned(),
            netns: netns.display().to_string(),
            pod_namespace: None,
            pod_name: None,
            mtu: None,
        }
    }

    fn pod_request(&self, container_id: &str, namespace: &str, name: &str) -> CniRequest {
        CniRequest { pod_namespace: Some(namespace.to_owned()), pod_name: Some(name.to_owned()), ..self.request(container_id) }
    }

    async fn add(&self, container_id: &str) -> CniAddResult {
        match self.agent.cni_add(self.request(container_id)).await {
            Ok(result) => result,
            Err(e) => panic!("ADD of {container_id} must succeed: {e}"),
        }
    }

    async fn del(&self, container_id: &str) {
        if let Err(e) = self.agent.cni_del(self.request(container_id)).await {
            panic!("DEL of {container_id} must succeed: {e}");
        }
    }

    async fn gc(&self, valid: &[&str]) -> Vec<CniAttachment> {
        let valid_attachments = valid.iter().map(|c| attachment(c)).collect();
        self.agent.cni_gc(CniGcRequest { valid_attachments }).await.expect("GC succeeds").released
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.agent.endpoints().expect("the endpoint list is readable")
    }

    fn endpoint(&self, container_id: &str) -> Endpoint {
        let found = self.endpoints().into_iter().find(|e| e.container_id == container_id);
        found.unwrap_or_else(|| panic!("endpoint {container_id} must be listed"))
    }

    fn container_ids(&self) -> Vec<String> {
        self.endpoints().into_iter().map(|e| e.container_id).collect()
    }

    /// What the IPAM holds, read through a second allocator on the same database.
    fn held(&self) -> BTreeMap<Owner, Allocation> {
        let ipam = Ipam::new(self.db.clone(), self.config.ipv4_cidr(), self.config.ipv6_cidr()).expect("IPAM view");
        ipam.list().expect("IPAM list").into_iter().collect()
    }

    /// Identity number -> how many endpoints hold it.
    fn identity_refs(&self) -> BTreeMap<u32, u64> {
        let identities = Identities::new(self.db.clone()).expect("identity view");
        identities.list().expect("identity list").into_iter().map(|i| (i.id, i.references)).collect()
    }

    fn tables(&self) -> FakeDatapath {
        self.datapath.tables()
    }

    /// Every store agrees with the endpoint records, and holds nothing more: each endpoint's
    /// addresses are held by the IPAM, its interface exists, its map entries and attachment are
    /// there, it holds one identity reference; and nothing exists that no endpoint claims.
    fn assert_consistent(&self, context: &str) {
        let endpoints = self.endpoints();
        let held = self.held();
        let tables = self.tables();
        let interfaces = self.plumber.interfaces();
        let mut addresses = 0;
        for ep in &endpoints {
            let name = &ep.container_id;
            let owner = Owner::new(ep.container_id.clone(), ep.ifname.clone());
            assert_eq!(
                held.get(&owner),
                Some(&Allocation { ipv4: ep.ipv4, ipv6: ep.ipv6 }),
                "{context}: the IPAM must hold the addresses of endpoint {name}"
            );
            assert_eq!(
                interfaces.get(&ep.host_ifname).map(|i| i.ifindex),
                Some(ep.host_ifindex),
                "{context}: the host interface of {name} must exist with the recorded ifindex"
            );
            let info =
                tables.ifindexes.get(&ep.host_ifindex).unwrap_or_else(|| panic!("{context}: endpoint {name} must have its ifindex entry"));
            assert_eq!(
                (info.endpoint_id, info.identity),
                (ep.id, ep.identity),
                "{context}: the ifindex entry of {name} must carry its number and identity"
            );
            for addr in [ep.ipv4.map(IpAddr::from), ep.ipv6.map(IpAddr::from)].into_iter().flatten() {
                addresses += 1;
                assert_eq!(
                    tables.addresses.get(&addr),
                    Some(info),
                    "{context}: address {addr} of {name} must map to the same value as its interface"
                );
            }
            assert!(tables.attached.contains(&ep.host_ifname), "{context}: from-pod must be attached on {}", ep.host_ifname);
        }
        assert_eq!(held.len(), endpoints.len(), "{context}: the IPAM must hold addresses for the endpoints only: {held:?}");
        assert_eq!(tables.addresses.len(), addresses, "{context}: no address entry without an endpoint: {:?}", tables.addresses.keys());
        assert_eq!(
            tables.ifindexes.len(),
            endpoints.len(),
            "{context}: no ifindex entry without an endpoint: {:?}",
            tables.ifindexes.keys()
        );
        assert_eq!(tables.attached.len(), endpoints.len(), "{context}: no attachment without an endpoint: {:?}", tables.attached);
        assert_eq!(interfaces.len(), endpoints.len(), "{context}: no interface without an endpoint: {:?}", interfaces.keys());
        let references: u64 = self.identity_refs().values().sum();
        assert_eq!(references, endpoints.len() as u64, "{context}: one identity reference per endpoint");
    }

    /// Nothing is held anywhere.
    fn assert_clean(&self, context: &str) {
        assert_eq!(self.container_ids(), Vec::<String>::new(), "{context}: no endpoint must be recorded");
        self.assert_consistent(context);
    }
}

fn state_dir(dir: &TempDir) -> PathBuf {
    dir.path().join("state")
}

fn start(
    config: &AgentConfig,
    db: &Arc<AgentDb>,
    datapath: &SharedFake,
    plumber: &FakePlumber,
    state: &Option<Arc<dyn StateSource>>,
) -> Agent {
    Agent::new(AgentParts {
        services: None,
        policies: None,
        socket_lb: "off".into(),
        xdp: None,
        config: config.clone(),
        db: db.clone(),
        datapath: Box::new(datapath.clone()),
        plumber: Box::new(plumber.clone()),
        state: state.clone(),
        host_routing: HostRoutingDecision { mode: HostRouting::Bpf, reason: "test".into() },
        netdevs: vec![],
        started: Instant::now(),
        observer: Arc::new(sluice_agent::observer::Observer::new("n0", 16)),
        events: Arc::new(sluice_agent::events::Events::new(db.clone(), "n0", 16).expect("event log")),
        cluster: None,
    })
    .expect("the agent starts on a fresh or reopened database")
}

fn attachment(container_id: &str) -> CniAttachment {
    CniAttachment { container_id: container_id.to_owned(), ifname: "eth0".to_owned() }
}

fn v4_cidr() -> Ipv4Net {
    V4_CIDR.parse().expect("IPv4 CIDR")
}

fn v6_cidr() -> Ipv6Net {
    V6_CIDR.parse().expect("IPv6 CIDR")
}

// === ADD ===

#[tokio::test]
async fn add_returns_both_interfaces_and_programs_the_endpoint() {
    let h = Harness::new();
    let req = h.request("c1");
    let netns = req.netns.clone();
    let result = h.agent.cni_add(req).await.expect("ADD of a valid attachment succeeds");

    let ep = h.endpoint("c1");
    let iface = h.plumber.interfaces().get(&ep.host_ifname).cloned().expect("the plumber created the host interface");
    // .0 is the network and .1 the node side: the first pod gets .2 (and ::2).
    let v4 = Ipv4Addr::new(198, 19, 0, 2);
    let v6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

    assert_eq!(ep.host_ifname, host_ifname(&Owner::new("c1", "eth0")), "host interface named from the attachment");
    assert_eq!(result.interfaces.len(), 2, "host and pod interfaces: {:?}", result.interfaces);
    let (host, pod) = (&result.interfaces[0], &result.interfaces[1]);
    assert_eq!(host.name, ep.host_ifname, "first interface is the host side");
    assert_eq!(host.sandbox, None, "the host side has no sandbox");
    assert_eq!(host.mac, iface.host_mac.to_string(), "host side MAC as plumbed");
    assert_eq!(host.mtu, 1500, "host side MTU is the configured default");
    assert_eq!(pod.name, "eth0", "second interface is the pod side, named CNI_IFNAME");
    assert_eq!(pod.sandbox.as_deref(), Some(netns.as_str()), "the pod side's sandbox is CNI_NETNS");
    assert_eq!(pod.mac, iface.pod_mac.to_string(), "pod side MAC as plumbed");
    assert_eq!(pod.mtu, 1500, "pod side MTU is the configured default");

    let expected_ips = vec![
        CniIpConfig { address: IpNet::from(IpAddr::V4(v4)), gateway: IpAddr::V4(GATEWAY_V4), interface: 1 },
        CniIpConfig { address: IpNet::from(IpAddr::V6(v6)), gateway: IpAddr::V6(GATEWAY_V6), interface: 1 },
    ];
    assert_eq!(result.ips, expected_ips, "an IPv4 /32 and an IPv6 /128 on the pod interface, via the link-local gateways");
    assert!(v4_cidr().contains(&v4) && v6_cidr().contains(&v6), "addresses come from the pod CIDRs");
    let expected_routes = vec![
        CniRoute { dst: "0.0.0.0/0".parse().expect("route"), gw: IpAddr::V4(GATEWAY_V4) },
        CniRoute { dst: "::/0".parse().expect("route"), gw: IpAddr::V6(GATEWAY_V6) },
    ];
    assert_eq!(result.routes, expected_routes, "a default route per family");

    assert_eq!(ep.id, 1, "the first endpoint gets number 1");
    assert_eq!((ep.ipv4, ep.ipv6), (Some(v4), Some(v6)), "the record holds the returned addresses");
    assert_eq!(ep.netns, netns, "the record keeps the netns path");
    assert_eq!(ep.host_ifindex, iface.ifindex, "the record holds the plumbed ifindex");
    assert!(ep.identity >= FIRST_DYNAMIC, "a pod gets a dynamic identity, got {}", ep.identity);
    let plumbed = (iface.netns.display().to_string(), iface.ifname.as_str(), iface.ipv4, iface.ipv6, iface.mtu);
    assert_eq!(
        plumbed,
        (netns.clone(), "eth0", Some(v4), Some(v6), 1500),
        "the plumber was asked for the pod's namespace, name, addresses and MTU"
    );

    let tables = h.tables();
    let info = tables.ifindexes.get(&iface.ifindex).expect("the ifindex entry is programmed");
    assert_eq!(info.ifindex, iface.ifindex, "the entry names the host ifindex");
    assert_eq!((info.endpoint_id, info.identity), (ep.id, ep.identity), "the entry carries the endpoint number and identity");
    assert_eq!((info.mac, info.node_mac), (iface.pod_mac.0, iface.host_mac.0), "the entry carries the pod and host MACs");
    assert_eq!(tables.addresses.get(&IpAddr::V4(v4)), Some(info), "the IPv4 address is programmed");
    assert_eq!(tables.addresses.get(&IpAddr::V6(v6)), Some(info), "the IPv6 address is programmed");
    assert_eq!(tables.attached, BTreeSet::from([ep.host_ifname.clone()]), "from-pod is attached on the host interface");
    h.assert_consistent("after one ADD");
}

#[tokio::test]
async fn add_uses_the_mtu_of_the_request() {
    let h = Harness::new();
    let req = CniRequest { mtu: Some(9000), ..h.request("c1") };
    let result = h.agent.cni_add(req).await.expect("ADD with an MTU succeeds");
    assert!(result.interfaces.iter().all(|i| i.mtu == 9000), "both interfaces report the requested MTU: {:?}", result.interfaces);
    let ep = h.endpoint("c1");
    assert_eq!(h.plumber.interfaces()[&ep.host_ifname].mtu, 9000, "the interface is plumbed with the requested MTU");
}

#[tokio::test]
async fn repeated_add_is_refused_and_leaves_the_attachment_as_it_was() {
    let h = Harness::new();
    let first = h.add("c1").await;
    h.add("c2").await;
    let entries = |t: FakeDatapath| (t.ifindexes, t.addresses, t.attached);
    let (endpoints, interfaces, tables, held, refs) =
        (h.endpoints(), h.plumber.interfaces(), entries(h.tables()), h.held(), h.identity_refs());

    let err = h.agent.cni_add(h.request("c1")).await.expect_err("a second ADD of an existing attachment is refused");
    assert!(matches!(err, AgentError::AttachmentExists { .. }), "the refusal says the attachment exists: {err:?}");
    assert_eq!(err.cni_code(), 100, "the refusal's CNI code");
    let host_ifname = &first.interfaces[0].name;
    assert!(err.to_string().contains(host_ifname.as_str()), "the message names the existing interface {host_ifname}: {err}");

    assert_eq!(h.endpoints(), endpoints, "the endpoint records are unchanged (number, addresses, MACs, ifindex, identity)");
    assert_eq!(h.plumber.interfaces(), interfaces, "the interfaces are unchanged (same ifindex and MACs)");
    assert_eq!(h.plumber.lock().unplumbed, Vec::<String>::new(), "no interface was removed");
    assert_eq!(entries(h.tables()), tables, "the map entries and attachments are unchanged");
    assert_eq!(h.held(), held, "the addresses held are unchanged");
    assert_eq!(h.identity_refs(), refs, "the identity references are unchanged");
    h.assert_consistent("after a refused repeated ADD");

    h.del("c1").await;
    let again = h.add("c1").await;
    assert_eq!(again.interfaces[0].name, *host_ifname, "after DEL the attachment is added again, under the same host name");
    h.assert_consistent("after DEL and ADD of the refused attachment");
}

/// A record whose interface is gone describes no pod: a new ADD releases it and adds anew.
#[tokio::test]
async fn repeated_add_after_the_interface_vanished_adds_anew() {
    let h = Harness::new();
    h.add("c1").await;
    let before = h.endpoint("c1");
    h.plumber.vanish(&before.host_ifname);

    h.agent.cni_add(h.request("c1")).await.expect("ADD of an attachment whose interface is gone succeeds");
    let after = h.endpoint("c1");
    assert_eq!(h.container_ids(), vec!["c1"], "one record for the attachment");
    assert_ne!(after.host_ifindex, before.host_ifindex, "a new interface was created");
    assert!(!h.tables().ifindexes.contains_key(&before.host_ifindex), "the old ifindex entry is gone");
    h.assert_consistent("after re-adding an attachment whose interface vanished");
}

#[tokio::test]
async fn fifty_adds_get_fifty_distinct_addresses() {
    let h = Harness::new();
    for i in 0..50 {
        h.add(&format!("c{i:02}")).await;
    }
    let endpoints = h.endpoints();
    let v4: BTreeSet<Ipv4Addr> = endpoints.iter().filter_map(|e| e.ipv4).collect();
    let v6: BTreeSet<Ipv6Addr> = endpoints.iter().filter_map(|e| e.ipv6).collect();
    let ids: BTreeSet<u32> = endpoints.iter().map(|e| e.id).collect();
    let names: BTreeSet<&str> = endpoints.iter().map(|e| e.host_ifname.as_str()).collect();
    assert_eq!(endpoints.len(), 50, "fifty endpoints recorded");
    assert_eq!(v4.len(), 50, "fifty distinct IPv4 addresses");
    assert_eq!(v6.len(), 50, "fifty distinct IPv6 addresses");
    assert_eq!(ids, (1..=50).collect(), "endpoint numbers 1 to 50");
    assert_eq!(names.len(), 50, "fifty distinct host interface names");
    assert!(v4.iter().all(|a| v4_cidr().contains(a)), "every IPv4 address is in {V4_CIDR}");
    assert!(v6.iter().all(|a| v6_cidr().contains(a)), "every IPv6 address is in {V6_CIDR}");
    h.assert_consistent("after fifty ADDs");
}

#[tokio::test]
async fn failed_plumb_rolls_back_the_addresses() {
    let h = Harness::new();
    h.plumber.fail_next_plumb();
    let err = h.agent.cni_add(h.request("c1")).await.expect_err("ADD fails when the interface cannot be created");
    assert!(matches!(err, AgentError::Datapath(_)), "the plumbing error is returned: {err:?}");
    h.assert_clean("after a failed plumb");
    assert_eq!(h.gc(&[]).await, Vec::<CniAttachment>::new(), "GC finds nothing to release: the failed ADD left no allocation");

    h.add("c1").await;
    assert_eq!(h.container_ids(), vec!["c1"], "the next ADD of the same attachment succeeds");
    h.assert_consistent("after the ADD that followed the failure");
}

/// A failure after the map entries were written must take them out again.
#[tokio::test]

async fn failed_attach_rolls_back_the_map_entries() {
    let h = Harness::new();
    h.datapath.lock().fail_next_attach = true;
    let err = h.agent.cni_add(h.request("c1")).await.expect_err("ADD fails when from-pod cannot be attached");
    assert!(matches!(err, AgentError::Datapath(_)), "the attach error is returned: {err:?}");
    h.assert_clean("after a failed attach");
}

/// Re-adding an attachment whose interface vanished, and failing, leaves nothing: neither the
/// released record nor the new one, nor a record without addresses.
#[tokio::test]
async fn failed_re_add_after_the_interface_vanished_leaves_nothing() {
    let h = Harness::new();
    h.add("c1").await;
    h.plumber.vanish(&h.endpoint("c1").host_ifname);
    h.plumber.fail_next_plumb();
    let err = h.agent.cni_add(h.request("c1")).await.expect_err("the ADD fails when the interface cannot be created");
    assert!(matches!(err, AgentError::Datapath(_)), "the plumbing error is returned: {err:?}");
    h.assert_clean("after a failed re-ADD");
}

#[tokio::test]
async fn exhausted_pool_refuses_add_and_holds_nothing_for_it() {
    // 198.19.0.0/29: .2 to .6 are allocatable, five pods.
    let h = Harness::with_v4_cidr("198.19.0.0/29");
    for i in 0..5 {
        h.add(&format!("c{i}")).await;
    }
    let err = h.agent.cni_add(h.request("c5")).await.expect_err("a sixth ADD finds the IPv4 pool exhausted");
    assert_eq!(err.cni_code(), 11, "exhaustion is CNI code 11, try again later: {err}");
    assert_eq!(h.plumber.lock().created, 5, "no interface was created for the refused ADD");
    h.assert_consistent("after an ADD refused for exhaustion");
}

// === invalid requests ===

#[tokio::test]
async fn invalid_requests_are_refused_with_code_4_and_allocate_nothing() {
    let h = Harness::new();
    let good = h.request("c1");
    let missing = h.dir.path().join("no-such-netns").display().to_string();
    let cases: [(&str, CniRequest); 11] = [
        ("empty container ID", CniRequest { container_id: String::new(), ..good.clone() }),
        ("container ID starting with '-'", CniRequest { container_id: "-abc".into(), ..good.clone() }),
        ("container ID with '/'", CniRequest { container_id: "abc/def".into(), ..good.clone() }),
        ("container ID with a space", CniRequest { container_id: "abc def".into(), ..good.clone() }),
        ("interface name of 16 bytes", CniRequest { ifname: "abcdefghijklmnop".into(), ..good.clone() }),
        ("interface name with '/'", CniRequest { ifname: "eth/0".into(), ..good.clone() }),
        ("interface name with ':'", CniRequest { ifname: "eth:0".into(), ..good.clone() }),
        ("empty interface name", CniRequest { ifname: String::new(), ..good.clone() }),
        ("interface name '..'", CniRequest { ifname: "..".into(), ..good.clone() }),
        ("empty CNI_NETNS", CniRequest { netns: String::new(), ..good.clone() }),
        ("CNI_NETNS that does not exist", CniRequest { netns: missing, ..good.clone() }),
    ];
    for (what, req) in cases {
        let err = h.agent.cni_add(req.clone()).await.expect_err(what);
        assert!(matches!(err, AgentError::InvalidRequest { code: 4, .. }), "ADD with {what} must be InvalidRequest code 4: {err:?}");
        assert_eq!(err.cni_code(), 4, "ADD with {what}: CNI code 4");
        let err = h.agent.cni_check(req).await.expect_err(what);
        assert_eq!(err.cni_code(), 4, "CHECK with {what}: CNI code 4, got {err:?}");
    }
    let err = h.agent.cni_del(CniRequest { ifname: "eth/0".into(), ..good.clone() }).await.expect_err("DEL with a bad interface name");
    assert_eq!(err.cni_code(), 4, "DEL validates the attachment too: {err:?}");
    assert_eq!(h.plumber.lock().created, 0, "no invalid request reached the plumber");
    h.assert_clean("after invalid requests");

    let longest = CniRequest { ifname: "abcdefghijklmno".into(), ..good };
    h.agent.cni_add(longest).await.expect("an interface name of 15 bytes is valid");
}

// === DEL ===

#[tokio::test]
async fn del_releases_everything_and_is_idempotent() {
    let h = Harness::with_v4_cidr("198.19.0.0/29");
    for i in 0..5 {
        h.add(&format!("c{i}")).await;
    }
    let gone = h.endpoint("c2");
    h.del("c2").await;

    let tables = h.tables();
    assert!(!h.container_ids().contains(&"c2".to_owned()), "the record is deleted");
    for addr in [gone.ipv4.map(IpAddr::from), gone.ipv6.map(IpAddr::from)].into_iter().flatten() {
        assert!(!tables.addresses.contains_key(&addr), "address entry {addr} is removed");
    }
    assert!(!tables.ifindexes.contains_key(&gone.host_ifindex), "the ifindex entry is removed");
    assert!(!tables.attached.contains(&gone.host_ifname), "from-pod is detached");
    assert!(!h.plumber.interfaces().contains_key(&gone.host_ifname), "the interface is removed");
    assert_eq!(h.held().get(&Owner::new("c2", "eth0")), None, "the addresses are released");
    h.assert_consistent("after DEL");

    // The pool is full but for the address DEL freed: a new pod must get exactly it.
    h.add("c5").await;
    assert_eq!(h.endpoint("c5").ipv4, gone.ipv4, "the address DEL freed is handed out again");

    h.del("c2").await;
    h.del("never-added").await;
    let without_netns = CniRequest { netns: String::new(), ..h.request("c0") };
    h.agent.cni_del(without_netns).await.expect("DEL without CNI_NETNS succeeds (the namespace may be gone already)");
    assert!(!h.container_ids().contains(&"c0".to_owned()), "DEL without CNI_NETNS still removes the endpoint");
    for cid in ["c1", "c3", "c4", "c5"] {
        h.del(cid).await;
    }
    h.assert_clean("after every endpoint was deleted");
}

// === CHECK ===

#[tokio::test]
async fn check_passes_for_a_programmed_endpoint_and_fails_otherwise() {
    let h = Harness::new();
    h.add("c1").await;
    h.agent.cni_check(h.request("c1")).await.expect("CHECK of an endpoint as programmed passes");

    let err = h.agent.cni_check(h.request("unknown")).await.expect_err("CHECK of an unknown attachment fails");
    assert!(matches!(err, AgentError::UnknownAttachment(_)), "unknown attachment: {err:?}");
    assert_eq!(err.cni_code(), 3, "an unknown attachment is CNI code 3");

    // The datapath lost the interface entry behind the agent's back.
    let ep = h.endpoint("c1");
    h.datapath.lock().tables.ifindexes.remove(&ep.host_ifindex);
    let err = h.agent.cni_check(h.request("c1")).await.expect_err("CHECK fails when the map entry is missing");
    assert!(
        matches!(&err, AgentError::CheckFailed { reason, .. } if reason.contains("datapath")),
        "the missing entry is the reason: {err:?}"
    );
    h.agent.resync(false).await.expect("resync");
    h.agent.cni_check(h.request("c1")).await.expect("CHECK passes again once resync restored the entry");

    h.plumber.fail_checks("eth0 has lost its address");
    let err = h.agent.cni_check(h.request("c1")).await.expect_err("CHECK fails when the plumber finds the pod side wrong");
    assert!(
        matches!(&err, AgentError::CheckFailed { reason, .. } if reason == "eth0 has lost its address"),
        "the plumber's reason is reported: {err:?}"
    );
}

// === GC ===

#[tokio::test]
async fn gc_releases_every_attachment_not_listed() {
    let h = Harness::new();
    for cid in ["a", "b", "c"] {
        h.add(cid).await;
    }
    // An allocation no endpoint holds, as a crash between IPAM and the record would leave.
    let ipam = Ipam::new(h.db.clone(), h.config.ipv4_cidr(), h.config.ipv6_cidr()).expect("IPAM view");
    ipam.allocate(&Owner::new("orphan", "eth0")).expect("orphan allocation");
    drop(ipam);
    let kept = h.endpoint("b");

    let released = h.gc(&["b", "ghost"]).await;
    assert_eq!(
        released,
        vec![attachment("a"), attachment("c"), attachment("orphan")],
        "endpoints not listed, then bare allocations, are released"
    );
    assert_eq!(h.container_ids(), vec!["b"], "only the listed endpoint remains");
    let tables = h.tables();
    let addrs: BTreeSet<IpAddr> = tables.addresses.keys().copied().collect();
    let kept_addrs = BTreeSet::from([IpAddr::from(kept.ipv4.expect("IPv4")), IpAddr::from(kept.ipv6.expect("IPv6"))]);
    assert_eq!(addrs, kept_addrs, "the datapath keeps only the listed endpoint's addresses");
    assert_eq!(tables.ifindexes.keys().copied().collect::<Vec<_>>(), vec![kept.host_ifindex], "and only its interface entry");
    assert_eq!(tables.attached, BTreeSet::from([kept.host_ifname.clone()]), "and only its attachment");
    h.assert_consistent("after GC");

    assert_eq!(h.gc(&["b"]).await, Vec::<CniAttachment>::new(), "a second GC releases nothing");
}

// === resync ===

#[tokio::test]
async fn resync_releases_vanished_endpoints_and_prunes_unclaimed_entries() {
    let h = Harness::new();
    h.add("a").await;
    h.add("b").await;
    let vanished = h.endpoint("a");
    h.plumber.vanish(&vanished.host_ifname);
    let stale = EndpointEntry {
        endpoint_id: 99,
        host_ifindex: 9999,
        host_ifname: "lxcstale".into(),
        identity: FIRST_DYNAMIC,
        ipv4: Some(Ipv4Addr::new(198, 19, 0, 200)),
        ipv6: Some(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x200)),
        mac: Mac([2, 0, 0, 0, 0, 0x99]),
        node_mac: Mac([2, 0, 0, 0, 1, 0x99]),
    };
    {
        let mut dp = h.datapath.lock();
        dp.tables.upsert_endpoint(&stale).expect("inject entry");
        dp.tables.attach_endpoint(&stale.host_ifname).expect("inject attachment");
    }
    let ipam = Ipam::new(h.db.clone(), h.config.ipv4_cidr(), h.config.ipv6_cidr()).expect("IPAM view");
    ipam.allocate(&Owner::new("orphan", "eth0")).expect("orphan allocation");
    drop(ipam);

    let report = h.agent.resync(false).await.expect("resync");
    let expected = ReconcileReport { upserted: 0, removed_addresses: 2, removed_interfaces: 1, attached: 0, detached: 1 };
    assert_eq!(report, expected, "the injected entry's two addresses, interface and attachment are pruned, nothing else changes");
    assert_eq!(h.container_ids(), vec!["b"], "the endpoint whose interface vanished is released");
    let tables = h.tables();
    assert!(!tables.ifindexes.contains_key(&vanished.host_ifindex), "the vanished endpoint's entry is removed");
    assert!(!tables.attached.contains(&vanished.host_ifname), "the vanished endpoint is detached");
    assert_eq!(h.held().get(&Owner::new("orphan", "eth0")), None, "addresses no endpoint holds are freed");
    h.assert_consistent("after resync");

    let again = h.agent.resync(false).await.expect("second resync");
    assert!(!again.changed(), "a converged datapath needs no change: {again:?}");
}

#[tokio::test]
async fn resync_follows_a_recreated_interface() {
    let h = Harness::new();
    h.add("a").await;
    let before = h.endpoint("a");
    let new_index = h.plumber.recreate(&before.host_ifname);

    let report = h.agent.resync(false).await.expect("resync");
    assert_eq!(report.upserted, 1, "the endpoint is rewritten under its new ifindex: {report:?}");
    assert_eq!(report.removed_interfaces, 1, "the old ifindex entry is removed: {report:?}");
    assert_eq!(h.endpoint("a").host_ifindex, new_index, "the record follows the new ifindex");
    assert_eq!(h.endpoint("a").id, before.id, "same endpoint");
    h.assert_consistent("after resync with a re-created interface");
}

// === cluster mode ===

/// In cluster mode a CNI ADD for a pod the agent's view does not hold waits for it (bounded) and
/// then fails with "try again later"; a pod that shows up during the wait is added. (The view
/// is a published snapshot standing in for the etcd source: the etcd side is tested against a
/// real etcd in crates/state/tests and crates/cli/tests/lab_cluster.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_add_of_an_unknown_pod_waits_then_fails_with_code_11() {
    let web = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let source = Arc::new(sluice_state::SnapshotPublisher::new("etcd"));
    let published = |pods: &[&str]| {
        let mut store = sluice_state::Store::default();
        for name in pods {
            let meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some((*name).into()),
                namespace: Some("default".into()),
                labels: Some(web.clone()),
                ..Default::default()
            };
            store.pods.insert(
                sluice_state::Store::pod_key("default", name),
                k8s_openapi::api::core::v1::Pod { metadata: meta, ..Default::default() },
            );
        }
        store
    };
    source.publish(sluice_state::ClusterState { revision: 1, synced: true, objects: Arc::new(published(&["known"])) });
    let cluster = "state: {source: etcd, etcd: {endpoints: [\"http://127.0.0.1:9\"]}, podWaitSeconds: 1}\n";
    let h = Harness::build_with(V4_CIDR, cluster, Some(source.clone() as Arc<dyn StateSource>));

    h.agent.cni_add(h.pod_request("k1", "default", "known")).await.expect("a pod in the view is added");
    assert_eq!(h.endpoint("k1").labels.get("app").map(String::as_str), Some("web"), "with the labels the view gives it");

    let started = std::time::Instant::now();
    let err = h.agent.cni_add(h.pod_request("u1", "default", "unknown")).await.expect_err("an unknown pod is refused");
    let waited = started.elapsed();
    assert_eq!(err.cni_code(), 11, "try again later: {err}");
    assert!(err.to_string().contains("default/unknown"), "the error names the pod: {err}");
    assert!(
        waited >= std::time::Duration::from_millis(900) && waited < std::time::Duration::from_secs(3),
        "the wait is bounded by podWaitSeconds: {waited:?}"
    );
    assert_eq!(h.endpoints().len(), 1, "the refused ADD left no endpoint behind");
    assert_eq!(h.held().len(), 1, "and no address held");

    let later = {
        let source = source.clone();
        let store = published(&["known", "late"]);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            source.publish(sluice_state::ClusterState { revision: 2, synced: true, objects: Arc::new(store) });
        })
    };
    h.agent.cni_add(h.pod_request("l1", "default", "late")).await.expect("a pod that shows up during the wait is added");
    later.await.expect("publisher task");
}

// === identities ===

#[tokio::test]
async fn pods_with_equal_labels_share_an_identity() {
    let team: BTreeMap<String, String> = BTreeMap::from([("team".into(), "a".into())]);
    let (web_labels, db_labels) = (BTreeMap::from([("app".into(), "web".into())]), BTreeMap::from([("app".into(), "db".into())]));
    let ns_labels = sluice_model::labels::namespace_labels("default", Some(&team));
    let web = LabelSet::for_pod(&web_labels, "default", &ns_labels);
    let db = LabelSet::for_pod(&db_labels, "default", &ns_labels);
    let h = Harness::with_source(source_with(
        &[("default", &team)],
        &[(("default", "web-1"), &web_labels), (("default", "web-2"), &web_labels), (("default", "db-1"), &db_labels)],
    ));
    for (cid, name) in [("w1", "web-1"), ("w2", "web-2"), ("d1", "db-1"), ("u1", "unknown")] {
        h.agent.cni_add(h.pod_request(cid, "default", name)).await.expect("ADD of a pod");
    }
    h.add("bare").await;
    let (w1, w2, d1, u1, bare) = (h.endpoint("w1"), h.endpoint("w2"), h.endpoint("d1"), h.endpoint("u1"), h.endpoint("bare"));

    assert!(w1.identity >= FIRST_DYNAMIC, "a pod identity is dynamic, got {}", w1.identity);
    assert_eq!(w1.identity, w2.identity, "pods with the same labels share an identity");
    assert!(d1.identity >= FIRST_DYNAMIC, "a pod identity is dynamic, got {}", d1.identity);
    assert_ne!(d1.identity, w1.identity, "pods with other labels get another identity");
    assert_eq!(&w1.labels, web.as_map(), "the endpoint records the label set its identity stands for");
    assert_eq!(&d1.labels, db.as_map(), "the endpoint records its own labels");
    assert_eq!(
        &u1.labels,
        LabelSet::for_pod(&BTreeMap::new(), "default", &ns_labels).as_map(),
        "a pod the state source does not know gets its namespace's labels only"
    );
    assert!(bare.labels.is_empty(), "an attachment without pod arguments has no labels");
    let ids = BTreeSet::from([w1.identity, d1.identity, u1.identity, bare.identity]);
    assert_eq!(ids.len(), 4, "four distinct label sets, four identities: {ids:?}");
    assert_eq!(h.identity_refs().get(&w1.identity), Some(&2), "both web pods hold the web identity");
    assert_eq!(h.tables().ifindexes[&w2.host_ifindex].identity, w1.identity, "the datapath carries the shared identity");
    h.assert_consistent("after ADDs with labels");

    h.del("w1").await;
    h.del("w2").await;
    assert_eq!(h.identity_refs().get(&w1.identity), Some(&0), "the web identity is no longer held once both pods are gone");
}

// === an ADD cut short ===

impl Harness {
    /// What an ADD killed after its interface was made and before its record was written
    /// leaves: addresses, an identity hold and the interface pair, no record, no map entry.
    async fn add_cut_short(&self, container_id: &str) -> String {
        let owner = Owner::new(container_id, "eth0");
        let ipam = Ipam::new(self.db.clone(), self.config.ipv4_cidr(), self.config.ipv6_cidr()).expect("IPAM view");
        let alloc = ipam.allocate(&owner).expect("the cut-short ADD's addresses");
        let key = format!("{container_id}/eth0");
        Identities::new(self.db.clone()).expect("identity view").acquire(&BTreeMap::new(), &key).expect("its identity hold");
        let host = host_ifname(&owner);
        let req = self.request(container_id);
        let plumb = PlumbRequest {
            netns: req.netns.into(),
            ifname: "eth0".into(),
            host_ifname: host.clone(),
            ipv4: alloc.ipv4,
            ipv6: alloc.ipv6,
            mtu: 1500,
        };
        self.plumber.create_pair(&plumb).await.expect("its interface pair");
        host
    }
}

#[tokio::test]
async fn restart_releases_what_an_add_cut_short_left() {
    let h = Harness::new();
    h.add("a").await;
    let host = h.add_cut_short("cut").await;
    assert!(h.plumber.interfaces().contains_key(&host), "test setup: the cut-short ADD left its interface");

    let h = h.restart();
    h.agent.resync(true).await.expect("start-up resync");
    assert!(!h.plumber.interfaces().contains_key(&host), "the interface no record holds is removed");
    assert_eq!(h.held().get(&Owner::new("cut", "eth0")), None, "its addresses are freed");
    assert_eq!(h.container_ids(), vec!["a"], "the recorded endpoint stays");
    h.assert_consistent("after the start-up resync");

    // The runtime's retry of the cut-short call: DEL, then ADD, both succeed.
    h.del("cut").await;
    h.add("cut").await;
    h.assert_consistent("after the runtime's DEL and ADD");
}

#[tokio::test]
async fn del_of_an_add_cut_short_removes_its_interface() {
    let h = Harness::new();
    let host = h.add_cut_short("cut").await;
    h.del("cut").await;
    assert!(!h.plumber.interfaces().contains_key(&host), "DEL removes the interface named after the attachment");
    assert!(h.plumber.lock().unplumbed.contains(&host), "by unplumbing it");
    h.assert_clean("after DEL of the cut-short ADD");
}

#[tokio::test]
async fn gc_releases_what_an_add_cut_short_left_even_when_listed() {
    let h = Harness::new();
    h.add("a").await;
    let host = h.add_cut_short("cut").await;
    let released = h.gc(&["a", "cut"]).await;
    assert_eq!(released, vec![attachment("cut")], "the runtime lists the attachment, but no record holds it: released");
    assert!(!h.plumber.interfaces().contains_key(&host), "its interface is removed");
    h.assert_consistent("after GC");
}

// === restart ===

#[tokio::test]
async fn restart_reattaches_every_endpoint_without_duplicates_or_leaks() {
    let h = Harness::new();
    for cid in ["a", "b", "c"] {
        h.add(cid).await;
    }
    let before = h.endpoints();
    let tables_before = h.tables();

    let h = h.restart();
    let report = h.agent.resync(true).await.expect("start-up resync");
    let expected = ReconcileReport { upserted: 0, removed_addresses: 0, removed_interfaces: 0, attached: 3, detached: 0 };
    assert_eq!(report, expected, "start-up re-attaches every endpoint and rewrites no converged entry");
    assert_eq!(h.endpoints(), before, "the endpoints survive the restart as they were");
    let tables = h.tables();
    assert_eq!(tables.addresses, tables_before.addresses, "the address entries are unchanged");
    assert_eq!(tables.ifindexes, tables_before.ifindexes, "the interface entries are unchanged");
    assert_eq!(tables.attached, tables_before.attached, "every endpoint is attached");
    h.assert_consistent("after restart");

    let err = h.agent.cni_add(h.request("b")).await.expect_err("a repeated ADD after restart is refused");
    assert!(matches!(err, AgentError::AttachmentExists { .. }), "the restarted agent knows the attachment exists: {err:?}");
    assert_eq!(h.endpoints(), before, "the refused ADD changed no endpoint");
    h.add("d").await;
    let d = h.endpoint("d");
    assert_eq!(d.id, 4, "a new endpoint after restart gets a new number");
    assert!(before.iter().all(|e| e.ipv4 != d.ipv4 && e.ipv6 != d.ipv6), "a new endpoint after restart gets addresses no endpoint holds");
    h.assert_consistent("after ADDs following the restart");
}

#[tokio::test]
async fn restart_with_empty_maps_reprograms_every_endpoint() {
    let h = Harness::new();
    for cid in ["a", "b"] {
        h.add(cid).await;
    }
    let before = h.endpoints();
    h.datapath.lock().tables = FakeDatapath::default();

    let h = h.restart();
    let report = h.agent.resync(true).await.expect("start-up resync");
    assert_eq!((report.upserted, report.attached), (2, 2), "every endpoint is written and attached again: {report:?}");
    assert_eq!(h.endpoints(), before, "the endpoints survive the restart as they were");
    h.assert_consistent("after restart on empty maps");
}
