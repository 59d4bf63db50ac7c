//! The firewall question the agent answers: `sluice preflight`, the audit of the host firewall
//! now, in the analyser's findings translated to the API's types (`sluice_api::firewall`). The
//! same answer is made without an agent for `sluice preflight --local`, before installing.

use sluice_api::firewall as api;
use sluice_netfilter::classify::{Class, Report, Verdict};
use sluice_netfilter::model::{
    Action, AddrMatch, AddrTypeMatch, Backend, Direction, Family, IfaceMatch, IfacePattern, Matches, NatKind, ProtoMatch, Rule, RuleKind,
    Source,
};

use crate::agent::Agent;

impl Agent {
    /// The host firewall audit, now, in the agent's namespace (`sluice preflight`).
    pub fn preflight(&self) -> api::PreflightResponse {
        let ctx = super::AuditContext { pod_cidrs: self.config().pod_cidrs.clone(), devices: self.config().devices.clone() };
        preflight_answer(self.config().node_name.clone(), self.host_routing().mode.as_str(), &ctx)
    }
}

/// The host routing field of an answer made without an agent: nothing is in force.
pub const NO_AGENT: &str = "none";

/// The same audit without an agent, in the network namespace the caller runs in, for a node
/// that is to run Sluice with `ctx` (`sluice preflight --local`, before installing).
pub fn preflight_local(node: String, ctx: &super::AuditContext) -> api::PreflightResponse {
    preflight_answer(node, NO_AGENT, ctx)
}

fn preflight_answer(node: String, host_routing: &str, ctx: &super::AuditContext) -> api::PreflightResponse {
    let audit = super::audit(ctx, None);
    api::PreflightResponse {
        node,
        host_routing: host_routing.into(),
        table: audit.report.render_table(false),
        report: report_to_api(&audit.report),
        sources_read: audit.sources_read,
        problems: audit.problems.into_iter().map(|p| api::SourceProblem { source: p.source, problem: p.problem }).collect(),
    }
}

// === the analyser's report, as the API says it ===
//
// Every struct is destructured in full, so a field the analyser gains does not go missing from
// the answer unnoticed.

pub fn report_to_api(report: &Report) -> api::FirewallReport {
    let counts = report.counts();
    api::FirewallReport {
        clean: report.clean(),
        counts: api::FirewallCounts {
            owned: counts.owned,
            harmless: counts.harmless,
            kube_proxy: counts.kube_proxy,
            bypassed: counts.bypassed,
        },
        verdicts: report.verdicts.iter().map(verdict).collect(),
    }
}

fn verdict(v: &Verdict) -> api::RuleVerdict {
    let Verdict { rule: r, class: c, reason } = v;
    api::RuleVerdict { rule: rule(r), class: class(*c), reason: reason.clone() }
}

fn class(c: Class) -> api::RuleClass {
    match c {
        Class::Owned => api::RuleClass::Owned,
        Class::Harmless => api::RuleClass::Harmless,
        Class::KubeProxy => api::RuleClass::KubeProxy,
        Class::Bypassed => api::RuleClass::Bypassed,
    }
}

fn rule(r: &Rule) -> api::FirewallRule {
    let Rule { family, backend, source, table, chain, position, handle, kind, text, matches: m, actions } = r;
    api::FirewallRule {
        family: match family {
            Family::Ipv4 => api::RuleFamily::Ipv4,
            Family::Ipv6 => api::RuleFamily::Ipv6,
            Family::Inet => api::RuleFamily::Inet,
        },
        backend: match backend {
            Backend::IptablesLegacy => api::RuleBackend::IptablesLegacy,
            Backend::IptablesNft => api::RuleBackend::IptablesNft,
            Backend::Nftables => api::RuleBackend::Nftables,
        },
        source: match source {
            Source::IptablesSave => api::RuleSource::IptablesSave,
            Source::NftJson => api::RuleSource::NftJson,
        },
        table: table.clone(),
        chain: chain.clone(),
        position: *position,
        handle: *handle,
        kind: match kind {
            RuleKind::Rule => api::RuleKind::Rule,
            RuleKind::Policy => api::RuleKind::Policy,
        },
        text: text.clone(),
        matches: matches(m),
        actions: actions.iter().map(action).collect(),
    }
}

