//! From rule atoms to the entries of one direction table, shaped for the datapath's lookup:
//! longest prefix on (peer identity, proto, port) and on (IDENTITY_ANY, proto, port), the
//! stronger of the two wins. Each key's verdict is computed over every atom whose range
//! contains it, so the longest match always carries the verdict of all rules that apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::output::{Entry, EntryKey, Mode, RuleRef, Verdict, IDENTITY_ANY};
use crate::ports::mask;

/// What a rule says about the traffic of an atom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    Allow,
    /// Deny of an audit-mode policy: reported, not dropped.
    AuditDeny,
    Deny,
}

/// One (identity, proto, port prefix) range of one rule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Atom {
    pub key: EntryKey,
    pub class: Class,
    /// Index into the compilation's rule references.
    pub rule: usize,
    /// An allow of a rule with layer-7 rules: it allows through the proxy.
    pub layer7: bool,
}

/// What the atoms of one exact key say.
#[derive(Default)]
struct Said {
    allow: bool,
    /// Allowed by a rule without layer-7 rules.
    allow_plain: bool,
    audit_deny: bool,
    deny: bool,
    /// Each rule with what it says, so an entry can name the rules behind its verdict.
    rules: Vec<(Class, usize)>,
}

/// Keys packed into one integer and hashed by one multiplication: tables are built for many
/// endpoints and the covering lookups dominate the compiler's time.
type Packed = HashMap<u64, Said, BuildHasherDefault<KeyHasher>>;

fn pack(k: EntryKey) -> u64 {
    let proto = k.proto.map_or(0, |p| u64::from(p) + 1);
    u64::from(k.identity) << 32 | proto << 23 | u64::from(k.port) << 5 | u64::from(k.port_prefix)
}

#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// The entries for `atoms` under `mode`.
///
/// Under Enforce an audit deny must not open what nothing allows: it only turns an allow
/// into Audit. So a key covered by audit denies alone gets no entry, and where an audit
/// deny and an allow of different identity keys overlap, their intersection gets an entry
/// of its own so that one lookup sees both.
pub(crate) fn build(atoms: &[Atom], mode: Mode, refs: &[RuleRef]) -> BTreeMap<EntryKey, Entry> {
    let mut said = Packed::default();
    let mut keys: BTreeSet<EntryKey> = BTreeSet::new();
    // Port prefix lengths in use: covering lookups need only try these.
    let mut lengths: u32 = 0;
    for atom in atoms {
        let s = said.entry(pack(atom.key)).or_default();
        match atom.class {
            Class::Allow => {
                s.allow = true;
                s.allow_plain |= !atom.layer7;
            }
            Class::AuditDeny => s.audit_deny = true,
            Class::Deny => s.deny = true,
        }
        s.rules.push((atom.class, atom.rule));
        if keys.insert(atom.key) && atom.key.proto.is_some() {
            lengths |= 1 << atom.key.port_prefix;
        }
    }
    if mode == Mode::Enforce {
        let pick =
            |f: fn(&Said) -> bool| -> Vec<EntryKey> { keys.iter().copied().filter(|k| said.get(&pack(*k)).is_some_and(f)).collect() };
        let (audits, allows) = (pick(|s| s.audit_deny), pick(|s| s.allow));
        keys.extend(audit_intersections(&audits, &allows));
    }
    let mut entries = BTreeMap::new();
    let mut rules: Vec<(Class, usize)> = Vec::new();
    for key in keys {
        let (mut allow, mut allow_plain, mut audit_deny, mut deny) = (false, false, false, false);
        rules.clear();
        for covering in covering_keys(key, lengths) {
            if let Some(s) = said.get(&pack(covering)) {
                allow |= s.allow;
                allow_plain |= s.allow_plain;
                audit_deny |= s.audit_deny;
                deny |= s.deny;
                rules.extend(&s.rules);
            }
        }
        let verdict = match mode {
            Mode::Enforce if deny => Verdict::Deny,
            Mode::Enforce if allow && audit_deny => Verdict::Audit,
            Mode::Enforce if allow => Verdict::Allow,
            Mode::Enforce => continue,
            _ if deny => Verdict::Deny,
            _ if audit_deny => Verdict::Audit,
            _ => Verdict::Allow,
        };
        // The rules behind the verdict: a deny names its deny rules, not the allows it
        // overrides; an audit its audit denies.
        let behind = match verdict {
            Verdict::Deny => Class::Deny,
            Verdict::Audit => Class::AuditDeny,
            Verdict::Allow => Class::Allow,
        };
        let mut named: Vec<usize> = rules.iter().filter(|(c, _)| *c == behind).map(|(_, i)| *i).collect();
        named.sort_unstable();
        named.dedup();
        let rules = named.iter().filter_map(|i| refs.get(*i).cloned()).collect();
        // Through the proxy when every allow behind the verdict has layer-7 rules: one without
        // allows all of the traffic, as in Cilium.
        let proxy = verdict != Verdict::Deny && allow && !allow_plain;
        entries.insert(key, Entry { verdict, rules, proxy });
    }
    entries
}

