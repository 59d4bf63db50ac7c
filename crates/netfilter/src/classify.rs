//! Decides, rule by rule, whether eBPF host routing would silently skip a node's netfilter
//! rule for pod traffic, by following the traffic it redirects through every chain that traffic
//! would have passed. Each verdict carries the reason in words an operator can act on.
//!
//! The traffic host routing takes away from netfilter (bpf mode) is modelled as two flows per
//! address family, each skipping PREROUTING, FORWARD, POSTROUTING (and nftables ingress):
//! - *from pods*: enters on a pod interface (`lxc…`) with a pod source address, to any
//!   destination except the node's own addresses and its other local networks, and leaves
//!   through a pod interface or a configured device;
//! - *to pods*: enters on a configured device, from any address outside the node's other
//!   local networks, to a pod address, and leaves through a pod interface.
//!
//! A rule is `bypassed` when one of those flows can reach it along some path of jumps and its
//! matches can hold, and skipping it changes what happens to the packet (it drops, rejects,
//! rewrites, marks or logs, or jumps to a chain holding such a rule). The analysis is
//! conservative: a condition it does not understand (`-m mark`, `ct state`) is assumed to hold.
//! A rule is never called harmless unless no host-routed pod packet can meet it or skipping it
//! is a no-op (ACCEPT, RETURN, counting). Packets an earlier rule of the same chain certainly
//! accepts, drops or returns (an ACCEPT of all `lxc+` traffic, say) do not reach later rules.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{
    Action, AddrMatch, Backend, Chain, Direction, Family, Hook, IfaceMatch, IfacePattern, Matches, Policy, Rule, RuleKind, Ruleset, Source,
};

/// What classification needs to know about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The node's pod CIDRs (IPv4 and IPv6); a family without one has no host-routed traffic.
    pub pod_cidrs: Vec<IpNet>,
    /// Prefix of the host side of pod veths: `lxc`.
    pub pod_iface_prefix: String,
    /// Devices with `from_netdev` attached (the uplinks); without any, no traffic *to* pods
    /// is host-routed.
    pub devices: Vec<String>,
    /// Networks on the node's other interfaces (docker0's 172.17.0.0/16, virbr0's
    /// 192.168.122.0/24). Traffic to them leaves through those interfaces and traffic from them
    /// arrives there, never on a pod interface or a device, so a match confined to them cannot
    /// see host-routed pod traffic. Leave empty when unknown: the analysis is then stricter.
    pub local_networks: Vec<IpNet>,
}

/// How a rule fares under eBPF host routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Installed by Sluice itself (a `SLUICE…` chain or target, a `sluice…` comment or table).
    Owned,
    /// Host-routed pod traffic never meets it, or skipping it changes nothing.
    Harmless,
    /// kube-proxy's (or kubelet's) `KUBE-…` chains and `kube-proxy` table: inert for pod
    /// traffic under host routing, which is expected, since Sluice replaces kube-proxy.
    KubeProxy,
    /// Applies to pod traffic today and would silently stop applying.
    Bypassed,
}

/// The classification of one rule (or base chain policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub rule: Rule,
    pub class: Class,
    /// Why, in one sentence naming the hook, the match and the effect.
    pub reason: String,
}

/// Number of verdicts in each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub owned: usize,
    pub harmless: usize,
    pub kube_proxy: usize,
    pub bypassed: usize,
}

/// All verdicts for a node, and what an operator needs from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub verdicts: Vec<Verdict>,
}

/// Classifies every rule and every base chain policy of `ruleset`, in chain order (each
/// chain's rules, then its policy).
pub fn classify(ruleset: &Ruleset, ctx: &Context) -> Vec<Verdict> {
    Walker::new(ruleset, ctx).run()
}

// === impl Context ===

impl Context {
    /// A context with the `lxc` pod interface prefix and no known local networks.
    pub fn new(pod_cidrs: Vec<IpNet>, devices: Vec<String>) -> Context {
        Context { pod_cidrs, pod_iface_prefix: "lxc".to_string(), devices, local_networks: Vec::new() }
    }

    /// Adds the networks of the node's other interfaces (see [`Context::local_networks`]).
    pub fn with_local_networks(mut self, local_networks: Vec<IpNet>) -> Context {
        self.local_networks = local_networks;
        self
    }

    fn pods(&self, v6: bool) -> Vec<IpNet> {
        of_family(&self.pod_cidrs, v6)
    }

    fn locals(&self, v6: bool) -> Vec<IpNet> {
        of_family(&self.local_networks, v6)
    }
}

fn of_family(nets: &[IpNet], v6: bool) -> Vec<IpNet> {
    nets.iter().filter(|net| is_v6(net) == v6).copied().collect()
}

fn is_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

