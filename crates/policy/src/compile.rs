//! The compiler: policies and a view of the cluster in, per-endpoint tables and the ipcache
//! out. Selectors are matched once per distinct label set and peers resolved once per
//! policy; local endpoints with the same labels share their tables (ingress ones only when
//! no selecting policy names a port, since named ports differ per pod). Kubernetes ipBlocks
//! become entries of the CIDR identities (for addresses outside the cluster, which the ipcache
//! resolves to them) and entries by address (for every address, pods' and nodes' included).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use ipnet::IpNet;
use sluice_model::LabelSet;

use crate::entries::{self, Atom, Class};
use crate::ir::{Action, Entity, HttpRule, Peer, Policy, PortMatch, Rule, Selector};
use crate::l7::{L7Grant, ProxiedPort};
use crate::output::{
    ClusterView, Compiled, DirectionTable, EndpointPolicy, EntryKey, Mode, RuleRef, IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE,
    IDENTITY_WORLD, PROTO_TCP,
};
use crate::ports::{port_keys, protocol_numbers};

/// An endpoint's named ports: name -> (protocol number, port).
type NamedPorts = BTreeMap<String, (u8, u16)>;

/// Every CIDR the policies name, `except` prefixes included, normalized: the caller
/// allocates an identity to each and passes them in [`ClusterView::cidr_identities`].
pub fn required_cidrs(policies: &[Policy]) -> BTreeSet<IpNet> {
    named_prefixes(policies, |peer| matches!(peer, Peer::Cidr { .. } | Peer::IpBlock { .. }))
}

/// The prefixes of the ipBlocks (cidr and except), normalized: the keys of
/// [`Compiled::ipblocks`].
fn ipblock_prefixes(policies: &[Policy]) -> BTreeSet<IpNet> {
    named_prefixes(policies, |peer| matches!(peer, Peer::IpBlock { .. }))
}

fn named_prefixes(policies: &[Policy], wanted: impl Fn(&Peer) -> bool) -> BTreeSet<IpNet> {
    let mut out = BTreeSet::new();
    for policy in policies {
        for rules in [&policy.ingress, &policy.egress].into_iter().flatten() {
            for peer in rules.rules.iter().filter_map(|r| r.peers.as_ref()).flatten().filter(|p| wanted(p)) {
                if let Peer::Cidr { cidr, except } | Peer::IpBlock { cidr, except } = peer {
                    out.insert(cidr.trunc());
                    out.extend(except.iter().map(IpNet::trunc));
                }
            }
        }
    }
    out
}

/// Compiles `policies` for the local endpoints of `view`.
pub fn compile(policies: &[Policy], view: &ClusterView) -> Compiled {
    let blocks = ipblock_prefixes(policies);
    let ipblocks: BTreeMap<IpNet, u32> =
        view.cidr_identities.iter().map(|(cidr, id)| (cidr.trunc(), *id)).filter(|(cidr, _)| blocks.contains(cidr)).collect();
    let mut index = Index::new(view, &ipblocks);
    let mut refs = Vec::new();
    let mut http = Vec::new();
    let resolved: Vec<Resolved> = policies.iter().map(|p| Resolved::new(p, &mut index, &mut refs, &mut http)).collect();
    // Per label class, the policies selecting it.
    let mut selecting: Vec<Vec<usize>> = vec![Vec::new(); index.classes.len()];
    for (i, r) in resolved.iter().enumerate() {
        for class in r.subject.iter() {
            selecting[*class].push(i);
        }
    }
    let ctx = Ctx { policies, resolved: &resolved, refs: &refs, http: &http };
    // Local endpoints that share tables: same labels (egress), and the same named ports
    // too when a selecting policy names an ingress port.
    let mut ingress_groups: HashMap<(usize, Option<&NamedPorts>), Vec<usize>> = HashMap::new();
    let mut egress_groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (ep_index, ep) in view.endpoints.iter().enumerate().filter(|(_, e)| e.local) {
        let class = index.class_of[ep_index];
        let named = selecting[class].iter().any(|i| resolved[*i].ingress.as_ref().is_some_and(|d| !d.named.is_empty()));
        let key = (class, named.then_some(&ep.named_ports));
        ingress_groups.entry(key).or_default().push(ep_index);
        egress_groups.entry(class).or_default().push(ep_index);
    }
    let mut policies_of: Vec<EndpointPolicy> = vec![EndpointPolicy::default(); view.endpoints.len()];
    for ((class, _), members) in &ingress_groups {
        let named_ports = &view.endpoints[members[0]].named_ports;
        let table = ctx.table(&selecting[*class], true, named_ports);
        share(table, members, |i, t| policies_of[i].ingress = t);
    }
    for (class, members) in &egress_groups {
        let table = ctx.table(&selecting[*class], false, &NamedPorts::new());
        share(table, members, |i, t| policies_of[i].egress = t);
    }
    let endpoints =
        view.endpoints.iter().zip(policies_of).filter(|(ep, _)| ep.local).map(|(ep, policy)| (ep.key.clone(), policy)).collect();
    Compiled { endpoints, ipcache: ipcache(view), ipblocks }
}