/// Every key whose range contains `key`: the same identity's wider prefixes and, for a
/// specific identity, IDENTITY_ANY's (an any-peer rule applies to every peer). Only prefix
/// lengths set in `lengths` are tried.
pub(crate) fn covering_keys(key: EntryKey, lengths: u32) -> impl Iterator<Item = EntryKey> {
    let any = (key.identity != IDENTITY_ANY).then_some(IDENTITY_ANY);
    std::iter::once(key.identity).chain(any).flat_map(move |identity| {
        let any_proto = EntryKey { identity, proto: None, port: 0, port_prefix: 0 };
        let ports = key.proto.map(|proto| {
            (0..=key.port_prefix).filter(move |len| lengths & (1 << len) != 0).map(move |len| EntryKey {
                identity,
                proto: Some(proto),
                port: mask(key.port, len),
                port_prefix: len,
            })
        });
        std::iter::once(any_proto).chain(ports.into_iter().flatten())
    })
}

/// Intersections of audit-deny and allow keys where one is specific and the other is
/// IDENTITY_ANY (with equal identities the narrower key already is the intersection).
fn audit_intersections(audits: &[EntryKey], allows: &[EntryKey]) -> Vec<EntryKey> {
    let mut out = Vec::new();
    for a in audits {
        for b in allows {
            if (a.identity == IDENTITY_ANY) != (b.identity == IDENTITY_ANY) {
                out.extend(intersect(*a, *b));
            }
        }
    }
    out
}

