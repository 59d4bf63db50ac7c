//! What the proxy records: the policy conntrack entries of its upstream connections (so the
//! datapath hands their replies to the proxy, not to the pod whose address they carry), the
//! request counters, and one [`L7Flow`] per request for observers.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_abi::{ct_key, policy_ct_entry};
use thiserror::Error;

use crate::rules::{canonical, Direction};

/// Failures of the policy conntrack writes.
#[derive(Debug, Error)]
pub enum FlowError {
    /// The pinned map could not be opened or is not a hash of the expected layout.
    #[error("opening the policy conntrack map {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<sluice_datapath::DatapathError>,
    },
    /// Inserting the entry of an upstream connection failed (map full, map gone).
    #[error("writing the policy conntrack entry of {local} -> {remote}: {source}")]
    Insert {
        local: SocketAddr,
        remote: SocketAddr,
        #[source]
        source: Box<sluice_datapath::DatapathError>,
    },
    #[error("removing the policy conntrack entry of {local} -> {remote}: {source}")]
    Remove {
        local: SocketAddr,
        remote: SocketAddr,
        #[source]
        source: Box<sluice_datapath::DatapathError>,
    },
    /// The upstream's source and destination are of different families.
    #[error("upstream {local} -> {remote} mixes address families")]
    MixedFamilies { local: SocketAddr, remote: SocketAddr },
}

/// Where the proxy writes the conntrack entries of its upstream connections.
pub trait FlowTable: Send + Sync {
    /// Adds the entry; fails when the tuple already has one (a pod's own flow).
    fn insert(&self, key: &ct_key, value: &policy_ct_entry) -> Result<(), FlowError>;
    fn remove(&self, key: &ct_key) -> Result<(), FlowError>;
}

/// The `policy_ct` key of an upstream connection from `local` (the client's address and the
/// port the proxy bound) to `remote` (the original destination), oriented from the pod.
pub fn proxy_ct_key(local: SocketAddr, remote: SocketAddr) -> Result<ct_key, FlowError> {
    let mut key =
        ct_key { sport: local.port().to_be(), dport: remote.port().to_be(), proto: libc::IPPROTO_TCP as u8, ..Default::default() };
    match (canonical(local.ip()), canonical(remote.ip())) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            key.family = sluice_abi::SLUICE_AF_INET as u8;
            key.saddr[..4].copy_from_slice(&s.octets());
            key.daddr[..4].copy_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            key.family = sluice_abi::SLUICE_AF_INET6 as u8;
            key.saddr = s.octets();
            key.daddr = d.octets();
        }
        _ => return Err(FlowError::MixedFamilies { local, remote }),
    }
    Ok(key)
}

/// The entry the proxy writes: an egress flow of the pod, owned by the proxy.
pub fn proxy_ct_entry() -> policy_ct_entry {
    policy_ct_entry {
        last_seen_ns: monotonic_ns(),
        flags: (sluice_abi::SLUICE_PCT_F_ORIGIN_EGRESS | sluice_abi::SLUICE_PCT_F_PROXY) as u8,
        ..Default::default()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, which the datapath's
/// conntrack expiry compares against.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would merely make the entry expire early.
        Err(_) => 0,
    }
}

/// The datapath's pinned `policy_ct` (an LRU hash).
pub struct PolicyConntrack {
    // Writes take `&mut`; upstream connections are opened from many tasks.
    map: Mutex<sluice_datapath::PinnedPolicyConntrack>,
}

impl PolicyConntrack {
    /// Opens `{bpffs}/policy_ct`.
    pub fn open(bpffs: &Path) -> Result<PolicyConntrack, FlowError> {
        let map = sluice_datapath::PinnedPolicyConntrack::open(bpffs)
            .map_err(|source| FlowError::Open { path: bpffs.join("policy_ct").display().to_string(), source: Box::new(source) })?;
        Ok(PolicyConntrack { map: Mutex::new(map) })
    }
}

fn key_addrs(key: &ct_key) -> (SocketAddr, SocketAddr) {
    let addr = |a: &[u8; 16]| -> IpAddr {
        if u32::from(key.family) == sluice_abi::SLUICE_AF_INET {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        } else {
            IpAddr::from(*a)
        }
    };
    (SocketAddr::new(addr(&key.saddr), u16::from_be(key.sport)), SocketAddr::new(addr(&key.daddr), u16::from_be(key.dport)))
}

impl FlowTable for PolicyConntrack {
    fn insert(&self, key: &ct_key, value: &policy_ct_entry) -> Result<(), FlowError> {
        // Only where no entry exists: a tuple a pod already uses is never taken over (the
        // caller binds again).
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert_new(key, value).map_err(|e| {
            let (local, remote) = key_addrs(key);
            FlowError::Insert { local, remote, source: Box::new(e) }
        })
    }

    fn remove(&self, key: &ct_key) -> Result<(), FlowError> {
        // The LRU may have evicted it, or the agent's GC removed it: gone either way.
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key).map_err(|e| {
            let (local, remote) = key_addrs(key);
            FlowError::Remove { local, remote, source: Box::new(e) }
        })
    }
}

/// No map: for a proxy run without the datapath (plain upstream connections need no entry).
pub struct NoFlowTable;

impl FlowTable for NoFlowTable {
    fn insert(&self, _key: &ct_key, _value: &policy_ct_entry) -> Result<(), FlowError> {
        Ok(())
    }
    fn remove(&self, _key: &ct_key) -> Result<(), FlowError> {
        Ok(())
    }
}

/// Removes an upstream connection's conntrack entry when the connection is gone.
pub struct FlowGuard {
    table: Arc<dyn FlowTable>,
    key: ct_key,
}