/// Gives `table` to every member: clones for all but the last, which takes it.
fn share(table: DirectionTable, members: &[usize], mut give: impl FnMut(usize, DirectionTable)) {
    if let Some((last, rest)) = members.split_last() {
        for member in rest {
            give(*member, table.clone());
        }
        give(*last, table);
    }
}

/// Address prefix -> identity. Host prefixes of endpoints and nodes are written last so they
/// win over an equal CIDR prefix.
fn ipcache(view: &ClusterView) -> BTreeMap<IpNet, u32> {
    let mut out: BTreeMap<IpNet, u32> = view.cidr_identities.iter().map(|(cidr, id)| (cidr.trunc(), *id)).collect();
    for ip in &view.remote_node_ips {
        out.insert(IpNet::from(*ip), IDENTITY_REMOTE_NODE);
    }
    for ip in &view.local_node_ips {
        out.insert(IpNet::from(*ip), IDENTITY_HOST);
    }
    for ep in &view.endpoints {
        out.extend(ep.ips.iter().map(|ip| (IpNet::from(*ip), ep.identity)));
    }
    out
}

/// The view's endpoints grouped by label set ("classes"), and selector results by selector.
struct Index<'a> {
    view: &'a ClusterView,
    /// The identities of the ipBlock prefixes (a subset of the CIDR identities).
    ipblock_ids: HashSet<u32>,
    /// Distinct label sets, and the endpoints carrying each.
    classes: Vec<(&'a LabelSet, Vec<usize>)>,
    /// Endpoint index -> class.
    class_of: Vec<usize>,
    selections: HashMap<&'a Selector, Rc<Selection>>,
}

/// What a peer stands for.
#[derive(Default)]
struct PeerSet {
    /// Identities, for the entries looked up by the peer's identity.
    identities: BTreeSet<u32>,
    /// The endpoints among them (egress named ports resolve against their ports).
    endpoints: Vec<usize>,
    /// ipBlock identities, for the entries looked up by the peer's address.
    blocks: BTreeSet<u32>,
}

/// The identities of the prefixes of `prefixes` that lie in `cidr` and in none of `except`.
/// Prefixes nest or are disjoint, so an address is in the block exactly when the longest of
/// these prefixes holding it is.
fn within(prefixes: &BTreeMap<IpNet, u32>, cidr: &IpNet, except: &[IpNet]) -> BTreeSet<u32> {
    let (cidr, except): (IpNet, Vec<IpNet>) = (cidr.trunc(), except.iter().map(IpNet::trunc).collect());
    prefixes
        .iter()
        .filter(|(p, _)| {
            let p = p.trunc();
            cidr.contains(&p) && !except.iter().any(|e| e.contains(&p))
        })
        .map(|(_, id)| *id)
        .collect()
}

/// What a selector matches.
struct Selection {
    classes: Vec<usize>,
    identities: BTreeSet<u32>,
    endpoints: Vec<usize>,
}

