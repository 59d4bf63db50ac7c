//! Flows: what the flow observer reports about each forwarded or dropped packet, the filters a
//! client may ask for (evaluated by the agent), and the messages of a followed stream.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One observed packet, decoded and named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Unix time in nanoseconds.
    pub time_unix_nanos: u64,
    pub node: String,
    /// FORWARDED, DROPPED or AUDIT (an audit-mode policy would have dropped it).
    pub verdict: String,
    /// `drop`, `trace` or `policy-verdict` (audit).
    pub event_type: String,
    /// Drop reason in words, for drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// Forwarding decision in words, for traces (`local endpoint`, `fib redirect`, `to stack`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    /// Where it was seen: `from-pod`, `from-netdev` or `to-pod`.
    pub point: String,
    pub ifindex: u32,
    /// TCP, UDP, ICMPv4, ICMPv6, ARP or the EtherType / IP protocol number.
    pub protocol: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// TCP flags set, e.g. `SYN,ACK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// ICMP type and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<(u8, u8)>,
    /// Packet length on the wire.
    pub length: u32,
    /// True when the capture ended before the headers did.
    #[serde(default)]
    pub truncated: bool,
    /// A one-line description for what has no address (ARP, unparsed frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Policy verdicts (drops by policy, audit): the cookie of the entry that decided, 0 when
    /// nothing matched and the endpoint's default decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_rule: Option<u32>,
    /// Policy verdicts: the identity of the other end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<u32>,
    /// Policy verdicts: the policies behind the entry, or why the default decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Layer-7 flows (`l7`, seen by the node's proxy): the HTTP request and its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFlow>,
}

/// One HTTP request through the node's proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFlow {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path and query as requested.
    pub path: String,
    /// The status answered (403: denied by the rules; 502/503: the server failed).
    pub status: u16,
    /// From the request's arrival to the answer's head, in microseconds.
    pub latency_micros: u64,
    /// The policy directions whose rules judged it: `ingress`, `egress` or both.
    pub directions: Vec<String>,
}

/// One side of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<u32>,
}

/// What a client asks for; every field set must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowFilter {
    /// `NAME` or `NAMESPACE/NAME`: either side.
    pub pod: Option<String>,
    pub from_pod: Option<String>,
    pub to_pod: Option<String>,
    /// Either side in this namespace.
    pub namespace: Option<String>,
    /// Either side has this address.
    pub ip: Option<IpAddr>,
    /// Either side has this port.
    pub port: Option<u16>,
    /// tcp, udp, icmp (v4 or v6), icmpv4, icmpv6, arp.
    pub protocol: Option<String>,
    /// FORWARDED, DROPPED, ...
    pub verdict: Option<String>,
    /// drop, trace, policy-verdict, translation, l7.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Layer-7 flows with this HTTP method (any case).
    pub http_method: Option<String>,
    /// Layer-7 flows whose path starts with this.
    pub http_path: Option<String>,
    /// Only flows at or after this Unix time (nanoseconds).
    pub since_unix_nanos: Option<u64>,
    /// Only the last N matching flows (for a listing).
    pub last: Option<usize>,
}

/// A line of a followed stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlowMessage {
    Flow(Box<Flow>),
    /// Events that did not reach this client, and why.
    Lost(LostEvents),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LostEvents {
    pub count: u64,
    /// `rate-limited` and `ring-full` (in the datapath), `client-lag` (this stream).
    pub reason: String,
}

/// Answer of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsResponse {
    pub flows: Vec<Flow>,
    /// Events the datapath could not deliver since the agent started, by reason.
    pub lost: Vec<LostEvents>,
}

// === impl FlowFilter ===