impl FlowGuard {
    /// Inserts the entry of `key` and returns the guard that removes it.
    pub fn insert(table: Arc<dyn FlowTable>, key: ct_key) -> Result<FlowGuard, FlowError> {
        table.insert(&key, &proxy_ct_entry())?;
        Ok(FlowGuard { table, key })
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        if let Err(e) = self.table.remove(&self.key) {
            tracing::warn!("{e}");
        }
    }
}

// === L7Flow ===

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FlowVerdict {
    /// Allowed and answered by the upstream.
    Forwarded,
    /// No rule allows it: answered 403 by the proxy.
    Denied,
    /// Allowed, but the upstream could not be reached or failed: answered 502/503.
    Error,
}

/// One HTTP request through the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Flow {
    /// Wall-clock time the request arrived, nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
    pub client: SocketAddr,
    /// The original destination.
    pub server: SocketAddr,
    /// The directions whose grants applied (empty: none, denied).
    pub directions: Vec<Direction>,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub status: u16,
    /// From the request's arrival to the response's head.
    pub latency_us: u64,
    pub verdict: FlowVerdict,
}

impl L7Flow {
    /// The flow as `sluice observe` shows it (its pods are named by the agent).
    pub fn to_flow(&self) -> sluice_api::Flow {
        let peer = |addr: &SocketAddr| sluice_api::FlowPeer { ip: Some(addr.ip()), port: Some(addr.port()), ..Default::default() };
        let (verdict, drop_reason) = match self.verdict {
            FlowVerdict::Forwarded => ("FORWARDED", None),
            FlowVerdict::Denied => ("DROPPED", Some("layer-7 policy denied".to_owned())),
            FlowVerdict::Error => ("ERROR", Some("upstream unavailable".to_owned())),
        };
        sluice_api::Flow {
            time_unix_nanos: self.time_unix_ns,
            node: String::new(),
            verdict: verdict.to_owned(),
            event_type: "l7".to_owned(),
            drop_reason,
            forward: None,
            point: "proxy".to_owned(),
            ifindex: 0,
            protocol: "HTTP".to_owned(),
            source: peer(&self.client),
            destination: peer(&self.server),
            tcp_flags: None,
            icmp: None,
            length: 0,
            truncated: false,
            summary: None,
            policy_rule: None,
            peer_identity: None,
            policy: None,
            http: Some(sluice_api::HttpFlow {
                method: self.method.clone(),
                host: self.host.clone(),
                path: self.path.clone(),
                status: self.status,
                latency_micros: self.latency_us,
                directions: self.directions.iter().map(|d| d.as_str().to_owned()).collect(),
            }),
        }
    }
}

pub fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// === Stats ===

/// Counters of the proxy, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections closed at once: their local address was loopback, so they did not come
    /// through the datapath.
    pub connections_not_redirected: AtomicU64,
    pub requests_allowed: AtomicU64,
    pub requests_denied: AtomicU64,
    /// Allowed requests whose upstream could not be reached or failed.
    pub upstream_errors: AtomicU64,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub status_classes: [AtomicU64; 5],
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    pub connections: u64,
    pub connections_not_redirected: u64,
    pub requests_allowed: u64,
    pub requests_denied: u64,
    pub upstream_errors: u64,
    /// 1xx..5xx.
    pub status_classes: [u64; 5],
}

impl Stats {
    pub fn count_status(&self, status: u16) {
        if let Some(c) = usize::from(status / 100).checked_sub(1).and_then(|i| self.status_classes.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            connections_not_redirected: get(&self.connections_not_redirected),
            requests_allowed: get(&self.requests_allowed),
            requests_denied: get(&self.requests_denied),
            upstream_errors: get(&self.upstream_errors),
            status_classes: std::array::from_fn(|i| get(&self.status_classes[i])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_key_is_oriented_from_the_pod_in_network_order() {
        let key = proxy_ct_key("10.244.0.5:40000".parse().unwrap(), "10.244.1.7:80".parse().unwrap()).unwrap();
        assert_eq!(&key.saddr[..4], &[10, 244, 0, 5], "saddr is the client pod");
        assert_eq!(&key.daddr[..4], &[10, 244, 1, 7], "daddr is the original destination");
        assert_eq!(key.sport, 40000u16.to_be());
        assert_eq!(key.dport, 80u16.to_be());
        assert_eq!(key.proto, 6);
        assert_eq!(u32::from(key.family), sluice_abi::SLUICE_AF_INET);
        assert_eq!(key_addrs(&key), ("10.244.0.5:40000".parse().unwrap(), "10.244.1.7:80".parse().unwrap()));
        let v6 = proxy_ct_key("[fd00::5]:1".parse().unwrap(), "[fd00::7]:80".parse().unwrap()).unwrap();
        assert_eq!(u32::from(v6.family), sluice_abi::SLUICE_AF_INET6);
        assert!(proxy_ct_key("10.0.0.1:1".parse().unwrap(), "[fd00::7]:80".parse().unwrap()).is_err(), "mixed families are refused");
    }

    #[test]
    fn entry_flags_and_clock() {
        let e = proxy_ct_entry();
        assert_eq!(u32::from(e.flags), sluice_abi::SLUICE_PCT_F_ORIGIN_EGRESS | sluice_abi::SLUICE_PCT_F_PROXY);
        assert!(e.last_seen_ns > 0 && e.last_seen_ns <= monotonic_ns(), "last_seen is CLOCK_MONOTONIC now");
    }

    #[test]
    fn status_classes() {
        let s = Stats::default();
        s.count_status(200);
        s.count_status(403);
        s.count_status(404);
        s.count_status(99);
        assert_eq!(s.snapshot().status_classes, [0, 1, 0, 2, 0]);
    }
}
