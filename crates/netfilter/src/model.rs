//! The node's netfilter rules as Sluice reasons about them: one shape for what iptables-save
//! and `nft -j list ruleset` print, so classification does not care which tool wrote a rule.
//! Only what decides whether pod traffic can hit a rule is parsed; the rest stays in `text`.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

/// Address family of a table. iptables tables are IPv4 or IPv6; nftables `inet` tables hold both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
    /// nftables `inet`: one table for IPv4 and IPv6.
    Inet,
}

/// Which tool owns the kernel state a rule lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// x_tables, written by `iptables-legacy`.
    IptablesLegacy,
    /// nf_tables tables written by `iptables-nft` (seen through iptables-save or nft alike).
    IptablesNft,
    /// Native nftables tables.
    Nftables,
}

/// Which dump a rule was read from; the same iptables-nft rule can appear in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    IptablesSave,
    NftJson,
}

/// A netfilter hook. Base chains are attached to one; user chains are reached by jumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// nftables `ingress` (after tc ingress, so also skipped by redirected packets).
    Ingress,
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// Verdict of a base chain for packets no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Drop,
}

/// A chain of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub family: Family,
    pub backend: Backend,
    pub source: Source,
    pub table: String,
    pub name: String,
    /// Set for base chains (iptables built-in chains, nftables chains with a `hook`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<Hook>,
    /// Set for base chains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Devices an nftables `ingress` chain is bound to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// Whether a [`Rule`] is a rule of its chain or stands for the chain's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Rule,
    /// The base chain's policy, as classification reports it (position 0, no matches).
    Policy,
}

/// One rule, in the chain and at the position it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub family: Family,
    pub backend: Backend,
    pub source: Source,
    pub table: String,
    pub chain: String,
    /// 1-based position in the chain (as `iptables -L --line-numbers` counts); 0 for a policy.
    pub position: usize,
    /// nftables rule handle (for `nft delete rule ... handle N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    pub kind: RuleKind,
    /// The rule as its tool writes it: `-A FORWARD -s 10.244.0.0/16 -j DROP`, or the nft
    /// statements `ip saddr 10.244.0.0/16 drop`.
    pub text: String,
    pub matches: Matches,
    /// The iptables target (at most one), or the nft statements with effects, in order.
    pub actions: Vec<Action>,
}

/// What a rule matches, as far as deciding whether it can see pod traffic needs. Every listed
/// condition must hold (they are ANDed); what is not understood is kept in `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Matches {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<AddrMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<AddrMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub in_iface: Vec<IfaceMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub out_iface: Vec<IfaceMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtoMatch>,
    /// `-m addrtype` / `fib daddr type`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addr_type: Vec<AddrTypeMatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Conditions kept as text (`-m conntrack --ctstate INVALID`, `ct state new`, ...); they can
    /// only narrow what the rule matches, so classification treats them as "may match".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<String>,
}

/// Source or destination match: the address is in one of `nets` (or in none, when negated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrMatch {
    pub nets: Vec<IpNet>,
    pub negated: bool,
}

/// Interface match: the name matches one of `patterns` (or none, when negated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfaceMatch {
    pub patterns: Vec<IfacePattern>,
    pub negated: bool,
}

/// An interface name, or a prefix when `wildcard` (iptables `lxc+`, nftables `"lxc*"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfacePattern {
    pub name: String,
    pub wildcard: bool,
}

/// Layer 4 protocol match (`-p tcp`, `meta l4proto tcp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtoMatch {
    pub name: String,
    pub negated: bool,
}

/// Address type match: the source or destination address is of one of `types` (`LOCAL`,
/// `UNICAST`, ...; upper case), or of none when negated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddrTypeMatch {
    pub direction: Direction,
    pub types: Vec<String>,
    pub negated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Source,
    Destination,
}

