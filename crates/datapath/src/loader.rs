//! Loads the embedded datapath objects against the node's pinned maps and attaches them with
//! pinned tcx links. A restarted agent loads fresh programs, attaches each before removing the
//! old link, and finds the maps (and so every endpoint) where it left them.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use sluice_abi::endpoint_info;

use crate::endpoint::key_addr;
use crate::policy::{PolicyMaps, PolicyTables};
use crate::services::{ServiceMaps, ServiceTables};
use crate::tables::{CounterValue, DatapathTables};
use crate::{DatapathError, EndpointEntry};

/// The compiled objects, embedded at build time.
pub struct Objects;

impl Objects {
    pub const FROM_POD: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/from_pod.o"));
    pub const FROM_NETDEV: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/from_netdev.o"));
    pub const TO_POD: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/to_pod.o"));
    pub const SOCK_LB: &'static [u8] = crate::SocketLb::OBJECT;
    pub const PROBE: &'static [u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe.o"));
}

/// How pod traffic is routed on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRouting {
    /// The node's IP stack routes pod traffic (iptables, conntrack and all).
    Legacy,
    /// The datapath delivers with bpf_redirect_peer and bpf_fib_lookup + bpf_redirect_neigh.
    Bpf,
}

impl HostRouting {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRouting::Legacy => "legacy",
            HostRouting::Bpf => "bpf",
        }
    }

    fn abi_value(self) -> u32 {
        match self {
            HostRouting::Legacy => sluice_abi::SLUICE_HOST_ROUTING_LEGACY,
            HostRouting::Bpf => sluice_abi::SLUICE_HOST_ROUTING_BPF,
        }
    }
}

/// Which forwarded packets make trace events (drop events are always made, rate-limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorAggregation {
    /// Drop events only.
    Off,
    /// Also the first packet of each flow and each new TCP SYN, FIN or RST.
    Medium,
    /// Also every forwarded packet.
    All,
}

impl MonitorAggregation {
    fn abi_value(self) -> u32 {
        match self {
            MonitorAggregation::Off => sluice_abi::SLUICE_MONITOR_OFF,
            MonitorAggregation::Medium => sluice_abi::SLUICE_MONITOR_MEDIUM,
            MonitorAggregation::All => sluice_abi::SLUICE_MONITOR_ALL,
        }
    }
}

/// Load-time configuration of the datapath objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub host_routing: HostRouting,
    pub monitor: MonitorAggregation,
    /// Drop events each CPU may report per second; the rest are counted as lost.
    pub drop_events_per_second: u32,
    /// Size of the events ring buffer: a power of two, at least one page.
    pub events_buffer_bytes: u32,
    /// Entries of each set's Maglev table: a prime.
    pub maglev_table_size: u32,
    /// Capacity of the service conntrack table.
    pub conntrack_entries: u32,
    /// Capacity of the policy conntrack table.
    pub policy_conntrack_entries: u32,
    /// This node's addresses: the source of NodePort flows it forwards to other nodes.
    pub node_ipv4: Option<Ipv4Addr>,
    pub node_ipv6: Option<Ipv6Addr>,
}

impl LoadOptions {
    pub fn new(host_routing: HostRouting) -> Self {
        Self {
            host_routing,
            monitor: MonitorAggregation::Medium,
            drop_events_per_second: 1000,
            events_buffer_bytes: 1 << 20,
            maglev_table_size: sluice_abi::SLUICE_MAGLEV_DEFAULT_SIZE,
            conntrack_entries: sluice_abi::SLUICE_CT_DEFAULT_ENTRIES,
            policy_conntrack_entries: sluice_abi::SLUICE_POLICY_CT_DEFAULT_ENTRIES,
            node_ipv4: None,
            node_ipv6: None,
        }
    }
}

