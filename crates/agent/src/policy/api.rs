//! The policy questions the agent answers: `policy trace` (why a connection gets its verdict on
//! this node) and `policy get` (a pod's compiled entries), both from the last round's snapshot.

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_policy::{DirectionTable, EntryKey, Mode, IDENTITY_ANY};

use super::sync::PolicySnapshot;
use crate::agent::Agent;
use crate::error::AgentError;

#[derive(Debug, Deserialize)]
pub struct TraceQuery {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub proto: u8,
    pub port: u16,
}

#[derive(Debug, Deserialize)]
pub struct EndpointQuery {
    /// `namespace/name`.
    pub pod: String,
}

/// `tcp/80`, `udp/1024-2047`, `icmp type 8`, `any`.
pub fn key_text(k: &EntryKey) -> String {
    let Some(proto) = k.proto else { return "any".into() };
    let name = match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        _ => return format!("proto {proto}"),
    };
    if k.port_prefix == 0 {
        return format!("{name}/any");
    }
    if proto == 1 || proto == 58 {
        return format!("{name} type {}", k.port);
    }
    let span = 1u32 << (16 - u32::from(k.port_prefix.min(16)));
    if span == 1 {
        format!("{name}/{}", k.port)
    } else {
        format!("{name}/{}-{}", k.port, u32::from(k.port) + span - 1)
    }
}

fn mode_text(m: Mode) -> &'static str {
    match m {
        Mode::None => "none (not selected: everything allowed)",
        Mode::Enforce => "enforce (default deny)",
        Mode::Audit => "audit (default deny reported, not enforced)",
        Mode::DefaultAllow => "default allow",
    }
}

fn identity_text(snap: &PolicySnapshot, id: u32) -> String {
    if id == IDENTITY_ANY {
        return "any".into();
    }
    match id {
        1 => return "host".into(),
        2 => return "world".into(),
        6 => return "remote-node".into(),
        _ => {}
    }
    if let Some((cidr, _)) = snap.view.cidr_identities.iter().find(|(_, i)| **i == id) {
        return format!("cidr {cidr}");
    }
    let pods: Vec<&str> = snap.view.endpoints.iter().filter(|e| e.identity == id).map(|e| e.key.as_str()).collect();
    match pods.len() {
        0 => id.to_string(),
        1..=3 => format!("{id} ({})", pods.join(", ")),
        n => format!("{id} ({}, ... {n} pods)", pods[..3].join(", ")),
    }
}

fn direction(snap: &PolicySnapshot, t: &DirectionTable) -> Value {
    let entries: Vec<Value> = t
        .entries
        .iter()
        .map(|(k, e)| {
            json!({
                "peer": identity_text(snap, k.identity),
                "identity": k.identity,
                "traffic": key_text(k),
                "verdict": format!("{:?}", e.verdict),
                "rules": e.rules.iter().map(super::sync::rule_text).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "mode": mode_text(t.mode),
        "policies": t.policies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "entries": entries,
    })
}

impl Agent {
    pub fn policy_trace(&self, q: &TraceQuery) -> Result<Value, AgentError> {
        let snap = self.policy_snapshot().ok_or_else(|| AgentError::BadRequest("this agent enforces no policy".into()))?;
        let trace = sluice_policy::trace(&snap.policies, &snap.view, &snap.compiled, q.src, q.dst, q.proto, q.port);
        Ok(json!({ "node": self.config().node_name, "text": trace.to_string(), "trace": trace }))
    }

    pub fn policy_endpoint(&self, q: &EndpointQuery) -> Result<Value, AgentError> {
        let snap = self.policy_snapshot().ok_or_else(|| AgentError::BadRequest("this agent enforces no policy".into()))?;
        let Some(ep) = snap.view.endpoints.iter().find(|e| e.key == q.pod && e.local) else {
            return Err(AgentError::BadRequest(format!("pod {} has no endpoint on node {}", q.pod, self.config().node_name)));
        };
        let policy = snap.compiled.endpoints.get(&q.pod).cloned().unwrap_or_default();
        Ok(json!({
            "node": self.config().node_name,
            "pod": ep.key,
            "identity": ep.identity,
            "labels": ep.labels,
            "ips": ep.ips,
            "ingress": direction(&snap, &policy.ingress),
            "egress": direction(&snap, &policy.egress),
        }))
    }
}