/// What a rule does to a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Accept,
    Drop,
    Reject,
    Return,
    /// nftables `continue`.
    Continue,
    Queue,
    /// nftables `counter` (iptables counts every rule anyway).
    Counter,
    /// `LOG`, `NFLOG`, nft `log`.
    Log,
    Jump(String),
    Goto(String),
    Nat(NatKind),
    /// nftables verdict map: the chains it can jump or go to, and the other verdicts in it.
    VerdictMap {
        chains: Vec<String>,
        verdicts: Vec<String>,
    },
    /// Any other target or statement (`MARK`, `TCPMSS`, `meta mark set`, ...).
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    Snat,
    Dnat,
    Masquerade,
    Redirect,
    Netmap,
}

/// The rules and chains of one node, from one or several dumps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
    /// Rules in chain order; `position` counts within each chain.
    pub rules: Vec<Rule>,
}

// === impl Family ===

impl Family {
    /// The nftables family name: `ip`, `ip6`, `inet`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
            Family::Inet => "inet",
        })
    }
}

// === impl Backend ===

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::IptablesNft => "iptables-nft",
            Backend::Nftables => "nftables",
        })
    }
}

// === impl Hook ===

impl Hook {
    /// The hook of an iptables built-in chain (`FORWARD` → forward).
    pub fn from_builtin_chain(name: &str) -> Option<Hook> {
        match name {
            "PREROUTING" => Some(Hook::Prerouting),
            "INPUT" => Some(Hook::Input),
            "FORWARD" => Some(Hook::Forward),
            "OUTPUT" => Some(Hook::Output),
            "POSTROUTING" => Some(Hook::Postrouting),
            _ => None,
        }
    }

    /// The hook of an nftables base chain (`"forward"` → forward).
    pub fn from_nft(name: &str) -> Option<Hook> {
        match name {
            "ingress" => Some(Hook::Ingress),
            "prerouting" => Some(Hook::Prerouting),
            "input" => Some(Hook::Input),
            "forward" => Some(Hook::Forward),
            "output" => Some(Hook::Output),
            "postrouting" => Some(Hook::Postrouting),
            _ => None,
        }
    }

    /// The iptables spelling: `FORWARD`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "INGRESS",
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    /// Whether pod traffic that eBPF host routing redirects at tc ingress never passes this
    /// hook. INPUT and OUTPUT still see traffic to and from the node itself.
    pub fn skipped_by_host_routing(self) -> bool {
        matches!(self, Hook::Ingress | Hook::Prerouting | Hook::Forward | Hook::Postrouting)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Policy ===

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        })
    }
}

// === impl Chain ===

impl Chain {
    /// Whether `rule` belongs to this chain.
    pub fn holds(&self, rule: &Rule) -> bool {
        self.same_table(rule.source, rule.backend, rule.family, &rule.table) && self.name == rule.chain
    }

    fn same_table(&self, source: Source, backend: Backend, family: Family, table: &str) -> bool {
        self.source == source && self.backend == backend && self.family == family && self.table == table
    }
}

// === impl Rule ===

impl Rule {
    /// Chains this rule can pass packets to: jump and goto targets, verdict map entries.
    pub fn jump_targets(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().flat_map(|action| {
            let targets: Vec<&str> = match action {
                Action::Jump(chain) | Action::Goto(chain) => vec![chain.as_str()],
                Action::VerdictMap { chains, .. } => chains.iter().map(String::as_str).collect(),
                _ => Vec::new(),
            };
            targets
        })
    }
}

// === impl Matches ===

impl Matches {
    /// True when nothing but a comment restricts the rule: it matches every packet.
    pub fn is_unconditional(&self) -> bool {
        self.source.is_empty()
            && self.destination.is_empty()
            && self.in_iface.is_empty()
            && self.out_iface.is_empty()
            && self.protocol.is_none()
            && self.addr_type.is_empty()
            && self.other.is_empty()
    }
}

// === impl AddrMatch ===

impl fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("! ")?;
        }
        let nets: Vec<String> = self.nets.iter().map(ToString::to_string).collect();
        f.write_str(&nets.join(","))
    }
}