/// Entries in use and capacity of one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPressure {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: usize,
}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Key(sluice_abi::endpoint_key);
// SAFETY: a plain C struct of byte arrays with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for Key {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Info(sluice_abi::endpoint_info);
// SAFETY: a plain C struct of integers and byte arrays with no implicit padding.
unsafe impl aya::Pod for Info {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct Counter(sluice_abi::traffic_counter);
// SAFETY: two u64s.
unsafe impl aya::Pod for Counter {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct FlowKey(sluice_abi::flow_key);
// SAFETY: a plain C struct of byte arrays and integers with explicit padding.
unsafe impl aya::Pod for FlowKey {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct FlowState(sluice_abi::flow_state);
// SAFETY: a u64 and bytes with explicit padding.
unsafe impl aya::Pod for FlowState {}

const FROM_POD: &str = "from_pod";
const FROM_NETDEV: &str = "from_netdev";
const TO_POD: &str = "to_pod";

/// The loaded datapath of one node.
pub struct BpfDatapath {
    pin_dir: PathBuf,
    mode: HostRouting,
    from_pod: Ebpf,
    from_netdev: Ebpf,
    to_pod: Ebpf,
    endpoints: HashMap<MapData, Key, Info>,
    endpoint_ifaces: HashMap<MapData, u32, Info>,
    drop_counters: PerCpuArray<MapData, Counter>,
    fwd_counters: PerCpuArray<MapData, Counter>,
    event_lost: PerCpuArray<MapData, u64>,
    trace_flows: HashMap<MapData, FlowKey, FlowState>, // an LRU hash; aya reads both kinds the same way
    events: Option<aya::maps::RingBuf<MapData>>,
    services: ServiceMaps,
    policy: PolicyMaps,
}

// === impl BpfDatapath ===

impl BpfDatapath {
    /// Loads both entry objects with `mode` baked into their read-only configuration. Maps are
    /// created and pinned under `pin_dir` the first time, reused after that. `pin_dir` must be on
    /// a bpffs (see [`crate::ensure_bpffs`]).
    pub fn load(pin_dir: &Path, mode: HostRouting) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, &LoadOptions::new(mode))
    }

    /// As [`BpfDatapath::load`], with every load-time option.
    pub fn load_with(pin_dir: &Path, opts: &LoadOptions) -> Result<Self, DatapathError> {
        let mode = opts.host_routing;
        let links = pin_dir.join("links");
        fs::create_dir_all(&links).map_err(|e| DatapathError::os(format!("creating {}", links.display()), e))?;
        // The events ring buffer is made anew by every agent: a reader opened on a ring that an
        // earlier reader left part-consumed starts from a stale producer position (aya 0.13)
        // and would read old records forever. Programs still attached keep the old ring until
        // their links are updated; what they report meanwhile had no reader anyway.
        let events_pin = pin_dir.join("events");
        if events_pin.exists() {
            fs::remove_file(&events_pin).map_err(|e| DatapathError::os(format!("removing {}", events_pin.display()), e))?;
        }
        let mut from_pod = load_object(FROM_POD, Objects::FROM_POD, pin_dir, opts)?;
        let from_netdev = load_object(FROM_NETDEV, Objects::FROM_NETDEV, pin_dir, opts)?;
        let to_pod = load_object(TO_POD, Objects::TO_POD, pin_dir, opts)?;
        let endpoints = take_map(&mut from_pod, "endpoints", HashMap::try_from)?;
        let endpoint_ifaces = take_map(&mut from_pod, "endpoint_ifaces", HashMap::try_from)?;
        let drop_counters = take_map(&mut from_pod, "drop_counters", PerCpuArray::try_from)?;
        let fwd_counters = take_map(&mut from_pod, "fwd_counters", PerCpuArray::try_from)?;
        let event_lost = take_map(&mut from_pod, "event_lost", PerCpuArray::try_from)?;
        let trace_flows = take_map(&mut from_pod, "trace_flows", HashMap::try_from)?;
        let events = Some(take_map(&mut from_pod, "events", aya::maps::RingBuf::try_from)?);
        let services = ServiceMaps::take(&mut from_pod, opts.conntrack_entries)?;
        let policy = PolicyMaps::take(&mut from_pod, opts.policy_conntrack_entries)?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            mode,
            from_pod,
            from_netdev,
            to_pod,
            endpoints,
            endpoint_ifaces,
            drop_counters,
            fwd_counters,
            event_lost,
            trace_flows,
            events,
            services,
            policy,
        })
    }

    pub fn mode(&self) -> HostRouting {
        self.mode
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches from-netdev to a node device (the uplink), replacing an older attachment.
    pub fn attach_netdev(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let path = self.link_pin(FROM_NETDEV, ifname);
        attach(&mut self.from_netdev, FROM_NETDEV, ifname, TcAttachType::Ingress, &path)
    }

    /// Interfaces carrying program `program` according to the link pins.
    pub fn attached(&self, program: &str) -> Result<Vec<String>, DatapathError> {
        let dir = self.pin_dir.join("links");
        let entries = fs::read_dir(&dir).map_err(|e| DatapathError::os(format!("reading {}", dir.display()), e))?;
        let prefix = format!("{program}@");
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix(&prefix)).map(|n| n.replace(':', ".")))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The events ring buffer, for the flow observer (once: the observer owns it).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.events.take()
    }

    /// Events not delivered, indexed by `sluice_event_loss`, summed over CPUs.
    pub fn event_losses(&self) -> Result<Vec<u64>, DatapathError> {
        let mut out = Vec::new();
        for values in self.event_lost.iter() {
            let values = values.map_err(|source| DatapathError::Map { map: "event_lost", source: Box::new(source) })?;
            out.push(values.iter().sum());
        }
        Ok(out)
    }

    /// Entries in use and capacity of the hash maps.
    pub fn map_pressure(&self) -> Vec<MapPressure> {
        let max = sluice_abi::SLUICE_MAX_ENDPOINTS as usize;
        let mut out = vec![
            MapPressure { map: "endpoints", entries: self.endpoints.keys().count(), capacity: max },
            MapPressure { map: "endpoint_ifaces", entries: self.endpoint_ifaces.keys().count(), capacity: max },
            MapPressure { map: "trace_flows", entries: self.trace_flows.keys().count(), capacity: sluice_abi::SLUICE_TRACE_FLOWS as usize },
        ];
        out.extend(self.services.service_pressure());
        out.extend(self.policy.policy_pressure());
        out
    }

    /// Drops, indexed by `point * SLUICE_DROP_REASON_MAX + sluice_drop_reason`.
    pub fn drop_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        sum_counters(&self.drop_counters, "drop_counters")
    }

    /// Forwarding decisions, indexed by `point * SLUICE_FWD_KIND_MAX + sluice_forward_kind`.
    pub fn forward_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        sum_counters(&self.fwd_counters, "fwd_counters")
    }

    /// The loaded from-pod program, for BPF_PROG_RUN tests.
    pub fn from_pod_program(&self) -> Result<&SchedClassifier, DatapathError> {
        program(&self.from_pod, FROM_POD)
    }

    pub fn from_netdev_program(&self) -> Result<&SchedClassifier, DatapathError> {
        program(&self.from_netdev, FROM_NETDEV)
    }

    pub fn to_pod_program(&self) -> Result<&SchedClassifier, DatapathError> {
        program(&self.to_pod, TO_POD)
    }

    /// `links/<program>@<ifname>`. bpffs refuses '.' in names and interface names may hold
    /// one (eth0.100) but never ':', so '.' is written as ':'.
    fn link_pin(&self, program: &str, ifname: &str) -> PathBuf {
        self.pin_dir.join("links").join(format!("{program}@{}", ifname.replace('.', ":")))
    }
}

