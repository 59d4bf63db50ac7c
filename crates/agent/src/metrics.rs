//! Node metrics in the Prometheus text format: datapath counters read from the per-CPU maps at
//! scrape time, map pressure, endpoint and identity counts, event losses, and histograms of
//! CNI and reconcile durations kept by the agent.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What the agent measures itself.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub cni_add_seconds: Histogram,
    pub cni_del_seconds: Histogram,
    pub reconcile_seconds: Histogram,
    pub reconcile_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        // 1 ms to about 4 s.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 13));
        Self { cni_add_seconds: buckets(), cni_del_seconds: buckets(), reconcile_seconds: buckets(), reconcile_errors: Counter::default() }
    }
}

/// Everything read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (kind, direction, packets, bytes)
    pub forwarded: Vec<(String, String, u64, u64)>,
    /// (reason, direction, packets, bytes)
    pub drops: Vec<(String, String, u64, u64)>,
    /// (map, entries, capacity)
    pub maps: Vec<(String, u64, u64)>,
    /// (reason, count)
    pub events_lost: Vec<(String, u64)>,
    pub flows_observed: u64,
    /// (verdict, status class, requests): HTTP requests through the node's proxy.
    pub l7_requests: Vec<(String, String, u64)>,
    pub endpoints: u64,
    pub identities: u64,
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut counter4 = |name: &str,
                            help: &str,
                            k1: &str,
                            k2: &str,
                            rows: &[(String, String, u64, u64)],
                            pick: fn(&(String, String, u64, u64)) -> u64| {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for row in rows {
                let labels = [(k1, row.0.as_str()), (k2, row.1.as_str())];
                ConstCounter::new(pick(row)).encode(m.encode_family(&labels)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        counter4(
            "forwarded_packets",
            "Packets the datapath forwarded, by decision and direction.",
            "kind",
            "direction",
            &s.forwarded,
            |r| r.2,
        )?;
        counter4("forwarded_bytes", "Bytes the datapath forwarded, by decision and direction.", "kind", "direction", &s.forwarded, |r| {
            r.3
        })?;
        counter4("drop_packets", "Packets the datapath dropped, by reason and direction.", "reason", "direction", &s.drops, |r| r.2)?;
        counter4("drop_bytes", "Bytes the datapath dropped, by reason and direction.", "reason", "direction", &s.drops, |r| r.3)?;
        {
            let mut m = encoder.encode_descriptor("bpf_map_entries", "Entries in use in a BPF map.", None, MetricType::Gauge)?;
            for (map, entries, _) in &s.maps {
                ConstGauge::new(*entries as i64).encode(m.encode_family(&[("map", map.as_str())])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor("bpf_map_capacity", "Capacity of a BPF map.", None, MetricType::Gauge)?;
            for (map, _, capacity) in &s.maps {
                ConstGauge::new(*capacity as i64).encode(m.encode_family(&[("map", map.as_str())])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpf_map_fill_ratio",
                "Entries in use over capacity of a BPF map; status warns from 0.9.",
                None,
                MetricType::Gauge,
            )?;
            for (map, entries, capacity) in &s.maps {
                let ratio = if *capacity == 0 { 0.0 } else { *entries as f64 / *capacity as f64 };
                ConstGauge::new(ratio).encode(m.encode_family(&[("map", map.as_str())])?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor("events_lost", "Datapath events not delivered, by reason.", None, MetricType::Counter)?;
            for (reason, n) in &s.events_lost {
                ConstCounter::new(*n).encode(m.encode_family(&[("reason", reason.as_str())])?)?;
            }
        }
        ConstCounter::new(s.flows_observed).encode(encoder.encode_descriptor(
            "flows_observed",
            "Datapath events decoded into flows.",
            None,
            MetricType::Counter,
        )?)?;
        {
            let mut m = encoder.encode_descriptor(
                "l7_requests",
                "HTTP requests through the node's layer-7 proxy, by verdict and status class.",
                None,
                MetricType::Counter,
            )?;
            for (verdict, status, n) in &s.l7_requests {
                ConstCounter::new(*n).encode(m.encode_family(&[("verdict", verdict.as_str()), ("status", status.as_str())])?)?;
            }
        }
        ConstGauge::new(s.endpoints as i64).encode(encoder.encode_descriptor(
            "endpoints",
            "Endpoints on this node.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.identities as i64).encode(encoder.encode_descriptor(
            "identities",
            "Security identities in use on this node.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

/// The exposition text.
pub fn render(metrics: &Metrics, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("sluice");
    registry.register("cni_add_duration_seconds", "Time to serve CNI ADD.", metrics.cni_add_seconds.clone());
    registry.register("cni_del_duration_seconds", "Time to serve CNI DEL.", metrics.cni_del_seconds.clone());
    registry.register("reconcile_duration_seconds", "Time of a reconcile pass.", metrics.reconcile_seconds.clone());
    registry.register("reconcile_errors", "Reconcile passes that failed.", metrics.reconcile_errors.clone());
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_labels_and_histograms() {
        let m = Metrics::default();
        m.cni_add_seconds.observe(0.02);
        let snap = Snapshot {
            drops: vec![("invalid source IP".into(), "from-pod".into(), 7, 700)],
            maps: vec![("endpoints".into(), 3, 65536), ("lb_ct".into(), 950, 1000)],
            events_lost: vec![("rate-limited".into(), 5)],
            l7_requests: vec![("DROPPED".into(), "4xx".into(), 3)],
            endpoints: 2,
            ..Default::default()
        };
        let text = render(&m, snap).unwrap();
        assert!(text.contains(r#"sluice_drop_packets_total{reason="invalid source IP",direction="from-pod"} 7"#), "{text}");
        assert!(text.contains(r#"sluice_bpf_map_capacity{map="endpoints"} 65536"#), "{text}");
        assert!(text.contains(r#"sluice_bpf_map_fill_ratio{map="lb_ct"} 0.95"#), "{text}");
        assert!(text.contains(r#"sluice_events_lost_total{reason="rate-limited"} 5"#), "{text}");
        assert!(text.contains("sluice_cni_add_duration_seconds_count 1"), "{text}");
        assert!(text.contains("sluice_endpoints 2"), "{text}");
        assert!(text.contains(r#"sluice_l7_requests_total{verdict="DROPPED",status="4xx"} 3"#), "{text}");
    }
}
