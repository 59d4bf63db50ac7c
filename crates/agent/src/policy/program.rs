//! Writes a node's compiled policy into the datapath: the ipcache and the ipBlock prefixes by
//! difference, and each endpoint's entries (by identity and by address) under a fresh revision
//! that becomes visible with one write to `policy_endpoints` (so no packet ever sees half a
//! policy), after which the old revision's entries are deleted. An endpoint whose entries,
//! modes and flags did not change is not touched.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use sluice_abi::{policy_endpoint, policy_entry, policy_key};
use sluice_datapath::{DatapathError, PolicyTables};
use sluice_policy::{Compiled, DirectionTable, EntryKey, Mode, RuleRef, Verdict};

/// A local endpoint the compiled tables are written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The agent's endpoint number (the datapath's `endpoint_id`).
    pub id: u32,
    /// `namespace/name` of its pod.
    pub pod: String,
    /// Its addresses (known before the store hears of them).
    pub ips: Vec<std::net::IpAddr>,
}

/// What one programming round changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    pub endpoints_changed: usize,
    pub entries_written: usize,
    pub entries_removed: usize,
    pub ipcache_written: usize,
    pub ipcache_removed: usize,
    pub ipblocks_written: usize,
    pub ipblocks_removed: usize,
}

/// One endpoint's entries as written, keyed by the key's bytes.
type Entries = BTreeMap<Vec<u8>, (policy_key, policy_entry)>;

/// The programmer's memory of what it wrote, adopted from the maps at start.
#[derive(Debug, Default)]
pub struct PolicyProgrammer {
    /// endpoint id -> (modes and revision, entries of that revision).
    endpoints: BTreeMap<u32, (policy_endpoint, Entries)>,
    ipcache: BTreeMap<IpNet, u32>,
    ipblocks: BTreeMap<IpNet, u32>,
    /// Entries of no current revision (a round that stopped half-way): deleted next round.
    orphans: Vec<policy_key>,
    /// Rule cookies: the rules behind an entry, interned; 0 is "no rule" (the default).
    cookies: BTreeMap<Vec<RuleRef>, u32>,
    rules: BTreeMap<u32, Vec<RuleRef>>,
    /// Each cookie's rules in words, filled as the cookie is handed out — before an entry
    /// carrying it reaches the datapath — so a flow the entry decides is named at once.
    names: RuleNames,
    /// The node proxy's port, written into entries that allow only through it.
    proxy_port: u16,
}

/// Rule cookies in words, shared with the flow observer.
pub type RuleNames = std::sync::Arc<std::sync::RwLock<std::collections::HashMap<u32, String>>>;

fn key_bytes(k: &policy_key) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&k.prefixlen.to_be_bytes());
    out.extend_from_slice(&k.endpoint_id.to_be_bytes());
    out.extend_from_slice(&k.identity.to_be_bytes());
    out.extend_from_slice(&[k.direction, k.revision, k.proto]);
    out.extend_from_slice(&k.port.to_be_bytes());
    out
}

fn mode_value(mode: Mode) -> u8 {
    (match mode {
        Mode::None => sluice_abi::SLUICE_POLICY_MODE_NONE,
        Mode::Enforce => sluice_abi::SLUICE_POLICY_MODE_ENFORCE,
        Mode::Audit => sluice_abi::SLUICE_POLICY_MODE_AUDIT,
        Mode::DefaultAllow => sluice_abi::SLUICE_POLICY_MODE_DEFAULT_ALLOW,
    }) as u8
}

/// `policy_endpoint.flags`: the directions whose lookups go on by address.
fn flags_value(ingress: &DirectionTable, egress: &DirectionTable) -> u8 {
    let mut flags = 0;
    if ingress.mode != Mode::None && !ingress.by_address.is_empty() {
        flags |= sluice_abi::SLUICE_POLICY_F_INGRESS_BY_ADDRESS;
    }
    if egress.mode != Mode::None && !egress.by_address.is_empty() {
        flags |= sluice_abi::SLUICE_POLICY_F_EGRESS_BY_ADDRESS;
    }
    flags as u8
}

fn verdict_value(v: Verdict) -> u8 {
    (match v {
        Verdict::Allow => sluice_abi::SLUICE_POLICY_ALLOW,
        Verdict::Audit => sluice_abi::SLUICE_POLICY_AUDIT,
        Verdict::Deny => sluice_abi::SLUICE_POLICY_DENY,
    }) as u8
}