impl DatapathTables for BpfDatapath {
    fn upsert_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        let info = Info(entry.info());
        // The by-address entries first: once the interface entry exists the pod may send, and
        // replies must already find it.
        for key in entry.keys() {
            self.endpoints.insert(Key(key), info, 0).map_err(DatapathError::map_write("endpoints", sluice_abi::SLUICE_MAX_ENDPOINTS))?;
        }
        self.endpoint_ifaces
            .insert(entry.host_ifindex, info, 0)
            .map_err(DatapathError::map_write("endpoint_ifaces", sluice_abi::SLUICE_MAX_ENDPOINTS))
    }

    fn remove_endpoint(&mut self, entry: &EndpointEntry) -> Result<(), DatapathError> {
        self.remove_ifindex(entry.host_ifindex)?;
        for key in entry.keys() {
            if let Some(addr) = key_addr(&key) {
                self.remove_address(addr)?;
            }
        }
        Ok(())
    }

    fn programmed_ifindexes(&self) -> Result<Vec<(u32, endpoint_info)>, DatapathError> {
        self.endpoint_ifaces
            .iter()
            .map(|r| r.map(|(k, v)| (k, v.0)).map_err(|source| DatapathError::Map { map: "endpoint_ifaces", source: Box::new(source) }))
            .collect()
    }

    fn programmed_addresses(&self) -> Result<Vec<(IpAddr, endpoint_info)>, DatapathError> {
        let mut out = Vec::new();
        for r in self.endpoints.iter() {
            let (k, v) = r.map_err(|source| DatapathError::Map { map: "endpoints", source: Box::new(source) })?;
            if let Some(addr) = key_addr(&k.0) {
                out.push((addr, v.0));
            }
        }
        Ok(out)
    }

    fn remove_address(&mut self, addr: IpAddr) -> Result<(), DatapathError> {
        let key = match addr {
            IpAddr::V4(a) => crate::endpoint::key_v4(a),
            IpAddr::V6(a) => crate::endpoint::key_v6(a),
        };
        ignore_missing(self.endpoints.remove(&Key(key)), "endpoints")
    }

    fn remove_ifindex(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        ignore_missing(self.endpoint_ifaces.remove(&ifindex), "endpoint_ifaces")
    }

    /// from-pod on the interface's tcx ingress (what the pod sends), to-pod on its egress (what
    /// the node's stack delivers to the pod: ingress policy).
    fn attach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        let path = self.link_pin(TO_POD, host_ifname);
        attach(&mut self.to_pod, TO_POD, host_ifname, TcAttachType::Egress, &path)?;
        let path = self.link_pin(FROM_POD, host_ifname);
        attach(&mut self.from_pod, FROM_POD, host_ifname, TcAttachType::Ingress, &path)
    }

    fn detach_endpoint(&mut self, host_ifname: &str) -> Result<(), DatapathError> {
        unpin_link(&self.link_pin(FROM_POD, host_ifname))?;
        unpin_link(&self.link_pin(TO_POD, host_ifname))
    }

    fn attached_endpoints(&self) -> Result<Vec<String>, DatapathError> {
        self.attached(FROM_POD)
    }

    fn drop_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        BpfDatapath::drop_counters(self)
    }

    fn forward_counters(&self) -> Result<Vec<CounterValue>, DatapathError> {
        BpfDatapath::forward_counters(self)
    }

    fn event_losses(&self) -> Result<Vec<u64>, DatapathError> {
        BpfDatapath::event_losses(self)
    }

    fn map_pressure(&self) -> Vec<MapPressure> {
        BpfDatapath::map_pressure(self)
    }
}

