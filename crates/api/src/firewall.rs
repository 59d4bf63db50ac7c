//! The answer of `sluice preflight`: the host firewall audit of a node, every netfilter rule
//! classified against eBPF host routing. The rule types mirror `sluice-netfilter`'s, so the CLI
//! reads fields without depending on the analyser; the snake_case names among them are the
//! names this answer has always had on the wire.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `GET /v1/preflight`: the host firewall audit of the agent's namespace, now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreflightResponse {
    pub node: String,
    /// The host routing mode in force (`bpf`, `legacy`); `none` from `sluice preflight
    /// --local`, which audits without an agent.
    pub host_routing: String,
    pub report: FirewallReport,
    /// The report as a text table (harmless rules left out), for people.
    pub table: String,
    /// The dump commands whose output was read.
    pub sources_read: Vec<String>,
    /// The sources that exist but could not be read.
    pub problems: Vec<SourceProblem>,
}

/// Why the audit could not read a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProblem {
    /// The dump command.
    pub source: String,
    pub problem: String,
}

/// Every rule of the node, classified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallReport {
    /// No rule is bypassed: host routing may be `bpf`.
    pub clean: bool,
    pub counts: FirewallCounts,
    pub verdicts: Vec<RuleVerdict>,
}

/// Number of verdicts in each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallCounts {
    pub owned: usize,
    pub harmless: usize,
    #[serde(rename = "kube_proxy")]
    pub kube_proxy: usize,
    pub bypassed: usize,
}

/// The classification of one rule (or base chain policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleVerdict {
    pub rule: FirewallRule,
    pub class: RuleClass,
    /// Why, in one sentence naming the hook, the match and the effect.
    pub reason: String,
}

/// How a rule fares under eBPF host routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleClass {
    /// Installed by Sluice itself.
    Owned,
    /// Host-routed pod traffic never meets it, or skipping it changes nothing.
    Harmless,
    /// kube-proxy's chains: inert for pod traffic under host routing, as expected.
    KubeProxy,
    /// Applies to pod traffic today and would silently stop applying.
    Bypassed,
}

/// One rule, in the chain and at the position it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallRule {
    pub family: RuleFamily,
    pub backend: RuleBackend,
    pub source: RuleSource,
    pub table: String,
    pub chain: String,
    /// 1-based position in the chain; 0 for a policy.
    pub position: usize,
    /// nftables rule handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    pub kind: RuleKind,
    /// The rule as its tool writes it.
    pub text: String,
    pub matches: RuleMatches,
    pub actions: Vec<RuleAction>,
}

/// Address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleFamily {
    Ipv4,
    Ipv6,
    /// nftables `inet`: one table for IPv4 and IPv6.
    Inet,
}

/// Which tool owns the kernel state a rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleBackend {
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

/// Which dump a rule was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleSource {
    IptablesSave,
    NftJson,
}

/// Whether a rule is a rule of its chain or stands for the chain's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Rule,
    Policy,
}

/// What a rule matches (every listed condition must hold); empty conditions are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMatches {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<AddrMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<AddrMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_iface: Vec<IfaceMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_iface: Vec<IfaceMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtoMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addr_type: Vec<AddrTypeMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Conditions kept as text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<String>,
}

/// The address is in one of `nets` (or in none, when negated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrMatch {
    pub nets: Vec<IpNet>,
    pub negated: bool,
}

/// The interface name matches one of `patterns` (or none, when negated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceMatch {
    pub patterns: Vec<IfacePattern>,
    pub negated: bool,
}

/// An interface name, or a prefix when `wildcard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfacePattern {
    pub name: String,
    pub wildcard: bool,
}

/// Layer 4 protocol match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtoMatch {
    pub name: String,
    pub negated: bool,
}

/// The source or destination address is of one of `types` (or of none, when negated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrTypeMatch {
    pub direction: MatchDirection,
    pub types: Vec<String>,
    pub negated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchDirection {
    Source,
    Destination,
}

/// What a rule does to a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    Accept,
    Drop,
    Reject,
    Return,
    Continue,
    Queue,
    Counter,
    Log,
    Jump(String),
    Goto(String),
    Nat(NatKind),
    /// nftables verdict map: the chains it can jump or go to, and the other verdicts in it.
    VerdictMap {
        chains: Vec<String>,
        verdicts: Vec<String>,
    },
    /// Any other target or statement.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    Snat,
    Dnat,
    Masquerade,
    Redirect,
    Netmap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_wire() {
        let counts = serde_json::to_value(FirewallCounts { owned: 1, harmless: 2, kube_proxy: 3, bypassed: 4 }).unwrap();
        assert_eq!(counts, serde_json::json!({"owned": 1, "harmless": 2, "kube_proxy": 3, "bypassed": 4}), "the counts' field names");
        let actions =
            serde_json::to_value([RuleAction::Drop, RuleAction::Jump("KUBE-SVC".into()), RuleAction::Nat(NatKind::Masquerade)]).unwrap();
        assert_eq!(
            actions,
            serde_json::json!(["drop", {"jump": "KUBE-SVC"}, {"nat": "masquerade"}]),
            "actions are externally tagged, kebab-case"
        );
        assert_eq!(serde_json::to_value(RuleClass::KubeProxy).unwrap(), "kube-proxy", "class name");
    }
}