/// The map key of an entry.
pub fn entry_key(endpoint_id: u32, direction: u8, revision: u8, k: &EntryKey) -> policy_key {
    let fixed = sluice_abi::SLUICE_POLICY_FIXED_BITS;
    let prefixlen = match k.proto {
        None => fixed,
        Some(_) => fixed + 8 + u32::from(k.port_prefix.min(16)),
    };
    policy_key {
        prefixlen,
        endpoint_id,
        identity: k.identity,
        direction,
        revision,
        pad: 0,
        proto: k.proto.unwrap_or(0),
        port: k.port.to_be(),
        pad2: [0; 2],
    }
}

// === impl PolicyProgrammer ===

impl PolicyProgrammer {
    /// Starts from what the maps hold (an agent restart keeps every endpoint's revision);
    /// entries allowed only through the layer-7 proxy name `proxy_port`.
    pub fn adopt(dp: &dyn PolicyTables, proxy_port: u16) -> Result<Self, DatapathError> {
        let mut me = Self { proxy_port, ..Self::default() };
        for (id, pe) in dp.policy_endpoints()? {
            me.endpoints.insert(id, (pe, BTreeMap::new()));
        }
        for (k, v) in dp.policy_entries()? {
            match me.endpoints.get_mut(&k.endpoint_id) {
                Some((pe, entries)) if pe.revision == k.revision => {
                    entries.insert(key_bytes(&k), (k, v));
                }
                _ => me.orphans.push(k),
            }
        }
        me.ipcache = dp.ipcache()?.into_iter().collect();
        me.ipblocks = dp.ipblocks()?.into_iter().collect();
        Ok(me)
    }

    fn cookie(&mut self, rules: &[RuleRef]) -> u32 {
        if rules.is_empty() {
            return 0;
        }
        if let Some(c) = self.cookies.get(rules) {
            return *c;
        }
        let c = self.cookies.len() as u32 + 1;
        self.cookies.insert(rules.to_vec(), c);
        self.rules.insert(c, rules.to_vec());
        self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(c, super::sync::describe(rules));
        c
    }

    /// The cookies' names as they are handed out (see [`RuleNames`]).
    pub fn names(&self) -> RuleNames {
        self.names.clone()
    }

    /// Every cookie handed out, with its rules.
    pub fn cookies(&self) -> impl Iterator<Item = (u32, &[RuleRef])> {
        self.rules.iter().map(|(c, r)| (*c, r.as_slice()))
    }

    /// The rules behind a cookie seen in a flow.
    pub fn rules_of(&self, cookie: u32) -> Option<&[RuleRef]> {
        self.rules.get(&cookie).map(Vec::as_slice)
    }

    fn entries_of(&mut self, id: u32, revision: u8, ingress: &DirectionTable, egress: &DirectionTable) -> Entries {
        let mut out = BTreeMap::new();
        let by_address = sluice_abi::SLUICE_POLICY_BY_ADDRESS as u8;
        for (dir, table) in [(sluice_abi::SLUICE_POLICY_INGRESS as u8, ingress), (sluice_abi::SLUICE_POLICY_EGRESS as u8, egress)] {
            if table.mode == Mode::None {
                continue;
            }
            for (dir, entries) in [(dir, &table.entries), (dir | by_address, &table.by_address)] {
                for (k, e) in entries {
                    let key = entry_key(id, dir, revision, k);
                    let proxy_port = if e.proxy { self.proxy_port.to_be() } else { 0 };
                    let value = policy_entry { verdict: verdict_value(e.verdict), pad: 0, proxy_port, rule: self.cookie(&e.rules) };
                    out.insert(key_bytes(&key), (key, value));
                }
            }
        }
        out
    }

