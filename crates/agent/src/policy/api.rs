//! The policy questions the agent answers: `policy trace` (why a connection gets its verdict on
//! this node) and `policy get` (a pod's compiled entries), both from the last round's snapshot.

use serde::Deserialize;
use sluice_api as api;
use sluice_policy::trace::{IpBlockTrace, MatchedEntry, PeerTrace, SideTrace, Trace};
use sluice_policy::{DirectionTable, EntryKey, Mode, PolicyRef, RuleRef, Verdict, IDENTITY_ANY};

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

/// The peer of an entry by address: `address in 198.19.0.0/16`.
fn ip_block_text(snap: &PolicySnapshot, id: u32) -> String {
    match snap.compiled.ipblocks.iter().find(|(_, i)| **i == id) {
        Some((prefix, _)) => format!("address in {prefix}"),
        None => format!("address of ipBlock identity {id}"),
    }
}

fn direction(snap: &PolicySnapshot, t: &DirectionTable) -> api::PolicyDirection {
    let by_identity = t.entries.iter().map(|(k, e)| (k, e, false));
    let by_address = t.by_address.iter().map(|(k, e)| (k, e, true));
    api::PolicyDirection {
        mode: mode_text(t.mode).into(),
        policies: t.policies.iter().map(ToString::to_string).collect(),
        entries: by_identity
            .chain(by_address)
            .map(|(k, e, by_address)| api::PolicyEntry {
                peer: if by_address { ip_block_text(snap, k.identity) } else { identity_text(snap, k.identity) },
                identity: k.identity,
                traffic: key_text(k),
                verdict: verdict(e.verdict),
                rules: e.rules.iter().map(super::sync::rule_text).collect(),
                by_address,
            })
            .collect(),
    }
}

// === the engine's trace, as the API says it ===

fn verdict(v: Verdict) -> api::PolicyVerdict {
    match v {
        Verdict::Allow => api::PolicyVerdict::Allow,
        Verdict::Audit => api::PolicyVerdict::Audit,
        Verdict::Deny => api::PolicyVerdict::Deny,
    }
}

fn mode(m: Mode) -> api::PolicyMode {
    match m {
        Mode::None => api::PolicyMode::None,
        Mode::Enforce => api::PolicyMode::Enforce,
        Mode::Audit => api::PolicyMode::Audit,
        Mode::DefaultAllow => api::PolicyMode::DefaultAllow,
    }
}

fn policy_ref(p: &PolicyRef) -> api::PolicyRef {
    let PolicyRef { kind, namespace, name } = p;
    api::PolicyRef { kind: kind.clone(), namespace: namespace.clone(), name: name.clone() }
}

fn rule_ref(r: &RuleRef) -> api::PolicyRuleRef {
    let RuleRef { policy, ingress, index } = r;
    api::PolicyRuleRef { policy: policy_ref(policy), ingress: *ingress, index: *index }
}

fn entry_key(k: &EntryKey) -> api::PolicyEntryKey {
    let EntryKey { identity, proto, port, port_prefix } = *k;
    api::PolicyEntryKey { identity, proto, port, port_prefix }
}

fn trace_side(s: &SideTrace) -> api::PolicyTraceSide {
    let SideTrace { endpoint, identity, labels, mode: m, policies, peer, matched, verdict: v, reason, http } = s;
    let PeerTrace { ip, identity: peer_identity, what, ip_block } = peer;
    api::PolicyTraceSide {
        endpoint: endpoint.clone(),
        identity: *identity,
        labels: labels.as_map().clone(),
        mode: mode(*m),
        policies: policies.iter().map(policy_ref).collect(),
        peer: api::PolicyTracePeer {
            ip: *ip,
            identity: *peer_identity,
            what: what.clone(),
            ip_block: ip_block.as_ref().map(|b| {
                let IpBlockTrace { prefix, identity } = b;
                api::PolicyTraceIpBlock { prefix: *prefix, identity: *identity }
            }),
        },
        matched: matched
            .iter()
            .map(|m| {
                let MatchedEntry { key, verdict: v, rules, by_address } = m;
                api::PolicyMatchedEntry {
                    key: entry_key(key),
                    verdict: verdict(*v),
                    rules: rules.iter().map(rule_ref).collect(),
                    by_address: *by_address,
                }
            })
            .collect(),
        verdict: verdict(*v),
        reason: reason.clone(),
        http: http.as_ref().map(|grants| {
            grants
                .iter()
                .flat_map(|g| g.rules.iter().map(move |r| format!("{}: {}", g.policy, sluice_policy::trace::http_rule_text(r))))
                .collect()
        }),
    }
}