fn matches(m: &Matches) -> api::RuleMatches {
    let Matches { source, destination, in_iface, out_iface, protocol, addr_type, comment, other } = m;
    let addr = |a: &AddrMatch| api::AddrMatch { nets: a.nets.clone(), negated: a.negated };
    let iface = |i: &IfaceMatch| api::IfaceMatch {
        patterns: i
            .patterns
            .iter()
            .map(|IfacePattern { name, wildcard }| api::IfacePattern { name: name.clone(), wildcard: *wildcard })
            .collect(),
        negated: i.negated,
    };
    api::RuleMatches {
        source: source.iter().map(addr).collect(),
        destination: destination.iter().map(addr).collect(),
        in_iface: in_iface.iter().map(iface).collect(),
        out_iface: out_iface.iter().map(iface).collect(),
        protocol: protocol.as_ref().map(|ProtoMatch { name, negated }| api::ProtoMatch { name: name.clone(), negated: *negated }),
        addr_type: addr_type
            .iter()
            .map(|AddrTypeMatch { direction, types, negated }| api::AddrTypeMatch {
                direction: match direction {
                    Direction::Source => api::MatchDirection::Source,
                    Direction::Destination => api::MatchDirection::Destination,
                },
                types: types.clone(),
                negated: *negated,
            })
            .collect(),
        comment: comment.clone(),
        other: other.clone(),
    }
}

fn action(a: &Action) -> api::RuleAction {
    match a {
        Action::Accept => api::RuleAction::Accept,
        Action::Drop => api::RuleAction::Drop,
        Action::Reject => api::RuleAction::Reject,
        Action::Return => api::RuleAction::Return,
        Action::Continue => api::RuleAction::Continue,
        Action::Queue => api::RuleAction::Queue,
        Action::Counter => api::RuleAction::Counter,
        Action::Log => api::RuleAction::Log,
        Action::Jump(c) => api::RuleAction::Jump(c.clone()),
        Action::Goto(c) => api::RuleAction::Goto(c.clone()),
        Action::Nat(k) => api::RuleAction::Nat(match k {
            NatKind::Snat => api::NatKind::Snat,
            NatKind::Dnat => api::NatKind::Dnat,
            NatKind::Masquerade => api::NatKind::Masquerade,
            NatKind::Redirect => api::NatKind::Redirect,
            NatKind::Netmap => api::NatKind::Netmap,
        }),
        Action::VerdictMap { chains, verdicts } => api::RuleAction::VerdictMap { chains: chains.clone(), verdicts: verdicts.clone() },
        Action::Other(s) => api::RuleAction::Other(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use sluice_netfilter::classify::Context;

    use super::*;

    /// Rules of every shape the iptables reader produces: address, interface, protocol,
    /// addrtype and comment matches; accept, drop, jump, NAT and other targets; a policy.
    const RULES: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:CUSTOM - [0:0]
-A FORWARD -s 10.244.0.0/16 ! -d 10.0.0.0/8 -j DROP
-A FORWARD -i lxc+ -o eth0 -p tcp -m comment --comment \"pods out\" -j ACCEPT
-A FORWARD -m conntrack --ctstate INVALID -j CUSTOM
-A CUSTOM -j LOG
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.0/16 ! -o lxc+ -j MASQUERADE
-A POSTROUTING -j MARK --set-xmark 0x4000/0x4000
COMMIT
";

    /// The answer keeps the JSON the analyser's report had: `sluice preflight -o json` prints it.
    #[test]
    fn report_answer_serialises_as_the_analyser_report() {
        let ruleset = sluice_netfilter::iptables::parse(RULES, Family::Ipv4).unwrap();
        let report = Report::new(&ruleset, &Context::new(vec!["10.244.0.0/16".parse().unwrap()], vec!["eth0".into()]));
        assert!(!report.clean(), "the fixture has a bypassed rule, so every class field is exercised");
        let analyser = serde_json::to_value(&report).unwrap();
        let text = analyser.to_string();
        for shape in [
            "\"source\":[",
            "\"in_iface\"",
            "\"out_iface\"",
            "\"protocol\"",
            "\"addr_type\"",
            "\"comment\"",
            "\"other\"",
            "\"jump\"",
            "\"nat\"",
            "\"policy\"",
        ] {
            assert!(text.contains(shape), "the fixture exercises {shape}: {text}");
        }
        let answer = serde_json::to_value(report_to_api(&report)).unwrap();
        assert_eq!(answer, analyser, "the API report has the analyser report's fields and values");
        let back: api::FirewallReport = serde_json::from_value(analyser).unwrap();
        assert_eq!(back, report_to_api(&report), "the analyser's JSON reads back as the API report");
    }
}