impl FlowFilter {
    /// Whether `flow` passes every condition set.
    pub fn matches(&self, flow: &Flow) -> bool {
        let either = |f: &dyn Fn(&FlowPeer) -> bool| f(&flow.source) || f(&flow.destination);
        if let Some(p) = &self.pod {
            if !either(&|peer| pod_matches(p, peer)) {
                return false;
            }
        }
        if self.from_pod.as_ref().is_some_and(|p| !pod_matches(p, &flow.source)) {
            return false;
        }
        if self.to_pod.as_ref().is_some_and(|p| !pod_matches(p, &flow.destination)) {
            return false;
        }
        if let Some(ns) = &self.namespace {
            if !either(&|peer| peer.namespace.as_deref() == Some(ns.as_str())) {
                return false;
            }
        }
        if let Some(ip) = self.ip {
            if !either(&|peer| peer.ip == Some(ip)) {
                return false;
            }
        }
        if let Some(port) = self.port {
            if !either(&|peer| peer.port == Some(port)) {
                return false;
            }
        }
        if let Some(proto) = &self.protocol {
            let want = proto.to_ascii_lowercase();
            let have = flow.protocol.to_ascii_lowercase();
            let ok = have == want || (want == "icmp" && have.starts_with("icmp"));
            if !ok {
                return false;
            }
        }
        if self.verdict.as_ref().is_some_and(|v| !v.eq_ignore_ascii_case(&flow.verdict)) {
            return false;
        }
        if self.event_type.as_ref().is_some_and(|t| !t.eq_ignore_ascii_case(&flow.event_type)) {
            return false;
        }
        if self.since_unix_nanos.is_some_and(|since| flow.time_unix_nanos < since) {
            return false;
        }
        let http = flow.http.as_ref();
        if self.http_method.as_ref().is_some_and(|m| !http.is_some_and(|h| h.method.eq_ignore_ascii_case(m))) {
            return false;
        }
        if self.http_path.as_ref().is_some_and(|p| !http.is_some_and(|h| h.path.starts_with(p.as_str()))) {
            return false;
        }
        true
    }

    /// The filter as a URL query string (`?pod=web&port=80`), empty when nothing is set.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", encode(&v)));
            }
        };
        add("pod", self.pod.clone());
        add("fromPod", self.from_pod.clone());
        add("toPod", self.to_pod.clone());
        add("namespace", self.namespace.clone());
        add("ip", self.ip.map(|i| i.to_string()));
        add("port", self.port.map(|p| p.to_string()));
        add("protocol", self.protocol.clone());
        add("verdict", self.verdict.clone());
        add("type", self.event_type.clone());
        add("httpMethod", self.http_method.clone());
        add("httpPath", self.http_path.clone());
        add("sinceUnixNanos", self.since_unix_nanos.map(|s| s.to_string()));
        add("last", self.last.map(|l| l.to_string()));
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// `NAME` matches the pod name in any namespace; `NAMESPACE/NAME` both.
fn pod_matches(want: &str, peer: &FlowPeer) -> bool {
    match want.split_once('/') {
        Some((ns, name)) => peer.namespace.as_deref() == Some(ns) && peer.pod.as_deref() == Some(name),
        None => peer.pod.as_deref() == Some(want),
    }
}

