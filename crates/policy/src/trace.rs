//! `policy trace`: why a connection gets its verdict. For each local side it shows the
//! endpoint, the policies selecting it, what the peer's address resolves to (its identity, and
//! the ipBlock prefix it falls under), the entries the datapath's lookups match and the rules
//! behind them, and a one-line reason.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use sluice_model::LabelSet;

use crate::eval::{identity_of, ip_block_of, local_endpoint, lookup, PeerIds};
use crate::ir::{Policy, PolicyRef};
use crate::output::{
    ClusterView, Compiled, EntryKey, Mode, RuleRef, Verdict, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// The explanation of one connection's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dport: u16,
    /// The source's egress, when the source is a local endpoint.
    pub egress: Option<SideTrace>,
    /// The destination's ingress, when the destination is a local endpoint.
    pub ingress: Option<SideTrace>,
    pub verdict: Verdict,
}

/// One local endpoint's side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideTrace {
    /// `namespace/name`.
    pub endpoint: String,
    pub identity: u32,
    pub labels: LabelSet,
    pub mode: Mode,
    pub policies: Vec<PolicyRef>,
    pub peer: PeerTrace,
    /// What the lookups matched: the peer identity's, IDENTITY_ANY's, and by address when
    /// both missed.
    pub matched: Vec<MatchedEntry>,
    pub verdict: Verdict,
    pub reason: String,
    /// Allowed only through the node's layer-7 proxy: the HTTP rules it judges each request
    /// by (any of them allows a request; the proxy answers the others with 403).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpGrantTrace>>,
}

/// The HTTP rules of one policy that apply to this peer and port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpGrantTrace {
    pub policy: String,
    pub rules: Vec<crate::l7::HttpRule>,
}

/// The other end of the connection as this side sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerTrace {
    pub ip: IpAddr,
    pub identity: u32,
    /// A pod key, `host`, `remote-node`, `world` or `cidr <prefix>`.
    pub what: String,
    /// The longest ipBlock prefix holding the address, when a policy names one.
    #[serde(rename = "ipBlock", skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlockTrace>,
}

/// An ipBlock prefix and its identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpBlockTrace {
    pub prefix: IpNet,
    pub identity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchedEntry {
    pub key: EntryKey,
    pub verdict: Verdict,
    pub rules: Vec<RuleRef>,
    /// An entry by address: its key's identity is the peer's ipBlock identity.
    #[serde(rename = "byAddress")]
    pub by_address: bool,
}

/// Explains [`crate::eval::connection`]'s verdict for the same arguments.
pub fn trace(policies: &[Policy], view: &ClusterView, compiled: &Compiled, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Trace {
    let side = |local: IpAddr, peer: IpAddr, ingress: bool| {
        let ep = local_endpoint(view, local)?;
        let policy = compiled.endpoints.get(&ep.key)?;
        let table = if ingress { &policy.ingress } else { &policy.egress };
        let peer = describe_peer(view, compiled, peer);
        let ids = PeerIds { identity: peer.identity, ip_block: peer.ip_block.as_ref().map(|b| b.identity) };
        let (verdict, matched) = lookup(table, ids, proto, dport);
        let proxied = crate::eval::deciding(&matched).is_some_and(|m| m.entry.proxy);
        let http = proxied.then(|| {
            table
                .layer7
                .iter()
                .filter(|g| g.port == dport && (g.identity == IDENTITY_ANY || g.identity == peer.identity))
                .map(|g| HttpGrantTrace { policy: g.policy.clone(), rules: g.http.clone() })
                .collect::<Vec<_>>()
        });
        let matched: Vec<MatchedEntry> = matched
            .into_iter()
            .map(|m| MatchedEntry { key: m.key, verdict: m.entry.verdict, rules: m.entry.rules, by_address: m.by_address })
            .collect();
        let address = match (&peer.ip_block, table.by_address.is_empty()) {
            (Some(b), false) => format!(" or address in ipBlock {}", b.prefix),
            _ => String::new(),
        };
        let direction = if ingress { "ingress" } else { "egress" };
        let service = format!("{}/{dport}", proto_name(proto));
        let reason = match (table.mode, matched.iter().find(|m| m.verdict == verdict)) {
            (Mode::None, _) => format!("allowed: no policy selects {} for {direction}", ep.key),
            (_, Some(m)) => {
                let through = if proxied { " through the layer-7 proxy (HTTP rules below; other requests get 403)" } else { "" };
                format!(
                    "{}{through} by {}",
                    verdict_word(verdict),
                    m.rules.iter().map(|r| rule_name(policies, r)).collect::<Vec<_>>().join(", ")
                )
            }
            (mode, None) => format!(
                "{} by default: selected by {}, no rule {} identity {}{address} on {service}",
                verdict_word(verdict),
                table.policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                if mode == Mode::DefaultAllow { "matches" } else { "allows" },
                peer.identity,
            ),
        };
        Some(SideTrace {
            endpoint: ep.key.clone(),
            identity: ep.identity,
            labels: ep.labels.clone(),
            mode: table.mode,
            policies: table.policies.clone(),
            peer,
            matched,
            verdict,
            reason,
            http,
        })
    };
    let egress = side(src, dst, false);
    let ingress = side(dst, src, true);
    let verdict = egress.iter().chain(&ingress).map(|s| s.verdict).max().unwrap_or(Verdict::Allow);
    Trace { src, dst, proto, dport, egress, ingress, verdict }
}

fn describe_peer(view: &ClusterView, compiled: &Compiled, ip: IpAddr) -> PeerTrace {
    let identity = identity_of(compiled, ip);
    let what = if let Some(ep) = view.endpoints.iter().find(|e| e.ips.contains(&ip)) {
        ep.key.clone()
    } else {
        match identity {
            IDENTITY_HOST => "host".to_owned(),
            IDENTITY_REMOTE_NODE => "remote-node".to_owned(),
            IDENTITY_WORLD => "world".to_owned(),
            _ => compiled
                .ipcache
                .iter()
                .filter(|(net, id)| **id == identity && net.contains(&ip))
                .max_by_key(|(net, _)| net.prefix_len())
                .map_or_else(|| "unknown".to_owned(), |(net, _)| format!("cidr {net}")),
        }
    };
    let ip_block = ip_block_of(compiled, ip).map(|(prefix, identity)| IpBlockTrace { prefix, identity });
    PeerTrace { ip, identity, what, ip_block }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allowed",
        Verdict::Audit => "audited (allowed, reported)",
        Verdict::Deny => "denied",
    }
}

