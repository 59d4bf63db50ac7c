//! The flow observer: reads datapath events from the ring buffer, keeps a bounded ring of the
//! recent ones and fans new ones out to followers as flows (decoded, their pods named). Events
//! are kept raw, with the pod names known when they arrived, and decoded only when someone
//! asks: by a reader of the recent ring, or at once while a follower listens. A busy node pays
//! a copy per event, not a decode with its allocations (TCP_CRR makes four events a
//! connection). Memory is bounded everywhere: the kernel ring, the recent ring and each
//! follower's queue; what does not fit is counted as lost and the client is told.

pub mod decode;
mod enrich;
pub mod proxy_flows;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sluice_api::{Flow, FlowFilter};
use tokio::sync::broadcast;

pub use enrich::Enrichment;

/// Flows a follower may fall behind by before it loses some.
const FOLLOW_QUEUE: usize = 1024;

pub struct Observer {
    node: String,
    capacity: usize,
    clock_offset: i128,
    recent: Mutex<VecDeque<Raw>>,
    tx: broadcast::Sender<Flow>,
    enrichment: RwLock<Arc<Enrichment>>,
    decoded: AtomicU64,
    undecodable: AtomicU64,
    /// Layer-7 requests by (verdict, status class), for metrics.
    l7_requests: Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

// === impl Observer ===

impl Observer {
    /// `capacity`: how many recent flows to keep.
    pub fn new(node: &str, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(FOLLOW_QUEUE);
        Self {
            node: node.to_owned(),
            capacity: capacity.max(1),
            clock_offset: clock_offset(),
            recent: Mutex::new(VecDeque::with_capacity(capacity.min(65536))),
            tx,
            enrichment: RwLock::new(Arc::new(Enrichment::default())),
            decoded: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            l7_requests: Mutex::new(Default::default()),
        }
    }

    /// Replaces what the observer knows about local endpoints (after every change).
    pub fn set_enrichment(&self, enrichment: Enrichment) {
        *self.enrichment.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(enrichment);
    }

    /// Takes one ring-buffer record: kept raw; decoded now only for followers.
    pub fn ingest(&self, bytes: &[u8]) {
        let event = match decode::read_event(bytes).and_then(|ev| decode::check_type(&ev).map(|()| ev)) {
            Ok(ev) => ev,
            Err(e) => {
                self.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("undecodable event: {e}");
                return;
            }
        };
        let raw = Raw::Datapath { event, enrichment: self.enrichment.read().unwrap_or_else(|p| p.into_inner()).clone() };
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let followed = self.tx.receiver_count() > 0;
        let flow = followed.then(|| self.flow(&raw));
        self.keep(raw);
        match flow {
            Some(Ok(flow)) => {
                // A follower that just left is not an error.
                let _ = self.tx.send(flow);
            }
            Some(Err(e)) => tracing::debug!("undecodable event: {e}"),
            None => {}
        }
    }

    /// Takes a flow the node's proxy reported (a layer-7 request), naming its pods.
    pub fn ingest_flow(&self, mut flow: Flow) {
        flow.node.clone_from(&self.node);
        if let Some(http) = &flow.http {
            let class = format!("{}xx", http.status / 100);
            *self.l7_requests.lock().unwrap_or_else(|p| p.into_inner()).entry((flow.verdict.clone(), class)).or_default() += 1;
        }
        self.enrichment.read().unwrap_or_else(|p| p.into_inner()).apply(&mut flow);
        let flow = Arc::new(flow);
        self.keep(Raw::Decoded(flow.clone()));
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Flow::clone(&flow));
        }
    }

    fn keep(&self, raw: Raw) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(raw);
    }

    /// A raw event as a flow, its pods named as they were known when it arrived.
    fn flow(&self, raw: &Raw) -> Result<Flow, decode::DecodeError> {
        match raw {
            Raw::Datapath { event, enrichment } => {
                let mut flow = decode::decode(event, &self.node, self.clock_offset)?;
                enrichment.apply(&mut flow);
                Ok(flow)
            }
            Raw::Decoded(flow) => Ok(Flow::clone(flow)),
        }
    }

    /// The last flows matching `filter` (all of the ring when `filter.last` is unset). Events
    /// are decoded here, outside the ring's lock.
    pub fn recent(&self, filter: &FlowFilter) -> Vec<Flow> {
        let raws: Vec<Raw> = self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        let mut out: Vec<Flow> = raws.iter().filter_map(|raw| self.flow(raw).ok()).filter(|f| filter.matches(f)).collect();
        if let Some(n) = filter.last {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        out
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Flow> {
        self.tx.subscribe()
    }

    /// Events taken from the ring since start (each decodes when read).
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// (verdict, status class, requests) of the proxy's flows since the agent started.
    pub fn l7_requests(&self) -> Vec<(String, String, u64)> {
        self.l7_requests.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|((v, c), n)| (v.clone(), c.clone(), *n)).collect()
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }

    /// Flows held in the recent ring.
    pub fn held(&self) -> usize {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One event as the datapath wrote it, with the pod names known when it arrived; or a flow
/// that came decoded (from the proxy).
#[derive(Clone)]
enum Raw {
    Datapath { event: sluice_abi::datapath_event, enrichment: Arc<Enrichment> },
    Decoded(Arc<Flow>),
}

/// How often the ring is drained without a wake-up: the datapath wakes the agent for drops at
/// once but lets trace events gather (see `event_wakeup` in bpf/lib/events.h), so a trace
/// flow is seen within this long.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads the ring buffer as events arrive, and every [`DRAIN_INTERVAL`], and hands them to the
/// observer, until the task is dropped.
pub async fn read_events(observer: std::sync::Arc<Observer>, ring: aya::maps::RingBuf<aya::maps::MapData>) {
    // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, which keeps it
    // open for as long as it is registered.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot watch the events ring buffer, no flows will be observed: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!("events ring buffer: {e}");
                        return;
                    }
                };
                if !drain(&observer, guard.get_inner_mut()) {
                    guard.clear_ready();
                }
            }
            _ = tick.tick() => {
                drain(&observer, fd.get_mut());
            }
        }
        tokio::task::yield_now().await;
    }
}