/// The key of the traffic both `a` and `b` match, if any (prefix ranges nest or are
/// disjoint, so the intersection is the narrower of the two).
pub(crate) fn intersect(a: EntryKey, b: EntryKey) -> Option<EntryKey> {
    let identity = match (a.identity, b.identity) {
        (IDENTITY_ANY, i) | (i, IDENTITY_ANY) => i,
        (i, j) if i == j => i,
        _ => return None,
    };
    let (narrow, wide) = match (a.proto, b.proto) {
        (None, _) => (b, a),
        (_, None) => (a, b),
        (Some(p), Some(q)) if p != q => return None,
        _ if a.port_prefix >= b.port_prefix => (a, b),
        _ => (b, a),
    };
    (mask(narrow.port, wide.port_prefix) == wide.port || wide.proto.is_none()).then_some(EntryKey { identity, ..narrow })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identity: u32, proto: Option<u8>, port: u16, port_prefix: u8) -> EntryKey {
        EntryKey { identity, proto, port, port_prefix }
    }

    #[test]
    fn intersections() {
        let any_tcp = key(0, Some(6), 0, 0);
        let i_80 = key(7, Some(6), 80, 16);
        assert_eq!(intersect(any_tcp, i_80), Some(i_80), "wide any and narrow specific");
        assert_eq!(intersect(key(7, None, 0, 0), key(0, Some(17), 53, 16)), Some(key(7, Some(17), 53, 16)), "every protocol and one port");
        assert_eq!(intersect(i_80, key(0, Some(6), 81, 16)), None, "other port");
        assert_eq!(intersect(i_80, key(8, Some(6), 80, 16)), None, "other identity");
        assert_eq!(intersect(i_80, key(0, Some(17), 80, 16)), None, "other protocol");
    }

    #[test]
    fn wider_deny_covers_narrower_allow() {
        let atoms = [
            Atom { key: key(7, Some(6), 80, 16), class: Class::Allow, rule: 0, layer7: false },
            Atom { key: key(7, Some(6), 0, 0), class: Class::Deny, rule: 1, layer7: false },
        ];
        let entries = build(&atoms, Mode::Enforce, &[]);
        assert_eq!(entries.len(), 2, "both keys kept");
        assert!(entries.values().all(|e| e.verdict == Verdict::Deny), "the narrower allow is denied too: {entries:?}");
    }

    #[test]
    fn an_entry_names_only_the_rules_behind_its_verdict() {
        let refs: Vec<RuleRef> = ["allow-all", "deny-7", "audit-8"]
            .iter()
            .map(|name| RuleRef {
                policy: crate::ir::PolicyRef { kind: "SluiceNetworkPolicy".into(), namespace: Some("x".into()), name: (*name).into() },
                ingress: true,
                index: 0,
            })
            .collect();
        let atoms = [
            Atom { key: key(IDENTITY_ANY, None, 0, 0), class: Class::Allow, rule: 0, layer7: false },
            Atom { key: key(7, None, 0, 0), class: Class::Deny, rule: 1, layer7: false },
            Atom { key: key(8, None, 0, 0), class: Class::AuditDeny, rule: 2, layer7: false },
        ];
        let entries = build(&atoms, Mode::Enforce, &refs);
        let named = |identity| {
            let e = &entries[&key(identity, None, 0, 0)];
            (e.verdict, e.rules.iter().map(|r| r.policy.name.as_str()).collect::<Vec<_>>())
        };
        assert_eq!(named(7), (Verdict::Deny, vec!["deny-7"]), "a deny names its deny rule, not the allow it overrides");
        assert_eq!(named(8), (Verdict::Audit, vec!["audit-8"]), "an audit names the audit deny");
        assert_eq!(named(IDENTITY_ANY), (Verdict::Allow, vec!["allow-all"]), "an allow names the allow");
    }

    #[test]
    fn audit_deny_alone_opens_nothing_under_enforce() {
        let atoms = [Atom { key: key(7, Some(6), 80, 16), class: Class::AuditDeny, rule: 0, layer7: false }];
        assert!(build(&atoms, Mode::Enforce, &[]).is_empty(), "no entry under Enforce");
        let audit = build(&atoms, Mode::Audit, &[]);
        assert_eq!(audit.len(), 1, "an entry under Audit");
    }

    /// What the rules mean, straight from the atoms: the reference the entries must match.
    fn meaning(atoms: &[Atom], mode: Mode, peer: u32, proto: u8, port: u16) -> Verdict {
        let hits: Vec<Class> = atoms
            .iter()
            .filter(|a| a.key.identity == peer || a.key.identity == IDENTITY_ANY)
            .filter(|a| match a.key.proto {
                None => true,
                Some(p) => p == proto && mask(port, a.key.port_prefix) == a.key.port,
            })
            .map(|a| a.class)
            .collect();
        let has = |c| hits.contains(&c);
        match mode {
            Mode::Enforce if has(Class::Deny) || !has(Class::Allow) => Verdict::Deny,
            Mode::Enforce if has(Class::AuditDeny) => Verdict::Audit,
            Mode::Enforce => Verdict::Allow,
            _ if has(Class::Deny) => Verdict::Deny,
            _ if has(Class::AuditDeny) || (hits.is_empty() && mode == Mode::Audit) => Verdict::Audit,
            _ => Verdict::Allow,
        }
    }

    #[test]
    fn two_longest_prefix_lookups_give_the_rules_meaning() {
        // A fixed linear congruential sequence: random tables, reproducible failures.
        let mut state: u64 = 0x5eed;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let identities = [IDENTITY_ANY, 7, 8];
        for round in 0..150 {
            let atoms: Vec<Atom> = (0..1 + next(8))
                .map(|rule| {
                    let identity = identities[next(3) as usize];
                    let key = match next(4) {
                        0 => key(identity, None, 0, 0),
                        n => {
                            let len = [0u8, 9, 10, 12, 14, 15, 16][next(7) as usize];
                            let port = mask(next(140) as u16, len);
                            key(identity, Some(if n == 1 { 17 } else { 6 }), port, len)
                        }
                    };
                    let class = [Class::Allow, Class::Allow, Class::AuditDeny, Class::Deny][next(4) as usize];
                    Atom { key, class, rule: rule as usize, layer7: false }
                })
                .collect();
            for mode in [Mode::Enforce, Mode::Audit, Mode::DefaultAllow] {
                let table = crate::output::DirectionTable { mode, entries: build(&atoms, mode, &[]), ..Default::default() };
                for peer in [7, 8, 9] {
                    for proto in [6, 17, 132] {
                        for port in (0..140).chain([1000, 65535]) {
                            let peer_ids = crate::eval::PeerIds { identity: peer, ip_block: None };
                            let (got, _) = crate::eval::lookup(&table, peer_ids, proto, port);
                            assert_eq!(
                                got,
                                meaning(&atoms, mode, peer, proto, port),
                                "round {round} {mode:?} peer {peer} {proto}/{port}\natoms {atoms:?}\nentries {:?}",
                                table.entries
                            );
                        }
                    }
                }
            }
        }
    }
}