/// `NetworkPolicy x/p ingress rule 0 (deny, audit)`.
fn rule_name(policies: &[Policy], r: &RuleRef) -> String {
    let policy = policies.iter().find(|p| p.id == r.policy);
    let rule = policy.and_then(|p| if r.ingress { p.ingress.as_ref() } else { p.egress.as_ref() }).and_then(|d| d.rules.get(r.index));
    let mut notes = Vec::new();
    if let Some(rule) = rule {
        notes.push(format!("{:?}", rule.action).to_lowercase());
    }
    if policy.is_some_and(|p| p.audit) {
        notes.push("audit".to_owned());
    }
    let direction = if r.ingress { "ingress" } else { "egress" };
    let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
    format!("{} {direction} rule {}{notes}", r.policy, r.index)
}

fn proto_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "tcp".to_owned(),
        PROTO_UDP => "udp".to_owned(),
        PROTO_SCTP => "sctp".to_owned(),
        PROTO_ICMP => "icmp".to_owned(),
        PROTO_ICMPV6 => "icmpv6".to_owned(),
        n => format!("proto-{n}"),
    }
}

/// `GET /public/.* host api\.example\.test headers [X-Role: admin]`; `any request` for an
/// empty rule.
pub fn http_rule_text(r: &crate::l7::HttpRule) -> String {
    let mut parts = Vec::new();
    if let Some(m) = &r.method {
        parts.push(format!("method {m}"));
    }
    if let Some(p) = &r.path {
        parts.push(format!("path {p}"));
    }
    if let Some(h) = &r.host {
        parts.push(format!("host {h}"));
    }
    for h in &r.headers {
        parts.push(match &h.value {
            Some(v) => format!("header {}: {v}", h.name),
            None => format!("header {}", h.name),
        });
    }
    if parts.is_empty() {
        "any request".to_owned()
    } else {
        parts.join(", ")
    }
}

fn key_text(k: &EntryKey) -> String {
    let identity = match k.identity {
        IDENTITY_ANY => "any".to_owned(),
        n => n.to_string(),
    };
    match k.proto {
        None => format!("{identity} any"),
        Some(p) => format!("{identity} {}/{}/{}", proto_name(p), k.port, k.port_prefix),
    }
}

// === impl Trace ===

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = format!("{}/{}", proto_name(self.proto), self.dport);
        writeln!(f, "{} -> {} {service}: {:?}", self.src, self.dst, self.verdict)?;
        for (name, side) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            let Some(s) = side else {
                writeln!(f, "  {name}: not a local endpoint, no lookup")?;
                continue;
            };
            writeln!(f, "  {name} of {} (identity {}, {})", s.endpoint, s.identity, s.labels)?;
            writeln!(f, "    mode: {:?}", s.mode)?;
            for p in &s.policies {
                writeln!(f, "    selected by {}", p)?;
            }
            write!(f, "    peer {}: identity {} ({})", s.peer.ip, s.peer.identity, s.peer.what)?;
            match &s.peer.ip_block {
                Some(b) => writeln!(f, ", in ipBlock {} (identity {})", b.prefix, b.identity)?,
                None => writeln!(f)?,
            }
            for m in &s.matched {
                let by = if m.by_address { "by address " } else { "" };
                writeln!(f, "    entry {by}{} -> {:?}", key_text(&m.key), m.verdict)?;
                for r in &m.rules {
                    let direction = if r.ingress { "ingress" } else { "egress" };
                    writeln!(f, "      from {} {direction} rule {}", r.policy, r.index)?;
                }
            }
            writeln!(f, "    => {:?}: {}", s.verdict, s.reason)?;
            for grant in s.http.iter().flatten() {
                writeln!(f, "    HTTP rules of {}:", grant.policy)?;
                for r in &grant.rules {
                    writeln!(f, "      {}", http_rule_text(r))?;
                }
            }
        }
        Ok(())
    }
}