// === impl Class ===

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Owned => "owned",
            Class::Harmless => "harmless",
            Class::KubeProxy => "kube-proxy",
            Class::Bypassed => "bypassed",
        })
    }
}

// === impl Report ===

impl Report {
    /// Classifies `ruleset` for the node `ctx` describes.
    pub fn new(ruleset: &Ruleset, ctx: &Context) -> Report {
        Report { verdicts: classify(ruleset, ctx) }
    }

    /// The rules that would silently stop applying to pod traffic.
    pub fn bypassed(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.class == Class::Bypassed)
    }

    /// True when no rule would be bypassed: host routing can be turned on safely.
    pub fn clean(&self) -> bool {
        self.bypassed().next().is_none()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for verdict in &self.verdicts {
            match verdict.class {
                Class::Owned => counts.owned += 1,
                Class::Harmless => counts.harmless += 1,
                Class::KubeProxy => counts.kube_proxy += 1,
                Class::Bypassed => counts.bypassed += 1,
            }
        }
        counts
    }

    /// A text table, one row per verdict (harmless ones only when asked), the reason under
    /// each bypassed row, and a summary line.
    pub fn render_table(&self, include_harmless: bool) -> String {
        const MAX_RULE: usize = 96;
        let rows: Vec<[String; 6]> = self
            .verdicts
            .iter()
            .filter(|v| include_harmless || v.class != Class::Harmless)
            .map(|v| {
                let rule = &v.rule;
                let position = match rule.kind {
                    RuleKind::Policy => "policy".to_string(),
                    RuleKind::Rule => rule.position.to_string(),
                };
                let mut text = rule.text.clone();
                if text.chars().count() > MAX_RULE {
                    text = text.chars().take(MAX_RULE - 1).collect::<String>() + "…";
                }
                [
                    v.class.to_string(),
                    backend_label(rule.backend).to_string(),
                    format!("{} {}", rule.family.nft_name(), rule.table),
                    rule.chain.clone(),
                    position,
                    text,
                ]
            })
            .collect();
        let header = ["CLASS", "BACKEND", "TABLE", "CHAIN", "#", "RULE"].map(str::to_string);
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |out: &mut String, cells: &[String; 6]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        let mut out = String::new();
        line(&mut out, &header);
        let shown = self.verdicts.iter().filter(|v| include_harmless || v.class != Class::Harmless);
        for (row, verdict) in rows.iter().zip(shown) {
            line(&mut out, row);
            if verdict.class == Class::Bypassed {
                out.push_str(&format!("  why: {}\n", verdict.reason));
            }
        }
        let counts = self.counts();
        let _ = writeln!(
            out,
            "{} rules: {} bypassed, {} kube-proxy, {} owned, {} harmless; {}",
            self.verdicts.len(),
            counts.bypassed,
            counts.kube_proxy,
            counts.owned,
            counts.harmless,
            if self.clean() {
                "clean: eBPF host routing skips no rule pod traffic relies on"
            } else {
                "NOT clean: the bypassed rules would no longer apply to pod traffic"
            }
        );
        out
    }
}

fn backend_label(backend: Backend) -> &'static str {
    match backend {
        Backend::IptablesLegacy => "legacy",
        Backend::IptablesNft => "ipt-nft",
        Backend::Nftables => "nft",
    }
}

impl From<Vec<Verdict>> for Report {
    fn from(verdicts: Vec<Verdict>) -> Report {
        Report { verdicts }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_table(false))
    }
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            clean: bool,
            counts: Counts,
            verdicts: &'a [Verdict],
        }
        Json { clean: self.clean(), counts: self.counts(), verdicts: &self.verdicts }.serialize(serializer)
    }
}

// === flows ===

/// One of the four kinds of host-routed pod traffic; a set of them is a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    to_pod: bool,
    v6: bool,
}

type FlowSet = u8;

const FLOWS: [Flow; 4] = [
    Flow { to_pod: false, v6: false },
    Flow { to_pod: true, v6: false },
    Flow { to_pod: false, v6: true },
    Flow { to_pod: true, v6: true },
];

impl Flow {
    fn bit(self) -> FlowSet {
        1 << (u8::from(self.v6) * 2 + u8::from(self.to_pod))
    }

    fn index(self) -> usize {
        usize::from(self.v6) * 2 + usize::from(self.to_pod)
    }

    fn in_family(self, family: Family) -> bool {
        match family {
            Family::Ipv4 => !self.v6,
            Family::Ipv6 => self.v6,
            Family::Inet => true,
        }
    }

    fn label(self, family: Family) -> String {
        let direction = if self.to_pod { "to pods" } else { "from pods" };
        match family {
            Family::Inet => format!("{} {direction}", if self.v6 { "IPv6" } else { "IPv4" }),
            _ => direction.to_string(),
        }
    }