impl<'a> Index<'a> {
    fn new(view: &'a ClusterView, ipblocks: &BTreeMap<IpNet, u32>) -> Self {
        let mut by_labels: HashMap<&LabelSet, usize> = HashMap::new();
        let mut classes: Vec<(&LabelSet, Vec<usize>)> = Vec::new();
        let mut class_of = Vec::with_capacity(view.endpoints.len());
        for (i, ep) in view.endpoints.iter().enumerate() {
            let class = *by_labels.entry(&ep.labels).or_insert_with(|| {
                classes.push((&ep.labels, Vec::new()));
                classes.len() - 1
            });
            classes[class].1.push(i);
            class_of.push(class);
        }
        Index { view, ipblock_ids: ipblocks.values().copied().collect(), classes, class_of, selections: HashMap::new() }
    }

    fn select(&mut self, selector: &'a Selector) -> Rc<Selection> {
        if let Some(s) = self.selections.get(selector) {
            return s.clone();
        }
        let mut selection = Selection { classes: Vec::new(), identities: BTreeSet::new(), endpoints: Vec::new() };
        for (class, (labels, members)) in self.classes.iter().enumerate() {
            if selector.matches(labels) {
                selection.classes.push(class);
                selection.endpoints.extend(members);
                selection.identities.extend(members.iter().map(|m| self.view.endpoints[*m].identity));
            }
        }
        let selection = Rc::new(selection);
        self.selections.insert(selector, selection.clone());
        selection
    }

    fn all_endpoints(&self) -> Vec<usize> {
        (0..self.view.endpoints.len()).collect()
    }

    /// What a peer stands for.
    fn peer(&mut self, peer: &'a Peer) -> PeerSet {
        let view = self.view;
        let identities = |ids: &[u32]| PeerSet { identities: ids.iter().copied().collect(), ..Default::default() };
        match peer {
            Peer::Endpoints(selector) => {
                let s = self.select(selector);
                PeerSet { identities: s.identities.clone(), endpoints: s.endpoints.clone(), blocks: BTreeSet::new() }
            }
            Peer::Cidr { cidr, except } => PeerSet { identities: within(&view.cidr_identities, cidr, except), ..Default::default() },
            // The CIDR identities answer for addresses outside the cluster; the entries by
            // address, keyed by those of them that are ipBlock prefixes, for every address,
            // pods' and nodes' included.
            Peer::IpBlock { cidr, except } => {
                let identities = within(&view.cidr_identities, cidr, except);
                let blocks = identities.iter().copied().filter(|id| self.ipblock_ids.contains(id)).collect();
                PeerSet { identities, endpoints: Vec::new(), blocks }
            }
            Peer::Entity(Entity::Host) => identities(&[IDENTITY_HOST]),
            Peer::Entity(Entity::RemoteNode) => identities(&[IDENTITY_REMOTE_NODE]),
            Peer::Entity(Entity::World) => {
                let mut ids: BTreeSet<u32> = view.cidr_identities.values().copied().collect();
                ids.insert(IDENTITY_WORLD);
                PeerSet { identities: ids, ..Default::default() }
            }
            Peer::Entity(Entity::Cluster) => {
                let mut ids: BTreeSet<u32> = view.endpoints.iter().map(|e| e.identity).collect();
                ids.extend([IDENTITY_HOST, IDENTITY_REMOTE_NODE]);
                PeerSet { identities: ids, endpoints: self.all_endpoints(), blocks: BTreeSet::new() }
            }
            Peer::Entity(Entity::All) => {
                PeerSet { identities: [IDENTITY_ANY].into(), endpoints: self.all_endpoints(), blocks: BTreeSet::new() }
            }
        }
    }
}

/// A policy with selectors and peers resolved against the view.
struct Resolved {
    subject: Vec<usize>,
    ingress: Option<ResolvedDirection>,
    egress: Option<ResolvedDirection>,
}

struct ResolvedDirection {
    default_deny: bool,
    /// Atoms that do not depend on the local endpoint.
    atoms: Vec<Atom>,
    /// Atoms of the entries by address (ipBlock allows) that do not depend on the local endpoint.
    by_address: Vec<Atom>,
    /// Ingress named ports, resolved per local endpoint.
    named: Vec<NamedIngress>,
}

/// An ingress named port of a rule, resolved per local endpoint.
struct NamedIngress {
    /// The peers' identities, and their ipBlock identities (entries by address).
    identities: Rc<BTreeSet<u32>>,
    blocks: Rc<BTreeSet<u32>>,
    class: Class,
    rule: usize,
    port: PortMatch,
}