/// The engine's trace in the API's terms; destructured in full, so a field the engine gains
/// does not go missing from the answer unnoticed.
pub fn trace_to_api(t: &Trace) -> api::PolicyTrace {
    let Trace { src, dst, proto, dport, egress, ingress, verdict: v } = t;
    api::PolicyTrace {
        src: *src,
        dst: *dst,
        proto: *proto,
        dport: *dport,
        egress: egress.as_ref().map(trace_side),
        ingress: ingress.as_ref().map(trace_side),
        verdict: verdict(*v),
    }
}

impl Agent {
    pub fn policy_trace(&self, q: &TraceQuery) -> Result<api::PolicyTraceResponse, AgentError> {
        let snap = self.policy_snapshot().ok_or_else(|| AgentError::BadRequest("this agent enforces no policy".into()))?;
        let trace = sluice_policy::trace(&snap.policies, &snap.view, &snap.compiled, q.src, q.dst, q.proto, q.port);
        Ok(api::PolicyTraceResponse { node: self.config().node_name.clone(), text: trace.to_string(), trace: trace_to_api(&trace) })
    }

    pub fn policy_endpoint(&self, q: &EndpointQuery) -> Result<api::EndpointPolicyResponse, AgentError> {
        let snap = self.policy_snapshot().ok_or_else(|| AgentError::BadRequest("this agent enforces no policy".into()))?;
        let Some(ep) = snap.view.endpoints.iter().find(|e| e.key == q.pod && e.local) else {
            return Err(AgentError::BadRequest(format!("pod {} has no endpoint on node {}", q.pod, self.config().node_name)));
        };
        let policy = snap.compiled.endpoints.get(&q.pod).cloned().unwrap_or_default();
        Ok(api::EndpointPolicyResponse {
            node: self.config().node_name.clone(),
            pod: ep.key.clone(),
            identity: ep.identity,
            labels: ep.labels.as_map().clone(),
            ips: ep.ips.clone(),
            ingress: direction(&snap, &policy.ingress),
            egress: direction(&snap, &policy.egress),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn side(ingress: bool) -> SideTrace {
        let policy = PolicyRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: "deny-all".into() };
        SideTrace {
            endpoint: "x/a".into(),
            identity: 300,
            labels: BTreeMap::from([("app".to_string(), "a".to_string())]).into(),
            mode: Mode::Enforce,
            policies: vec![policy.clone()],
            peer: PeerTrace {
                ip: "10.0.0.2".parse().unwrap(),
                identity: 301,
                what: "y/a".into(),
                ip_block: Some(IpBlockTrace { prefix: "10.0.0.0/24".parse().unwrap(), identity: 16_777_217 }),
            },
            matched: vec![
                MatchedEntry {
                    key: EntryKey { identity: IDENTITY_ANY, proto: Some(6), port: 80, port_prefix: 16 },
                    verdict: Verdict::Deny,
                    rules: vec![RuleRef { policy: policy.clone(), ingress, index: 0 }],
                    by_address: false,
                },
                MatchedEntry {
                    key: EntryKey { identity: 16_777_217, proto: Some(6), port: 80, port_prefix: 16 },
                    verdict: Verdict::Allow,
                    rules: vec![RuleRef { policy, ingress, index: 1 }],
                    by_address: true,
                },
            ],
            verdict: Verdict::Deny,
            reason: "denied by default".into(),
            http: None,
        }
    }

    /// The answer keeps the JSON the engine's own types had: the CLI prints it with `-o json`.
    #[test]
    fn trace_answer_serialises_as_the_engine_trace() {
        let trace = Trace {
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            proto: 6,
            dport: 80,
            egress: None,
            ingress: Some(side(true)),
            verdict: Verdict::Deny,
        };
        let engine = serde_json::to_value(&trace).unwrap();
        let answer = serde_json::to_value(trace_to_api(&trace)).unwrap();
        assert_eq!(answer, engine, "the API trace has the engine trace's fields and values");
        let back: api::PolicyTrace = serde_json::from_value(engine).unwrap();
        assert_eq!(back, trace_to_api(&trace), "the engine's JSON reads back as the API trace");
    }
}