    fn in_set(self) -> IfaceSet {
        if self.to_pod {
            IfaceSet::Devices
        } else {
            IfaceSet::Pods
        }
    }

    fn out_set(self) -> IfaceSet {
        if self.to_pod {
            IfaceSet::Pods
        } else {
            IfaceSet::PodsOrDevices
        }
    }

    fn source_set(self) -> AddrSet {
        if self.to_pod {
            AddrSet::Remote
        } else {
            AddrSet::Pods
        }
    }

    fn destination_set(self) -> AddrSet {
        if self.to_pod {
            AddrSet::Pods
        } else {
            AddrSet::Remote
        }
    }
}

/// Interfaces a flow can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfaceSet {
    Pods,
    Devices,
    PodsOrDevices,
}

/// Addresses a flow can carry: the pod CIDRs, or anything outside the node's local networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrSet {
    Pods,
    Remote,
}

/// An interface name a flow can use: the pod prefix or a device.
enum Iface<'a> {
    Prefix(&'a str),
    Device(&'a str),
}

/// Why a flow cannot reach a point; `absent` reasons (no IPv6 pod CIDR, ...) are only shown
/// when nothing better explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Why {
    text: String,
    absent: bool,
}

type Whys = [Option<Why>; 4];

/// What made a flow's packet match a rule: pod-specific evidence first, general second.
#[derive(Default)]
struct Evidence {
    strong: Vec<String>,
    weak: Vec<String>,
}

/// How packets arrive at a chain: through which base chain, which flows, why the others not.
struct Entry {
    base: usize,
    hook: Hook,
    live: FlowSet,
    why: Whys,
}

/// The classification of one rule along one path; the most telling path wins.
#[derive(Debug, Clone)]
struct Outcome {
    /// 1: on a hook host routing keeps; 2: pod traffic cannot reach it; 3: pod traffic
    /// reaches it but skipping it changes nothing; 4: bypassed.
    rank: u8,
    class: Class,
    reason: String,
    hook: Hook,
}

// === the walk ===

type ChainKey<'a> = (Source, Backend, Family, &'a str, &'a str);

struct Walker<'a> {
    rs: &'a Ruleset,
    ctx: &'a Context,
    index: HashMap<ChainKey<'a>, usize>,
    chain_rules: Vec<Vec<usize>>,
    orphans: Vec<usize>,
    outcomes: Vec<Option<Outcome>>,
    policies: Vec<Option<Outcome>>,
    memo: HashMap<(usize, usize, FlowSet), Option<usize>>,
    active: HashSet<usize>,
}