impl PolicyTables for BpfDatapath {
    fn ipcache(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        self.policy.ipcache()
    }
    fn upsert_ipcache(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.policy.upsert_ipcache(prefix, identity)
    }
    fn remove_ipcache(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.policy.remove_ipcache(prefix)
    }
    fn ipblocks(&self) -> Result<Vec<(ipnet::IpNet, u32)>, DatapathError> {
        self.policy.ipblocks()
    }
    fn upsert_ipblock(&mut self, prefix: ipnet::IpNet, identity: u32) -> Result<(), DatapathError> {
        self.policy.upsert_ipblock(prefix, identity)
    }
    fn remove_ipblock(&mut self, prefix: ipnet::IpNet) -> Result<(), DatapathError> {
        self.policy.remove_ipblock(prefix)
    }
    fn policy_entries(&self) -> Result<Vec<(sluice_abi::policy_key, sluice_abi::policy_entry)>, DatapathError> {
        self.policy.policy_entries()
    }
    fn upsert_policy_entry(&mut self, key: &sluice_abi::policy_key, value: &sluice_abi::policy_entry) -> Result<(), DatapathError> {
        self.policy.upsert_policy_entry(key, value)
    }
    fn remove_policy_entry(&mut self, key: &sluice_abi::policy_key) -> Result<(), DatapathError> {
        self.policy.remove_policy_entry(key)
    }
    fn policy_endpoints(&self) -> Result<Vec<(u32, sluice_abi::policy_endpoint)>, DatapathError> {
        self.policy.policy_endpoints()
    }
    fn upsert_policy_endpoint(&mut self, endpoint_id: u32, value: &sluice_abi::policy_endpoint) -> Result<(), DatapathError> {
        self.policy.upsert_policy_endpoint(endpoint_id, value)
    }
    fn remove_policy_endpoint(&mut self, endpoint_id: u32) -> Result<(), DatapathError> {
        self.policy.remove_policy_endpoint(endpoint_id)
    }
    fn policy_conntrack(&self) -> Result<Vec<(sluice_abi::ct_key, sluice_abi::policy_ct_entry)>, DatapathError> {
        self.policy.policy_conntrack()
    }
    fn remove_policy_conntrack(&mut self, key: &sluice_abi::ct_key) -> Result<(), DatapathError> {
        self.policy.remove_policy_conntrack(key)
    }
    fn policy_pressure(&self) -> Vec<MapPressure> {
        self.policy.policy_pressure()
    }
}