// === impl IfaceMatch ===

impl fmt::Display for IfaceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negated {
            f.write_str("! ")?;
        }
        let names: Vec<String> = self.patterns.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

// === impl IfacePattern ===

impl IfacePattern {
    /// Parses an iptables (`lxc+`) or nftables (`lxc*`) interface name.
    pub fn parse(text: &str) -> IfacePattern {
        match text.strip_suffix('+').or_else(|| text.strip_suffix('*')) {
            Some(prefix) => IfacePattern { name: prefix.to_string(), wildcard: true },
            None => IfacePattern { name: text.to_string(), wildcard: false },
        }
    }

    /// Whether the interface `name` matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.starts_with(&self.name)
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for IfacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.wildcard {
            f.write_str("+")?;
        }
        Ok(())
    }
}

// === impl Action ===

impl Action {
    /// Whether skipping this action changes nothing for a packet that would have been
    /// delivered anyway: it neither drops, rewrites, marks nor logs.
    pub fn is_side_effect_free(&self) -> bool {
        matches!(self, Action::Accept | Action::Return | Action::Continue | Action::Counter)
    }

    /// Whether a packet the rule matches leaves the chain here (never reaches the next rule).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Action::Accept | Action::Drop | Action::Reject | Action::Return | Action::Queue | Action::Goto(_) | Action::Nat(_))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Accept => f.write_str("ACCEPT"),
            Action::Drop => f.write_str("DROP"),
            Action::Reject => f.write_str("REJECT"),
            Action::Return => f.write_str("RETURN"),
            Action::Continue => f.write_str("continue"),
            Action::Queue => f.write_str("QUEUE"),
            Action::Counter => f.write_str("counter"),
            Action::Log => f.write_str("LOG"),
            Action::Jump(chain) => write!(f, "jump to {chain}"),
            Action::Goto(chain) => write!(f, "goto {chain}"),
            Action::Nat(kind) => write!(f, "{kind}"),
            Action::VerdictMap { .. } => f.write_str("verdict map"),
            Action::Other(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Snat => "SNAT",
            NatKind::Dnat => "DNAT",
            NatKind::Masquerade => "MASQUERADE",
            NatKind::Redirect => "REDIRECT",
            NatKind::Netmap => "NETMAP",
        })
    }
}

// === impl Ruleset ===

impl Ruleset {
    /// Joins the dumps of one node (iptables-save, ip6tables-save, legacy variants, nft JSON)
    /// into one ruleset. Tables that iptables-nft wrote appear both in iptables-save and in
    /// `nft -j list ruleset`; when the iptables-save view of such a table is present, its nft
    /// JSON copy is dropped, so each rule is classified once and shown in iptables syntax.
    pub fn merge(parts: impl IntoIterator<Item = Ruleset>) -> Ruleset {
        let mut all = Ruleset::default();
        for part in parts {
            all.chains.extend(part.chains);
            all.rules.extend(part.rules);
        }
        let saved: Vec<(Family, String)> = all
            .chains
            .iter()
            .filter(|chain| chain.source == Source::IptablesSave && chain.backend == Backend::IptablesNft)
            .map(|chain| (chain.family, chain.table.clone()))
            .collect();
        let is_copy = |source: Source, backend: Backend, family: Family, table: &str| {
            source == Source::NftJson && backend == Backend::IptablesNft && saved.iter().any(|(f, t)| *f == family && t == table)
        };
        all.chains.retain(|c| !is_copy(c.source, c.backend, c.family, &c.table));
        all.rules.retain(|r| !is_copy(r.source, r.backend, r.family, &r.table));
        all
    }

    /// The chain a rule belongs to.
    pub fn chain_of(&self, rule: &Rule) -> Option<&Chain> {
        self.chains.iter().find(|chain| chain.holds(rule))
    }

    /// The rules of `chain`, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a Chain) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |rule| chain.holds(rule))
    }
}