impl<'a> Walker<'a> {
    fn new(rs: &'a Ruleset, ctx: &'a Context) -> Walker<'a> {
        let mut index = HashMap::new();
        for (i, chain) in rs.chains.iter().enumerate() {
            index.entry((chain.source, chain.backend, chain.family, chain.table.as_str(), chain.name.as_str())).or_insert(i);
        }
        let mut chain_rules = vec![Vec::new(); rs.chains.len()];
        let mut orphans = Vec::new();
        for (r, rule) in rs.rules.iter().enumerate() {
            match index.get(&(rule.source, rule.backend, rule.family, rule.table.as_str(), rule.chain.as_str())) {
                Some(&c) => chain_rules[c].push(r),
                None => orphans.push(r),
            }
        }
        for rules in &mut chain_rules {
            rules.sort_by_key(|&r| rs.rules[r].position);
        }
        Walker {
            rs,
            ctx,
            index,
            chain_rules,
            orphans,
            outcomes: vec![None; rs.rules.len()],
            policies: vec![None; rs.chains.len()],
            memo: HashMap::new(),
            active: HashSet::new(),
        }
    }

    fn run(mut self) -> Vec<Verdict> {
        for (c, chain) in self.rs.chains.iter().enumerate() {
            if let Some(hook) = chain.hook {
                let entry = self.entry(c, chain, hook);
                self.walk(c, &entry);
            }
        }
        let mut verdicts = Vec::with_capacity(self.rs.rules.len());
        for (c, chain) in self.rs.chains.iter().enumerate() {
            for &r in &self.chain_rules[c] {
                verdicts.push(self.verdict(r));
            }
            if let (Some(hook), Some(policy)) = (chain.hook, chain.policy) {
                verdicts.push(self.policy_verdict(c, chain, hook, policy));
            }
        }
        for &r in &self.orphans {
            let rule = &self.rs.rules[r];
            verdicts.push(Verdict {
                rule: rule.clone(),
                class: Class::Harmless,
                reason: format!("its chain {} is not in the ruleset, so the rule never runs", rule.chain),
            });
        }
        verdicts
    }

    /// The flows that enter base chain `c`, and why the others do not.
    fn entry(&self, c: usize, chain: &Chain, hook: Hook) -> Entry {
        let mut why: Whys = Default::default();
        let mut live = 0;
        for flow in FLOWS {
            if !flow.in_family(chain.family) {
                continue;
            }
            let slot = &mut why[flow.index()];
            if !hook.skipped_by_host_routing() {
                let text = match hook {
                    Hook::Output => "OUTPUT is not skipped by eBPF host routing: the node's own traffic still passes it",
                    _ => "INPUT is not skipped by eBPF host routing: traffic to the node itself (from pods too) still passes it",
                };
                *slot = Some(Why { text: text.to_string(), absent: false });
                continue;
            }
            let family = if flow.v6 { "IPv6" } else { "IPv4" };
            if self.ctx.pods(flow.v6).is_empty() {
                let text = format!("no {family} pod CIDR is configured, so no {family} pod traffic is host-routed");
                *slot = Some(Why { text, absent: true });
                continue;
            }
            if flow.to_pod && self.ctx.devices.is_empty() {
                let text = "no device is configured, so traffic arriving for pods is not host-routed".to_string();
                *slot = Some(Why { text, absent: true });
                continue;
            }
            if hook == Hook::Ingress && !chain.devices.is_empty() {
                let patterns = chain.devices.iter().map(|d| IfacePattern::parse(d)).collect();
                let bound = IfaceMatch { patterns, negated: false };
                if let Err(reason) = self.iface_may(&bound, flow.in_set(), "input") {
                    let text = format!("{}: the chain is bound to {}: {reason}", flow.label(chain.family), join(&chain.devices));
                    *slot = Some(Why { text, absent: false });
                    continue;
                }
            }
            live |= flow.bit();
        }
        Entry { base: c, hook, live, why }
    }

    fn chain_of_target(&self, rule: &Rule, target: &str) -> Option<usize> {
        self.index.get(&(rule.source, rule.backend, rule.family, rule.table.as_str(), target)).copied()
    }

    /// Walks chain `c` with the flows of `entry`; returns the first rule inside (or below) it
    /// that pod traffic would skip, if any.
    fn walk(&mut self, c: usize, entry: &Entry) -> Option<usize> {
        let key = (c, entry.base, entry.live);
        if let Some(&result) = self.memo.get(&key) {
            return result;
        }
        if !self.active.insert(c) {
            return None; // A loop of jumps: the kernel refuses them; nothing new down here.
        }
        let mut live = entry.live;
        let mut why = entry.why.clone();
        let mut returned: FlowSet = 0;
        let mut first_harm = None;
        let place = self.place(c, entry);
        let rs = self.rs;
        let rules = self.chain_rules[c].clone();
        for r in rules {
            let rule = &rs.rules[r];
            let mut matched: FlowSet = 0;
            let mut evidence = Evidence::default();
            let mut rule_why = why.clone();
            let mut own = false;
            for flow in FLOWS.into_iter().filter(|f| live & f.bit() != 0) {
                match self.eval(&rule.matches, flow) {
                    Ok(found) => {
                        matched |= flow.bit();
                        evidence.strong.extend(found.strong);
                        evidence.weak.extend(found.weak);
                    }
                    Err(reason) => {
                        own = true;
                        let text = format!("{}: {reason}", flow.label(rule.family));
                        rule_why[flow.index()] = Some(Why { text, absent: false });
                    }
                }
            }

            let mut inner_harm: Option<(String, usize)> = None;
            let targets: Vec<String> = rule.jump_targets().map(str::to_string).collect();
            for target in &targets {
                let Some(tc) = self.chain_of_target(rule, target) else {
                    continue;
                };
                let mut target_why = rule_why.clone();
                for flow in FLOWS.into_iter().filter(|f| live & f.bit() != 0 && matched & f.bit() == 0) {
                    let text = format!("reached only through `{}`, which cannot match pod traffic", rule.text);
                    target_why[flow.index()] = Some(Why { text, absent: false });
                }
                let sub = Entry { base: entry.base, hook: entry.hook, live: matched, why: target_why };
                if let Some(harm) = self.walk(tc, &sub) {
                    inner_harm.get_or_insert((target.clone(), harm));
                }
            }

            let outcome = if matched == 0 {
                let rank = if entry.hook.skipped_by_host_routing() { 2 } else { 1 };
                let reason = dead_reason(&place, &rule_why, rule.family, own);
                Outcome { rank, class: Class::Harmless, reason, hook: entry.hook }
            } else {
                let evidence = describe_evidence(&evidence, &rule.matches);
                let hook = entry.hook;
                if let Some(action) = rule.actions.iter().find_map(harmful) {
                    let reason = format!(
                        "{place} {evidence}: under eBPF host routing pod traffic skips {hook}, so this {action} would no longer apply"
                    );
                    Outcome { rank: 4, class: Class::Bypassed, reason, hook }
                } else if let Some((target, harm)) = &inner_harm {
                    let inner = &rs.rules[*harm];
                    let reason = format!(
                        "{place} {evidence} and jumps to {target}, which holds `{}`: under eBPF host routing pod traffic skips {hook}, so that rule would no longer apply",
                        inner.text
                    );
                    Outcome { rank: 4, class: Class::Bypassed, reason, hook }
                } else {
                    let reason = format!("{place} {evidence}, but {}", harmless_because(rule, &targets));
                    Outcome { rank: 3, class: Class::Harmless, reason, hook }
                }
            };
            if outcome.class == Class::Bypassed && ownership(rule).is_none() {
                first_harm.get_or_insert(r);
            }
            self.record(r, outcome);

            // Packets this rule certainly ends the chain for never reach the next rules.
            if rule.actions.iter().any(Action::is_terminal) {
                for flow in FLOWS.into_iter().filter(|f| matched & f.bit() != 0) {
                    if self.must_match(&rule.matches, flow) {
                        live &= !flow.bit();
                        if rule.actions.contains(&Action::Return) {
                            returned |= flow.bit();
                        }
                        let text = format!("pod traffic never gets here: rule {} (`{}`) decides it first", rule.position, rule.text);
                        why[flow.index()] = Some(Why { text, absent: false });
                    }
                }
            }
        }

        if c == entry.base {
            self.policy_outcome(c, entry, live | returned, &why);
        }
        self.active.remove(&c);
        self.memo.insert(key, first_harm);
        first_harm
    }

    fn record(&mut self, r: usize, outcome: Outcome) {
        keep_best(&mut self.outcomes[r], outcome);
    }

    fn policy_outcome(&mut self, c: usize, entry: &Entry, live: FlowSet, why: &Whys) {
        let chain = &self.rs.chains[c];
        let Some(policy) = chain.policy else { return };
        let label = policy_label(chain, entry.hook, policy);
        let hook = entry.hook;
        let outcome = if !hook.skipped_by_host_routing() {
            Outcome { rank: 1, class: Class::Harmless, reason: dead_reason(&label, why, chain.family, false), hook }
        } else if policy == Policy::Accept {
            let reason = format!("{label}: skipping an accepting policy changes nothing");
            Outcome { rank: 3, class: Class::Harmless, reason, hook }
        } else if live != 0 {
            let reason = format!(
                "{label} drops pod traffic that no rule accepts: under eBPF host routing pod traffic skips {hook}, so it would pass instead"
            );
            Outcome { rank: 4, class: Class::Bypassed, reason, hook }
        } else {
            Outcome { rank: 2, class: Class::Harmless, reason: dead_reason(&label, why, chain.family, false), hook }
        };
        keep_best(&mut self.policies[c], outcome);
    }

    /// "FORWARD rule", "rule in chain fwd (FORWARD hook)", "rule in chain X (reached from FORWARD)".
    fn place(&self, c: usize, entry: &Entry) -> String {
        let base = &self.rs.chains[entry.base];
        let hook = entry.hook;
        let named_after_hook = base.name == hook.name();
        if c == entry.base {
            if named_after_hook {
                format!("{hook} rule")
            } else {
                format!("rule in chain {} ({hook} hook)", base.name)
            }
        } else {
            let chain = &self.rs.chains[c];
            if named_after_hook {
                format!("rule in chain {} (reached from {hook})", chain.name)
            } else {
                format!("rule in chain {} (reached from chain {} on the {hook} hook)", chain.name, base.name)
            }
        }
    }

    fn verdict(&self, r: usize) -> Verdict {
        let rule = &self.rs.rules[r];
        let outcome = self.outcomes[r].clone().unwrap_or_else(|| Outcome {
            rank: 0,
            class: Class::Harmless,
            reason: format!("chain {} is not reached from any base chain, so the rule never runs", rule.chain),
            hook: Hook::Input,
        });
        let (class, reason) = match ownership(rule) {
            Some((Class::Owned, basis)) => (Class::Owned, format!("owned by Sluice ({basis})")),
            Some((class, basis)) => (class, kube_reason(&basis, &outcome)),
            None => (outcome.class, outcome.reason),
        };
        Verdict { rule: rule.clone(), class, reason }
    }

    fn policy_verdict(&self, c: usize, chain: &Chain, hook: Hook, policy: Policy) -> Verdict {
        let outcome = self.policies[c].clone().unwrap_or_else(|| Outcome {
            rank: 0,
            class: Class::Harmless,
            reason: format!("{}: not evaluated", policy_label(chain, hook, policy)),
            hook,
        });
        let text = match chain.source {
            Source::IptablesSave => format!(":{} {policy}", chain.name),
            Source::NftJson => format!("policy {};", policy.to_string().to_ascii_lowercase()),
        };
        let rule = Rule {
            family: chain.family,
            backend: chain.backend,
            source: chain.source,
            table: chain.table.clone(),
            chain: chain.name.clone(),
            position: 0,
            handle: None,
            kind: RuleKind::Policy,
            text,
            matches: Matches::default(),
            actions: vec![match policy {
                Policy::Accept => Action::Accept,
                Policy::Drop => Action::Drop,
            }],
        };
        let (class, reason) = match chain_ownership(&chain.table, &chain.name) {
            Some((Class::Owned, basis)) => (Class::Owned, format!("owned by Sluice ({basis})")),
            Some((class, basis)) => (class, kube_reason(&basis, &outcome)),
            None => (outcome.class, outcome.reason),
        };
        Verdict { rule, class, reason }
    }

    // === matching ===

    /// Whether a packet of `flow` can satisfy `m`: Ok with what made it match, or why not.
    fn eval(&self, m: &Matches, flow: Flow) -> Result<Evidence, String> {
        let mut evidence = Evidence::default();
        for iface in &m.in_iface {
            evidence.strong.extend(self.iface_may(iface, flow.in_set(), "input")?);
        }
        for iface in &m.out_iface {
            evidence.strong.extend(self.iface_may(iface, flow.out_set(), "output")?);
        }
        for (addrs, set, direction) in [(&m.source, flow.source_set(), "source"), (&m.destination, flow.destination_set(), "destination")] {
            for addr in addrs {
                let (strong, weak) = self.addr_may(addr, set, flow, direction)?;
                evidence.strong.extend(strong);
                evidence.weak.extend(weak);
            }
        }
        for addr_type in &m.addr_type {
            let only_local = !addr_type.negated && !addr_type.types.is_empty() && addr_type.types.iter().all(|t| t == "LOCAL");
            if only_local {
                return Err(match addr_type.direction {
                    Direction::Destination => {
                        "it matches only packets addressed to the node itself (address type LOCAL), which host routing hands to the stack"
                            .to_string()
                    }
                    Direction::Source => "it matches only packets from the node's own addresses (address type LOCAL)".to_string(),
                });
            }
        }
        Ok(evidence)
    }

    fn ifaces(&self, set: IfaceSet) -> Vec<Iface<'_>> {
        let pods = Iface::Prefix(self.ctx.pod_iface_prefix.as_str());
        let devices = self.ctx.devices.iter().map(|d| Iface::Device(d.as_str()));
        match set {
            IfaceSet::Pods => vec![pods],
            IfaceSet::Devices => devices.collect(),
            IfaceSet::PodsOrDevices => std::iter::once(pods).chain(devices).collect(),
        }
    }

    /// "not a pod interface (lxc+)", "neither a pod interface (lxc+) nor a configured device (eth0)".
    fn not_in(&self, set: IfaceSet) -> String {
        let pods = format!("a pod interface ({}+)", self.ctx.pod_iface_prefix);
        let devices = format!("a configured device ({})", join(&self.ctx.devices));
        match set {
            IfaceSet::Pods => format!("not {pods}"),
            IfaceSet::Devices => format!("not {devices}"),
            IfaceSet::PodsOrDevices if self.ctx.devices.is_empty() => format!("not {pods}"),
            IfaceSet::PodsOrDevices => format!("neither {pods} nor {devices}"),
        }
    }

    fn iface_may(&self, m: &IfaceMatch, set: IfaceSet, direction: &str) -> Result<Option<String>, String> {
        let ifaces = self.ifaces(set);
        if m.negated {
            if ifaces.iter().all(|iface| covers(&m.patterns, iface)) {
                let every = match set {
                    IfaceSet::Pods => "pod interface",
                    IfaceSet::Devices => "configured device",
                    IfaceSet::PodsOrDevices => "pod interface and configured device",
                };
                return Err(format!("{direction} interface {m} excludes every {every}"));
            }
            return Ok(None);
        }
        for iface in &ifaces {
            if m.patterns.iter().any(|p| compatible(p, iface)) {
                let what = match iface {
                    Iface::Prefix(_) => "pod interfaces",
                    Iface::Device(_) => "a configured device",
                };
                return Ok(Some(format!("matches {direction} interface {m} ({what})")));
            }
        }
        Err(format!("{direction} interface {m} is {}", self.not_in(set)))
    }

    fn iface_must(&self, m: &IfaceMatch, set: IfaceSet) -> bool {
        let ifaces = self.ifaces(set);
        if m.negated {
            ifaces.iter().all(|iface| !m.patterns.iter().any(|p| compatible(p, iface)))
        } else {
            ifaces.iter().all(|iface| covers(&m.patterns, iface))
        }
    }

    fn addr_may(&self, m: &AddrMatch, set: AddrSet, flow: Flow, direction: &str) -> Result<(Option<String>, Option<String>), String> {
        let nets = of_family(&m.nets, flow.v6);
        if nets.is_empty() {
            let family = if flow.v6 { "IPv4" } else { "IPv6" };
            return Err(format!("{direction} {m} matches {family} packets only"));
        }
        match set {
            AddrSet::Pods => {
                let pods = self.ctx.pods(flow.v6);
                if m.negated {
                    return match pods.iter().find(|pod| !nets.iter().any(|n| n.contains(*pod))) {
                        Some(pod) => Ok((Some(format!("matches {direction} {m}, which does not exclude pod CIDR {pod}")), None)),
                        None => Err(format!("{direction} {m} excludes every pod CIDR ({})", join(&pods))),
                    };
                }
                for net in &nets {
                    for pod in &pods {
                        let relation = if net == pod {
                            "which is the pod CIDR".to_string()
                        } else if net.contains(pod) {
                            format!("which contains pod CIDR {pod}")
                        } else if pod.contains(net) {
                            format!("inside pod CIDR {pod}")
                        } else {
                            continue;
                        };
                        return Ok((Some(format!("matches {direction} {net}, {relation}")), None));
                    }
                }
                Err(format!("{direction} {m} holds no pod address (pod CIDRs: {})", join(&pods)))
            }
            AddrSet::Remote => {
                let locals = self.ctx.locals(flow.v6);
                if m.negated {
                    if nets.iter().any(|n| n.prefix_len() == 0) {
                        return Err(format!("{direction} {m} excludes every address"));
                    }
                    return Ok((None, None));
                }
                let containing: Vec<IpNet> = nets.iter().filter_map(|n| locals.iter().find(|l| l.contains(n)).copied()).collect();
                if containing.len() == nets.len() {
                    let mut distinct = containing;
                    distinct.dedup();
                    return Err(format!(
                        "{direction} {m} lies in {}, a network of another interface of the node, which host routing does not serve",
                        join(&distinct)
                    ));
                }
                let phrase = if direction == "source" { "which can send to pods" } else { "which pods can send to" };
                Ok((None, Some(format!("matches {direction} {m}, {phrase}"))))
            }
        }
    }

    fn addr_must(&self, m: &AddrMatch, set: AddrSet, flow: Flow) -> bool {
        let nets = of_family(&m.nets, flow.v6);
        if nets.is_empty() {
            return false;
        }
        match set {
            AddrSet::Pods => {
                let pods = self.ctx.pods(flow.v6);
                if m.negated {
                    pods.iter().all(|pod| !nets.iter().any(|n| n.contains(pod) || pod.contains(n)))
                } else {
                    pods.iter().all(|pod| nets.iter().any(|n| n.contains(pod)))
                }
            }
            AddrSet::Remote => {
                if m.negated {
                    let locals = self.ctx.locals(flow.v6);
                    nets.iter().all(|n| locals.iter().any(|l| l.contains(n)))
                } else {
                    nets.iter().any(|n| n.prefix_len() == 0)
                }
            }
        }
    }

    /// Whether every packet of `flow` satisfies `m` (false when unsure).
    fn must_match(&self, m: &Matches, flow: Flow) -> bool {
        m.protocol.is_none()
            && m.other.is_empty()
            && m.addr_type.is_empty()
            && m.in_iface.iter().all(|i| self.iface_must(i, flow.in_set()))
            && m.out_iface.iter().all(|i| self.iface_must(i, flow.out_set()))
            && m.source.iter().all(|a| self.addr_must(a, flow.source_set(), flow))
            && m.destination.iter().all(|a| self.addr_must(a, flow.destination_set(), flow))
    }
}