impl ServiceTables for BpfDatapath {
    fn frontends(&self) -> Result<Vec<(sluice_abi::lb_frontend_key, sluice_abi::lb_frontend)>, DatapathError> {
        self.services.frontends()
    }
    fn upsert_frontend(&mut self, key: &sluice_abi::lb_frontend_key, value: &sluice_abi::lb_frontend) -> Result<(), DatapathError> {
        self.services.upsert_frontend(key, value)
    }
    fn remove_frontend(&mut self, key: &sluice_abi::lb_frontend_key) -> Result<(), DatapathError> {
        self.services.remove_frontend(key)
    }
    fn backends(&self) -> Result<Vec<(u32, sluice_abi::lb_backend)>, DatapathError> {
        self.services.backends()
    }
    fn upsert_backend(&mut self, id: u32, value: &sluice_abi::lb_backend) -> Result<(), DatapathError> {
        self.services.upsert_backend(id, value)
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), DatapathError> {
        self.services.remove_backend(id)
    }
    fn slots(&self) -> Result<Vec<(sluice_abi::lb_slot_key, u32)>, DatapathError> {
        self.services.slots()
    }
    fn upsert_slot(&mut self, key: &sluice_abi::lb_slot_key, backend_id: u32) -> Result<(), DatapathError> {
        self.services.upsert_slot(key, backend_id)
    }
    fn remove_slot(&mut self, key: &sluice_abi::lb_slot_key) -> Result<(), DatapathError> {
        self.services.remove_slot(key)
    }
    fn maglev_keys(&self) -> Result<Vec<sluice_abi::lb_maglev_key>, DatapathError> {
        self.services.maglev_keys()
    }
    fn upsert_maglev(&mut self, key: &sluice_abi::lb_maglev_key, chunk: &sluice_abi::lb_maglev_chunk) -> Result<(), DatapathError> {
        self.services.upsert_maglev(key, chunk)
    }
    fn remove_maglev(&mut self, key: &sluice_abi::lb_maglev_key) -> Result<(), DatapathError> {
        self.services.remove_maglev(key)
    }
    fn conntrack(&self) -> Result<Vec<(sluice_abi::ct_key, sluice_abi::ct_entry)>, DatapathError> {
        self.services.conntrack()
    }
    fn remove_conntrack(&mut self, key: &sluice_abi::ct_key) -> Result<(), DatapathError> {
        self.services.remove_conntrack(key)
    }
    fn service_pressure(&self) -> Vec<MapPressure> {
        self.services.service_pressure()
    }
}

fn load_object(name: &'static str, bytes: &[u8], pin_dir: &Path, opts: &LoadOptions) -> Result<Ebpf, DatapathError> {
    let mode = opts.host_routing.abi_value();
    let monitor = opts.monitor.abi_value();
    let rate = opts.drop_events_per_second;
    let maglev = opts.maglev_table_size;
    let v4 = opts.node_ipv4.map(|a| u32::from_ne_bytes(a.octets())).unwrap_or(0);
    let v6 = opts.node_ipv6.map(|a| a.octets()).unwrap_or_default();
    let w = |i: usize| u32::from_ne_bytes([v6[i * 4], v6[i * 4 + 1], v6[i * 4 + 2], v6[i * 4 + 3]]);
    let (w0, w1, w2, w3) = (w(0), w(1), w(2), w(3));
    // No kernel BTF: the programs use no CO-RE relocations, and parsing the kernel's BTF would
    // cost start-up time and several MiB of the agent's memory for nothing.
    let mut ebpf = EbpfLoader::new()
        .btf(None)
        .map_pin_path(pin_dir)
        .set_max_entries("events", opts.events_buffer_bytes)
        .set_global("CONFIG_HOST_ROUTING", &mode, true)
        .set_global("CONFIG_MONITOR_AGGREGATION", &monitor, true)
        .set_global("CONFIG_DROP_EVENT_RATE", &rate, true)
        .set_global("CONFIG_MAGLEV_SIZE", &maglev, true)
        .set_global("CONFIG_NODE_IPV4", &v4, true)
        .set_global("CONFIG_NODE_IPV6_0", &w0, true)
        .set_global("CONFIG_NODE_IPV6_1", &w1, true)
        .set_global("CONFIG_NODE_IPV6_2", &w2, true)
        .set_global("CONFIG_NODE_IPV6_3", &w3, true)
        .set_max_entries("lb_ct", opts.conntrack_entries)
        .set_max_entries("policy_ct", opts.policy_conntrack_entries)
        .load(bytes)
        .map_err(|source| DatapathError::Load { object: name, source: Box::new(source) })?;
    let prog = program_mut(&mut ebpf, name)?;
    prog.load().map_err(|source| DatapathError::Program { program: name, action: "verifying".into(), source: Box::new(source) })?;
    Ok(ebpf)
}

fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a SchedClassifier, DatapathError> {
    let prog = ebpf.program(name).ok_or_else(|| missing_program(name))?;
    prog.try_into().map_err(|source| DatapathError::Program {
        program: name,
        action: "expecting a classifier".into(),
        source: Box::new(source),
    })
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| missing_program(name))?;
    prog.try_into().map_err(|source| DatapathError::Program {
        program: name,
        action: "expecting a classifier".into(),
        source: Box::new(source),
    })
}

fn missing_program(name: &'static str) -> DatapathError {
    DatapathError::Program {
        program: name,
        action: "finding it in its object".into(),
        source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
    }
}

pub(crate) fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, DatapathError> {
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::Map { map: name, source: Box::new(aya::maps::MapError::InvalidName { name: name.into() }) })?;
    convert(map).map_err(|source| DatapathError::Map { map: name, source: Box::new(source) })
}

/// Attaches the program to the interface's tcx ingress. When a pinned link from an earlier
/// agent exists, the link is updated in place to run the new program (BPF_LINK_UPDATE): one
/// atomic swap, no moment without a program, and no link teardown (which waits for an RCU grace
/// period per interface). Otherwise a new link is made and pinned.
fn attach(ebpf: &mut Ebpf, name: &'static str, ifname: &str, hook: TcAttachType, pin: &Path) -> Result<(), DatapathError> {
    let prog = program_mut(ebpf, name)?;
    if pin.exists() {
        let updated = PinnedLink::from_pin(pin)
            .map_err(|e| e.to_string())
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
            .and_then(|link| prog.attach_to_link(link).map_err(|e| with_sources(&e)));
        match updated {
            Ok(_) => return Ok(()),
            Err(e) => tracing::debug!(pin = %pin.display(), "pinned link not reusable ({e}); attaching anew"),
        }
        unpin_link(pin)?;
    }
    let err = |action: String| move |source| DatapathError::Program { program: name, action, source: Box::new(source) };
    let id = prog
        .attach_with_options(ifname, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(err(format!("attaching to {ifname} (tcx {hook:?})")))?;
    let link = prog.take_link(id).map_err(err(format!("taking the link on {ifname}")))?;
    let link =
        FdLink::try_from(link).map_err(|e| DatapathError::LinkPin { path: pin.to_path_buf(), message: format!("not an fd link: {e}") })?;
    link.pin(pin).map_err(|e| DatapathError::LinkPin { path: pin.to_path_buf(), message: with_sources(&e) })?;
    Ok(())
}

/// Removes a link pin; the link (and its attachment) goes with its last reference.
fn unpin_link(pin: &Path) -> Result<(), DatapathError> {
    if !pin.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            link.unpin().map_err(|e| DatapathError::LinkPin { path: pin.to_path_buf(), message: e.to_string() })?;
            Ok(())
        }
        // A pin that no longer opens as a link is stale; removing the file is all there is to do.
        Err(_) => fs::remove_file(pin).map_err(|e| DatapathError::os(format!("removing {}", pin.display()), e)),
    }
}

/// An error and its sources on one line: aya's syscall errors keep the errno in their source.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn ignore_missing(r: Result<(), aya::maps::MapError>, map: &'static str) -> Result<(), DatapathError> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(DatapathError::Map { map, source: Box::new(source) }),
    }
}

fn sum_counters(map: &PerCpuArray<MapData, Counter>, name: &'static str) -> Result<Vec<CounterValue>, DatapathError> {
    let mut out = Vec::new();
    for values in map.iter() {
        let values = values.map_err(|source| DatapathError::Map { map: name, source: Box::new(source) })?;
        let mut total = CounterValue::default();
        for v in values.iter() {
            total.packets += v.0.packets;
            total.bytes += v.0.bytes;
        }
        out.push(total);
    }
    Ok(out)
}