    /// Makes the maps hold `compiled` for `endpoints`; endpoints not listed lose their policy.
    pub fn program(
        &mut self,
        dp: &mut dyn PolicyTables,
        compiled: &Compiled,
        endpoints: &[LocalEndpoint],
    ) -> Result<PolicyReport, DatapathError> {
        let mut report = PolicyReport::default();
        // The ipcache and the ipBlock prefixes first: new identities must resolve before
        // entries name them.
        for (prefix, id) in &compiled.ipcache {
            if self.ipcache.get(prefix) != Some(id) {
                dp.upsert_ipcache(*prefix, *id)?;
                self.ipcache.insert(*prefix, *id);
                report.ipcache_written += 1;
            }
        }
        for (prefix, id) in &compiled.ipblocks {
            if self.ipblocks.get(prefix) != Some(id) {
                dp.upsert_ipblock(*prefix, *id)?;
                self.ipblocks.insert(*prefix, *id);
                report.ipblocks_written += 1;
            }
        }
        let default = sluice_policy::EndpointPolicy::default();
        let mut wanted = BTreeSet::new();
        for ep in endpoints {
            wanted.insert(ep.id);
            let policy = compiled.endpoints.get(&ep.pod).unwrap_or(&default);
            let modes = (mode_value(policy.ingress.mode), mode_value(policy.egress.mode));
            let flags = flags_value(&policy.ingress, &policy.egress);
            let current = self.endpoints.get(&ep.id).cloned();
            let (old_pe, old_entries) = current.clone().unwrap_or_default();
            let unselected = policy.ingress.mode == Mode::None && policy.egress.mode == Mode::None;
            if unselected && current.is_none() {
                continue;
            }
            let revision = if current.is_some() { old_pe.revision ^ 1 } else { 0 };
            let mut new_entries = self.entries_of(ep.id, revision, &policy.ingress, &policy.egress);
            // Unchanged (same modes, same entries once the revision is set aside): nothing to do.
            let same = current.is_some()
                && (old_pe.ingress_mode, old_pe.egress_mode) == modes
                && old_pe.flags == flags
                && old_entries.len() == new_entries.len()
                && old_entries.values().zip(new_entries.values()).all(|((ok, ov), (nk, nv))| {
                    (ok.prefixlen, ok.identity, ok.direction, ok.proto, ok.port)
                        == (nk.prefixlen, nk.identity, nk.direction, nk.proto, nk.port)
                        && ov.verdict == nv.verdict
                        && ov.rule == nv.rule
                });
            if same {
                continue;
            }
            report.endpoints_changed += 1;
            for (k, v) in new_entries.values() {
                dp.upsert_policy_entry(k, v)?;
                report.entries_written += 1;
            }
            let pe = policy_endpoint { ingress_mode: modes.0, egress_mode: modes.1, revision, flags };
            if unselected {
                dp.remove_policy_endpoint(ep.id)?;
            } else {
                dp.upsert_policy_endpoint(ep.id, &pe)?;
            }
            for (k, _) in old_entries.values() {
                dp.remove_policy_entry(k)?;
                report.entries_removed += 1;
            }
            if unselected {
                self.endpoints.remove(&ep.id);
            } else {
                self.endpoints.insert(ep.id, (pe, std::mem::take(&mut new_entries)));
            }
        }
        for k in std::mem::take(&mut self.orphans) {
            dp.remove_policy_entry(&k)?;
            report.entries_removed += 1;
        }
        let gone: Vec<u32> = self.endpoints.keys().copied().filter(|id| !wanted.contains(id)).collect();
        for id in gone {
            if let Some((_, entries)) = self.endpoints.remove(&id) {
                dp.remove_policy_endpoint(id)?;
                for (k, _) in entries.values() {
                    dp.remove_policy_entry(k)?;
                    report.entries_removed += 1;
                }
            }
        }
        // The ipcache and the ipBlock prefixes last: an identity leaves once no entry needs it.
        let stale: Vec<IpNet> = self.ipcache.keys().copied().filter(|p| !compiled.ipcache.contains_key(p)).collect();
        for prefix in stale {
            dp.remove_ipcache(prefix)?;
            self.ipcache.remove(&prefix);
            report.ipcache_removed += 1;
        }
        let stale: Vec<IpNet> = self.ipblocks.keys().copied().filter(|p| !compiled.ipblocks.contains_key(p)).collect();
        for prefix in stale {
            dp.remove_ipblock(prefix)?;
            self.ipblocks.remove(&prefix);
            report.ipblocks_removed += 1;
        }
        Ok(report)
    }