/// Keeps the outcome of the most telling path (highest rank; the first among equals).
fn keep_best(slot: &mut Option<Outcome>, outcome: Outcome) {
    match slot {
        Some(old) if outcome.rank <= old.rank => {}
        _ => *slot = Some(outcome),
    }
}

/// Whether some name of `iface` matches `pattern`.
fn compatible(pattern: &IfacePattern, iface: &Iface<'_>) -> bool {
    match iface {
        Iface::Prefix(prefix) => pattern.name.starts_with(prefix) || (pattern.wildcard && prefix.starts_with(&pattern.name)),
        Iface::Device(device) => pattern.matches(device),
    }
}

/// Whether every name of `iface` matches one of `patterns`.
fn covers(patterns: &[IfacePattern], iface: &Iface<'_>) -> bool {
    patterns.iter().any(|p| match iface {
        Iface::Prefix(prefix) => p.wildcard && prefix.starts_with(&p.name),
        Iface::Device(device) => p.matches(device),
    })
}

/// The effect that makes skipping an action matter, if any (jumps are judged by their chain).
fn harmful(action: &Action) -> Option<String> {
    match action {
        Action::Jump(_) | Action::Goto(_) => None,
        Action::VerdictMap { verdicts, .. } => verdicts
            .iter()
            .find(|v| !matches!(v.as_str(), "accept" | "return" | "continue"))
            .map(|v| format!("verdict map (which can {v})")),
        action if action.is_side_effect_free() => None,
        action => Some(action.to_string()),
    }
}