/// Percent-encoding of the characters a query value may not hold as they are.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            time_unix_nanos: 1_000,
            node: "node0".into(),
            verdict: "DROPPED".into(),
            event_type: "drop".into(),
            drop_reason: Some("invalid source IP".into()),
            forward: None,
            point: "from-pod".into(),
            ifindex: 4,
            protocol: "TCP".into(),
            source: FlowPeer {
                ip: Some("198.19.0.3".parse().unwrap()),
                port: Some(40000),
                namespace: Some("demo".into()),
                pod: Some("client".into()),
                identity: Some(257),
            },
            destination: FlowPeer {
                ip: Some("2001:2::2".parse().unwrap()),
                port: Some(80),
                namespace: Some("demo".into()),
                pod: Some("web".into()),
                identity: Some(256),
            },
            tcp_flags: Some("SYN".into()),
            icmp: None,
            length: 74,
            truncated: false,
            summary: None,
            policy_rule: None,
            http: None,
            peer_identity: None,
            policy: None,
        }
    }

    #[test]
    fn each_condition_filters() {
        let f = flow();
        let cases: Vec<(FlowFilter, bool)> = vec![
            (FlowFilter::default(), true),
            (FlowFilter { pod: Some("web".into()), ..Default::default() }, true),
            (FlowFilter { pod: Some("demo/client".into()), ..Default::default() }, true),
            (FlowFilter { pod: Some("other/client".into()), ..Default::default() }, false),
            (FlowFilter { from_pod: Some("client".into()), ..Default::default() }, true),
            (FlowFilter { from_pod: Some("web".into()), ..Default::default() }, false),
            (FlowFilter { to_pod: Some("web".into()), ..Default::default() }, true),
            (FlowFilter { namespace: Some("demo".into()), ..Default::default() }, true),
            (FlowFilter { namespace: Some("kube-system".into()), ..Default::default() }, false),
            (FlowFilter { ip: Some("2001:2::2".parse().unwrap()), ..Default::default() }, true),
            (FlowFilter { ip: Some("198.19.0.9".parse().unwrap()), ..Default::default() }, false),
            (FlowFilter { port: Some(80), ..Default::default() }, true),
            (FlowFilter { port: Some(81), ..Default::default() }, false),
            (FlowFilter { protocol: Some("tcp".into()), ..Default::default() }, true),
            (FlowFilter { protocol: Some("udp".into()), ..Default::default() }, false),
            (FlowFilter { verdict: Some("dropped".into()), ..Default::default() }, true),
            (FlowFilter { verdict: Some("FORWARDED".into()), ..Default::default() }, false),
            (FlowFilter { event_type: Some("drop".into()), ..Default::default() }, true),
            (FlowFilter { event_type: Some("trace".into()), ..Default::default() }, false),
            (FlowFilter { since_unix_nanos: Some(999), ..Default::default() }, true),
            (FlowFilter { since_unix_nanos: Some(1_001), ..Default::default() }, false),
            (FlowFilter { http_method: Some("GET".into()), ..Default::default() }, false),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&f), expected, "{filter:?}");
        }
    }

    #[test]
    fn http_conditions_filter_layer7_flows() {
        let mut f = flow();
        f.event_type = "l7".into();
        f.http = Some(HttpFlow { method: "POST".into(), path: "/admin/users?id=1".into(), status: 403, ..Default::default() });
        let cases: Vec<(FlowFilter, bool)> = vec![
            (FlowFilter { http_method: Some("post".into()), ..Default::default() }, true),
            (FlowFilter { http_method: Some("GET".into()), ..Default::default() }, false),
            (FlowFilter { http_path: Some("/admin".into()), ..Default::default() }, true),
            (FlowFilter { http_path: Some("/public".into()), ..Default::default() }, false),
            (FlowFilter { event_type: Some("l7".into()), http_path: Some("/admin/users".into()), ..Default::default() }, true),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&f), expected, "{filter:?}");
        }
        let query = FlowFilter { http_method: Some("GET".into()), http_path: Some("/a b".into()), ..Default::default() }.to_query();
        assert_eq!(query, "?httpMethod=GET&httpPath=%2Fa%20b");
    }

    #[test]
    fn icmp_matches_both_families() {
        let mut f = flow();
        f.protocol = "ICMPv6".into();
        assert!(FlowFilter { protocol: Some("icmp".into()), ..Default::default() }.matches(&f));
        assert!(!FlowFilter { protocol: Some("icmpv4".into()), ..Default::default() }.matches(&f));
    }

    #[test]
    fn query_string_encodes_values() {
        let q = FlowFilter { pod: Some("demo/web".into()), port: Some(80), ..Default::default() }.to_query();
        assert_eq!(q, "?pod=demo%2Fweb&port=80");
        assert_eq!(FlowFilter::default().to_query(), "");
    }

    #[test]
    fn stream_messages_round_trip() {
        let m = FlowMessage::Lost(LostEvents { count: 3, reason: "client-lag".into() });
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(line, r#"{"lost":{"count":3,"reason":"client-lag"}}"#);
        let f = FlowMessage::Flow(Box::new(flow()));
        let back: FlowMessage = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