impl Resolved {
    /// `http` grows with `refs`: each rule's layer-7 rules.
    fn new<'a>(policy: &'a Policy, index: &mut Index<'a>, refs: &mut Vec<RuleRef>, http: &mut Vec<Option<&'a [HttpRule]>>) -> Self {
        let subject = index.select(&policy.subject).classes.clone();
        let mut direction = |rules: &'a Option<crate::ir::DirectionRules>, ingress: bool| {
            rules.as_ref().map(|d| {
                let mut out =
                    ResolvedDirection { default_deny: d.default_deny, atoms: Vec::new(), by_address: Vec::new(), named: Vec::new() };
                for (i, rule) in d.rules.iter().enumerate() {
                    refs.push(RuleRef { policy: policy.id.clone(), ingress, index: i });
                    http.push(rule.http.as_deref());
                    resolve_rule(rule, policy.audit, ingress, refs.len() - 1, index, &mut out);
                }
                out
            })
        };
        let ingress = direction(&policy.ingress, true);
        let egress = direction(&policy.egress, false);
        Resolved { subject, ingress, egress }
    }
}

fn resolve_rule<'a>(rule: &'a Rule, audit: bool, ingress: bool, rule_ref: usize, index: &mut Index<'a>, out: &mut ResolvedDirection) {
    let class = match (rule.action, audit) {
        (Action::Allow, _) => Class::Allow,
        (Action::Deny, true) => Class::AuditDeny,
        (Action::Deny, false) => Class::Deny,
    };
    let peers = match &rule.peers {
        None => PeerSet { identities: [IDENTITY_ANY].into(), endpoints: index.all_endpoints(), blocks: BTreeSet::new() },
        Some(peers) => {
            let mut all = PeerSet::default();
            let mut eps = BTreeSet::new();
            for peer in peers {
                let one = index.peer(peer);
                all.identities.extend(one.identities);
                eps.extend(one.endpoints);
                all.blocks.extend(one.blocks);
            }
            all.endpoints = eps.into_iter().collect();
            all
        }
    };
    // Entries by address are allows only: the datapath asks them when the lookups by identity
    // miss, which gives the union of the allows but would let a deny there lose to an allow.
    let blocks = if class == Class::Allow { peers.blocks } else { BTreeSet::new() };
    let layer7 = rule.http.is_some();
    let atom =
        |identity, (proto, port, port_prefix)| Atom { key: EntryKey { identity, proto, port, port_prefix }, class, rule: rule_ref, layer7 };
    if rule.ports.is_empty() {
        out.atoms.extend(peers.identities.iter().map(|id| atom(*id, (None, 0, 0))));
        out.by_address.extend(blocks.iter().map(|id| atom(*id, (None, 0, 0))));
        return;
    }
    let identities = Rc::new(peers.identities);
    let blocks = Rc::new(blocks);
    for port in &rule.ports {
        match port {
            PortMatch::Named { .. } if ingress => out.named.push(NamedIngress {
                identities: identities.clone(),
                blocks: blocks.clone(),
                class,
                rule: rule_ref,
                port: port.clone(),
            }),
            // Egress: each peer endpoint's own number for the name, keyed by its identity. An
            // ipBlock names no endpoint: a pod's number cannot be keyed by an address block
            // that other pods share.
            PortMatch::Named { protocol, name } => {
                for ep in peers.endpoints.iter().map(|i| &index.view.endpoints[*i]) {
                    if let Some((proto, number)) = ep.named_ports.get(name) {
                        if protocol_numbers(*protocol).contains(proto) {
                            out.atoms.push(atom(ep.identity, (Some(*proto), *number, 16)));
                        }
                    }
                }
            }
            _ => {
                for key in port_keys(port) {
                    out.atoms.extend(identities.iter().map(|id| atom(*id, key)));
                    out.by_address.extend(blocks.iter().map(|id| atom(*id, key)));
                }
            }
        }
    }
}