fn harmless_because(rule: &Rule, targets: &[String]) -> String {
    if !targets.is_empty() {
        return format!("{} holds no rule pod traffic would skip", join(targets));
    }
    if rule.actions.contains(&Action::Accept) {
        "its verdict ACCEPT has no side effect: skipping it lets through only what it would accept".to_string()
    } else if rule.actions.contains(&Action::Return) {
        "RETURN has no side effect: skipping it changes nothing".to_string()
    } else {
        "it has no target (it only counts packets): skipping it changes nothing".to_string()
    }
}

fn describe_evidence(evidence: &Evidence, matches: &Matches) -> String {
    let mut seen = Vec::new();
    let chosen = if evidence.strong.is_empty() { &evidence.weak } else { &evidence.strong };
    for item in chosen {
        if !seen.contains(item) {
            seen.push(item.clone());
        }
    }
    if !seen.is_empty() {
        return seen.join(" and ");
    }
    if matches.is_unconditional() {
        "matches all traffic (pod traffic included)".to_string()
    } else if !matches.other.is_empty() {
        format!("has no address or interface match that excludes pod traffic (only {})", matches.other.join(", "))
    } else {
        "has no address or interface match that excludes pod traffic".to_string()
    }
}

/// "FORWARD rule cannot match pod traffic: from pods: ...; to pods: ...".
fn dead_reason(place: &str, why: &Whys, family: Family, own: bool) -> String {
    let relevant: Vec<&Why> = FLOWS.iter().filter(|f| f.in_family(family)).filter_map(|f| why[f.index()].as_ref()).collect();
    let present: Vec<&Why> = relevant.iter().copied().filter(|w| !w.absent).collect();
    let chosen = if present.is_empty() { relevant } else { present };
    let mut texts: Vec<&str> = Vec::new();
    for why in chosen {
        if !texts.contains(&why.text.as_str()) {
            texts.push(&why.text);
        }
    }
    let joined = texts.join("; ");
    if own {
        format!("{place} cannot match host-routed pod traffic: {joined}")
    } else {
        format!("{place}: {joined}")
    }
}