    /// Entries in the maps now, by endpoint.
    pub fn entry_count(&self) -> usize {
        self.endpoints.values().map(|(_, e)| e.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_datapath::fake::FakeDatapath;
    use sluice_policy::{EndpointPolicy, Entry, PolicyRef};

    fn compiled(pod: &str, ports: &[u16]) -> Compiled {
        let mut table = DirectionTable { mode: Mode::Enforce, ..Default::default() };
        for p in ports {
            let rule = RuleRef {
                policy: PolicyRef { kind: "NetworkPolicy".into(), namespace: Some("x".into()), name: "web".into() },
                ingress: true,
                index: 0,
            };
            table.entries.insert(
                EntryKey { identity: 300, proto: Some(6), port: *p, port_prefix: 16 },
                Entry { verdict: Verdict::Allow, rules: vec![rule], proxy: false },
            );
        }
        let mut c = Compiled::default();
        c.endpoints.insert(pod.into(), EndpointPolicy { ingress: table, egress: DirectionTable::default() });
        c.ipcache.insert("198.19.0.5/32".parse().unwrap(), 300);
        c
    }

    fn ep() -> Vec<LocalEndpoint> {
        vec![LocalEndpoint { id: 7, pod: "x/a".into(), ips: vec![] }]
    }

    #[test]
    fn a_change_is_written_under_the_other_revision_and_flipped() {
        let mut dp = FakeDatapath::default();
        let mut p = PolicyProgrammer::default();
        let r = p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        assert_eq!((r.endpoints_changed, r.entries_written, r.ipcache_written), (1, 1, 1));
        assert_eq!(dp.policy_endpoints[&7].revision, 0);
        p.program(&mut dp, &compiled("x/a", &[80, 81]), &ep()).unwrap();
        assert_eq!(dp.policy_endpoints[&7].revision, 1, "the new entries went to revision 1");
        assert!(dp.policy.values().all(|(k, _)| k.revision == 1), "revision 0's entries are gone after the flip");
        assert_eq!(dp.policy.len(), 2);
    }

    #[test]
    fn a_converged_round_writes_nothing() {
        let mut dp = FakeDatapath::default();
        let mut p = PolicyProgrammer::default();
        p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        let writes = dp.writes;
        let r = p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        assert_eq!(r, PolicyReport::default());
        assert_eq!(dp.writes, writes);
        // A restarted agent adopts the maps and writes nothing either.
        let mut adopted = PolicyProgrammer::adopt(&dp, 15080).unwrap();
        // Cookies are per process: the same rules get the same first cookie again.
        adopted.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        assert_eq!(dp.writes, writes, "adoption keeps what is programmed");
    }

    #[test]
    fn entries_by_address_set_the_flag_and_the_ipblocks_map() {
        let mut dp = FakeDatapath::default();
        let mut p = PolicyProgrammer::default();
        let block: IpNet = "198.19.0.0/16".parse().unwrap();
        let mut with_block = compiled("x/a", &[80]);
        let table = &mut with_block.endpoints.get_mut("x/a").unwrap().ingress;
        let allow = table.entries.values().next().unwrap().clone();
        table.by_address.insert(EntryKey { identity: 400, proto: Some(6), port: 80, port_prefix: 16 }, allow);
        with_block.ipblocks.insert(block, 400);

        let r = p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        assert_eq!(dp.policy_endpoints[&7].flags, 0, "no entries by address: no flag, the datapath never reads ipblocks");
        assert_eq!(r.ipblocks_written, 0, "nothing in ipblocks");

        let r = p.program(&mut dp, &with_block, &ep()).unwrap();
        assert_eq!((r.endpoints_changed, r.ipblocks_written), (1, 1), "the endpoint is rewritten and the block written");
        assert_eq!(dp.ipblocks.get(&block), Some(&400), "the block's identity is in ipblocks");
        let pe = dp.policy_endpoints[&7];
        assert_eq!(pe.flags, sluice_abi::SLUICE_POLICY_F_INGRESS_BY_ADDRESS as u8, "ingress goes on by address");
        let by_address = (sluice_abi::SLUICE_POLICY_INGRESS | sluice_abi::SLUICE_POLICY_BY_ADDRESS) as u8;
        let keys: Vec<(u32, u8, u8)> = dp.policy.values().map(|(k, _)| (k.identity, k.direction, k.revision)).collect();
        assert!(keys.contains(&(400, by_address, pe.revision)), "the entry by address, under the current revision: {keys:?}");
        assert!(keys.contains(&(300, sluice_abi::SLUICE_POLICY_INGRESS as u8, pe.revision)), "the entry by identity too: {keys:?}");

        let writes = dp.writes;
        p.program(&mut dp, &with_block, &ep()).unwrap();
        assert_eq!(dp.writes, writes, "a converged round writes nothing");
        let writes = dp.writes;
        PolicyProgrammer::adopt(&dp, 15080).unwrap().program(&mut dp, &with_block, &ep()).unwrap();
        assert_eq!(dp.writes, writes, "a restarted agent adopts the entries by address and ipblocks");

        let r = p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        assert_eq!(r.ipblocks_removed, 1, "the block leaves ipblocks");
        assert!(dp.ipblocks.is_empty(), "ipblocks is empty again");
        assert_eq!(dp.policy_endpoints[&7].flags, 0, "the flag is cleared with the revision flip");
        assert!(dp.policy.values().all(|(k, _)| k.direction & by_address != by_address), "no entry by address is left");
    }

    #[test]
    fn an_unselected_or_removed_endpoint_loses_its_entries() {
        let mut dp = FakeDatapath::default();
        let mut p = PolicyProgrammer::default();
        p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        p.program(&mut dp, &Compiled::default(), &ep()).unwrap();
        assert!(dp.policy.is_empty() && dp.policy_endpoints.is_empty() && dp.ipcache.is_empty());
        p.program(&mut dp, &compiled("x/a", &[80]), &ep()).unwrap();
        p.program(&mut dp, &compiled("x/a", &[80]), &[]).unwrap();
        assert!(dp.policy.is_empty() && dp.policy_endpoints.is_empty(), "a deleted endpoint leaves nothing");
    }
}