/// For each port with grants, what the datapath's lookups decide for every identity that has
/// entries of its own, and for all others (the wildcard's entries alone).
fn proxied_ports(table: &DirectionTable) -> Vec<ProxiedPort> {
    let ports: BTreeSet<u16> = table.layer7.iter().map(|g| g.port).collect();
    let identities: BTreeSet<u32> = table.entries.keys().map(|k| k.identity).filter(|i| *i != IDENTITY_ANY).collect();
    let proxies = |identity: u32, port: u16| {
        let (_, matched) = crate::eval::lookup(table, crate::eval::PeerIds { identity, ip_block: None }, PROTO_TCP, port);
        crate::eval::deciding(&matched).is_some_and(|m| m.entry.proxy)
    };
    ports
        .into_iter()
        .map(|port| {
            let (proxied, plain): (Vec<u32>, Vec<u32>) = identities.iter().partition(|id| proxies(**id, port));
            ProxiedPort { port, proxied, plain, others: proxies(IDENTITY_ANY, port) }
        })
        .collect()
}

/// What building a table needs.
struct Ctx<'a> {
    policies: &'a [Policy],
    resolved: &'a [Resolved],
    refs: &'a [RuleRef],
    /// Parallel to `refs`: each rule's layer-7 rules.
    http: &'a [Option<&'a [HttpRule]>],
}

impl Ctx<'_> {
    /// The table of one direction for an endpoint selected by `selecting`.
    fn table(&self, selecting: &[usize], ingress: bool, named_ports: &NamedPorts) -> DirectionTable {
        let dirs: Vec<(usize, &ResolvedDirection)> = selecting
            .iter()
            .filter_map(|i| {
                let r = &self.resolved[*i];
                if ingress { r.ingress.as_ref() } else { r.egress.as_ref() }.map(|d| (*i, d))
            })
            .collect();
        let deny_by = |audit: bool| dirs.iter().any(|(i, d)| d.default_deny && self.policies[*i].audit == audit);
        let mode = if deny_by(false) {
            Mode::Enforce
        } else if deny_by(true) {
            Mode::Audit
        } else if !dirs.is_empty() {
            Mode::DefaultAllow
        } else {
            return DirectionTable::default();
        };
        let (mut atoms, mut by_address) = (Vec::new(), Vec::new());
        for (i, d) in &dirs {
            // Under Enforce an audit policy's allow opens nothing.
            let keep = |a: &Atom| !(mode == Mode::Enforce && self.policies[*i].audit && a.class == Class::Allow);
            atoms.extend(d.atoms.iter().filter(|a| keep(a)).copied());
            by_address.extend(d.by_address.iter().filter(|a| keep(a)).copied());
            for named in &d.named {
                let PortMatch::Named { protocol, name } = &named.port else {
                    continue;
                };
                let Some((proto, number)) = named_ports.get(name) else {
                    continue;
                };
                if !protocol_numbers(*protocol).contains(proto) {
                    continue;
                }
                let atom = |id: &u32| Atom {
                    key: EntryKey { identity: *id, proto: Some(*proto), port: *number, port_prefix: 16 },
                    class: named.class,
                    rule: named.rule,
                    layer7: false,
                };
                atoms.extend(named.identities.iter().map(atom).filter(|a| keep(a)));
                by_address.extend(named.blocks.iter().map(atom).filter(|a| keep(a)));
            }
        }
        let mut table = DirectionTable {
            mode,
            layer7: self.grants(&atoms),
            entries: entries::build(&atoms, mode, self.refs),
            by_address: entries::build(&by_address, mode, self.refs),
            policies: dirs.iter().map(|(i, _)| self.policies[*i].id.clone()).collect(),
            proxied: Vec::new(),
        };
        table.proxied = proxied_ports(&table);
        table
    }

    /// The proxy's grants: one per layer-7 allow atom (a single TCP port, by validation).
    fn grants(&self, atoms: &[Atom]) -> Vec<L7Grant> {
        let mut grants: Vec<L7Grant> = atoms
            .iter()
            .filter(|a| a.layer7 && a.class == Class::Allow && a.key.port_prefix == 16)
            .filter_map(|a| {
                let http = self.http.get(a.rule).copied().flatten()?;
                let policy = self.refs.get(a.rule)?.policy.to_string();
                Some(L7Grant { identity: a.key.identity, port: a.key.port, http: http.to_vec(), policy })
            })
            .collect();
        grants.sort_by(|a, b| (a.identity, a.port, &a.policy).cmp(&(b.identity, b.port, &b.policy)));
        grants.dedup();
        grants
    }
}