fn policy_label(chain: &Chain, hook: Hook, policy: Policy) -> String {
    if chain.name == hook.name() {
        format!("{hook} policy {policy}")
    } else {
        format!("policy {policy} of chain {} ({hook} hook)", chain.name)
    }
}

fn kube_reason(basis: &str, outcome: &Outcome) -> String {
    if outcome.rank >= 3 && outcome.hook.skipped_by_host_routing() {
        format!(
            "kube-proxy rule ({basis}) that pod traffic meets on {hook}: eBPF host routing skips {hook} for pod traffic, so it becomes inert for pods (expected: Sluice replaces kube-proxy)",
            hook = outcome.hook
        )
    } else {
        format!("kube-proxy rule ({basis}); {}", outcome.reason)
    }
}

/// Rules Sluice or kube-proxy own, by their table, chain, comment or jump target.
fn ownership(rule: &Rule) -> Option<(Class, String)> {
    if let Some(owned) = chain_ownership(&rule.table, &rule.chain) {
        if owned.0 == Class::Owned {
            return Some(owned);
        }
    }
    if let Some(comment) = &rule.matches.comment {
        if comment.to_ascii_lowercase().starts_with("sluice") {
            return Some((Class::Owned, format!("comment \"{comment}\"")));
        }
    }
    for target in rule.jump_targets() {
        if target.to_ascii_uppercase().starts_with("SLUICE") {
            return Some((Class::Owned, format!("jumps to Sluice chain {target}")));
        }
    }
    if let Some(kube) = chain_ownership(&rule.table, &rule.chain) {
        return Some(kube);
    }
    rule.jump_targets().find(|target| target.starts_with("KUBE-")).map(|target| (Class::KubeProxy, format!("jumps to {target}")))
}

fn chain_ownership(table: &str, chain: &str) -> Option<(Class, String)> {
    if table.to_ascii_lowercase().starts_with("sluice") {
        Some((Class::Owned, format!("table {table}")))
    } else if chain.to_ascii_uppercase().starts_with("SLUICE") {
        Some((Class::Owned, format!("chain {chain}")))
    } else if table == "kube-proxy" {
        Some((Class::KubeProxy, "table kube-proxy".to_string()))
    } else if chain.starts_with("KUBE-") {
        Some((Class::KubeProxy, format!("chain {chain}")))
    } else {
        None
    }
}