/// Hands the observer a bounded batch (a busy datapath must not starve the API); whether more
/// is waiting.
fn drain(observer: &Observer, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> bool {
    let mut batch = 0;
    while let Some(item) = ring.next() {
        observer.ingest(&item);
        batch += 1;
        if batch == 4096 {
            return true;
        }
    }
    false
}

/// Unix time minus monotonic time, in nanoseconds: turns bpf_ktime_get_ns() into wall time.
fn clock_offset() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let ns = |t: nix::sys::time::TimeSpec| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128;
    match (clock_gettime(ClockId::CLOCK_REALTIME), clock_gettime(ClockId::CLOCK_MONOTONIC)) {
        (Ok(real), Ok(mono)) => ns(real) - ns(mono),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u8) -> Vec<u8> {
        let mut ev = sluice_abi::datapath_event {
            type_: sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8,
            code: 2,
            ifindex: 3,
            cap_len: 34,
            ..Default::default()
        };
        let hdr = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 19, 0, i, 198, 19, 0, 2];
        ev.data[..34].copy_from_slice(&hdr);
        // SAFETY: viewing a plain C struct as bytes.
        unsafe { std::slice::from_raw_parts((&ev as *const sluice_abi::datapath_event).cast::<u8>(), std::mem::size_of_val(&ev)) }.to_vec()
    }

    #[test]
    fn recent_ring_is_bounded_and_keeps_the_newest() {
        let obs = Observer::new("n", 3);
        for i in 0..10 {
            obs.ingest(&record(i));
        }
        assert_eq!(obs.held(), 3, "never more than capacity");
        let ips: Vec<String> = obs.recent(&FlowFilter::default()).iter().map(|f| f.source.ip.unwrap().to_string()).collect();
        assert_eq!(ips, ["198.19.0.7", "198.19.0.8", "198.19.0.9"]);
        assert_eq!(obs.decoded(), 10);
    }

    #[test]
    fn last_and_filters_apply_on_the_server() {
        let obs = Observer::new("n", 100);
        for i in 0..10 {
            obs.ingest(&record(i));
        }
        let f = FlowFilter { last: Some(2), ..Default::default() };
        assert_eq!(obs.recent(&f).len(), 2);
        let f = FlowFilter { ip: Some("198.19.0.4".parse().unwrap()), ..Default::default() };
        assert_eq!(obs.recent(&f).len(), 1);
    }

    #[test]
    fn followers_get_new_flows_and_short_records_are_counted() {
        let obs = Observer::new("n", 10);
        let mut rx = obs.subscribe();
        obs.ingest(&record(1));
        assert_eq!(rx.try_recv().unwrap().source.ip, Some("198.19.0.1".parse().unwrap()));
        obs.ingest(&[0; 10]);
        assert_eq!(obs.undecodable(), 1);
    }

    #[test]
    fn enrichment_names_local_pods() {
        let obs = Observer::new("n", 10);
        let mut e = Enrichment::default();
        e.insert("198.19.0.5".parse().unwrap(), 3, "demo", "client", 257);
        obs.set_enrichment(e);
        obs.ingest(&record(5));
        let f = &obs.recent(&FlowFilter::default())[0];
        assert_eq!(f.source.pod.as_deref(), Some("client"));
        assert_eq!(f.source.namespace.as_deref(), Some("demo"));
        assert_eq!(f.source.identity, Some(257));
        assert_eq!(f.destination.pod, None, "198.19.0.2 is not known here");
    }

    #[test]
    fn a_flow_read_later_keeps_the_names_known_when_it_arrived() {
        let obs = Observer::new("n", 10);
        let mut e = Enrichment::default();
        e.insert("198.19.0.5".parse().unwrap(), 3, "demo", "client", 257);
        obs.set_enrichment(e);
        obs.ingest(&record(5));
        // The pod is gone (its names with it) before anyone reads the flow.
        obs.set_enrichment(Enrichment::default());
        obs.ingest(&record(6));
        let flows = obs.recent(&FlowFilter::default());
        assert_eq!(flows[0].source.pod.as_deref(), Some("client"), "decoded on read, named as on arrival");
        assert_eq!(flows[1].source.pod, None);
        assert_eq!(obs.decoded(), 2);
    }

    #[test]
    fn a_rule_cookie_handed_out_after_the_last_refresh_is_named_from_the_live_names() {
        let live: crate::policy::program::RuleNames = Default::default();
        live.write().unwrap().insert(1, "old".to_owned());
        let mut e = Enrichment::default();
        e.set_policy_rules(live.clone());
        // The programmer hands out cookie 2 and writes its entry: no refresh yet.
        live.write().unwrap().insert(2, "SluiceNetworkPolicy x/deny (ingress rule 0)".to_owned());
        let obs = Observer::new("n", 10);
        obs.ingest(&record(5));
        let template = obs.recent(&FlowFilter::default())[0].clone();
        let named = |cookie| {
            let mut flow = template.clone();
            flow.policy_rule = Some(cookie);
            e.apply(&mut flow);
            flow.policy
        };
        assert_eq!(named(1).as_deref(), Some("old"));
        assert_eq!(named(2).as_deref(), Some("SluiceNetworkPolicy x/deny (ingress rule 0)"), "named before any refresh");
        assert_eq!(named(3).as_deref(), Some("policy rule 3"), "a cookie nobody handed out keeps its number");
    }
}
