//! Programs the desired services into the datapath's service tables, incrementally and in an
//! order that never shows the datapath a half-written backend set: backends first, then the
//! set's slots and Maglev table into the revision no frontend uses, then each frontend flipped
//! to it with one map update. What was programmed is cached, so a converged round writes
//! nothing; a restarted agent adopts the ids it finds in the maps instead of renumbering.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use sluice_abi::{lb_backend, lb_frontend, lb_frontend_key, lb_maglev_chunk, lb_maglev_key, lb_slot_key};
use sluice_datapath::{DatapathError, ServiceTables};
use sluice_services::desired::{Backend, DesiredServices, FrontendKey, FrontendKind, Protocol, Scope, SetKey};
use sluice_services::maglev::maglev_table;

/// A backend's identity in the maps.
pub type BackendAddr = (IpAddr, u16, Protocol);

/// Why programming failed.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("service {set}: {source}")]
    Maglev { set: String, source: sluice_services::maglev::MaglevError },
    #[error("{what}: the datapath's id space is exhausted")]
    Exhausted { what: &'static str },
}

/// What one round changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProgramReport {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub sets_written: usize,
    pub backends_written: usize,
    /// Backends no set references any more: their established connections should be closed.
    pub backends_removed: Vec<BackendAddr>,
}

/// A set as programmed: its id, live revision and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProgrammedSet {
    id: u32,
    revision: u8,
    slots: Vec<u32>,
    maglev: Option<Vec<u32>>,
    /// Slots written in each revision (for removal).
    written: [usize; 2],
    terminating: Vec<u32>,
}

/// What a round may touch, when not everything.
pub use sluice_services::incremental::Touched;

/// The service programmer of one node.
pub struct ServiceProgrammer {
    maglev_size: u32,
    sets: HashMap<SetKey, ProgrammedSet>,
    frontends: BTreeMap<FrontendKey, lb_frontend>,
    backends: HashMap<BackendAddr, (u32, lb_backend)>,
    /// The address of each backend id (for the sets, which hold ids).
    backend_by_id: HashMap<u32, BackendAddr>,
    /// How many desired sets (active or terminating) hold each backend.
    backend_refs: HashMap<BackendAddr, u32>,
    next_set: u32,
    next_backend: u32,
    /// Frontends and backends found in the maps at start, not yet matched to desired ones.
    adopted_frontends: Option<BTreeMap<FrontendKey, lb_frontend>>,
}

/// One row of `sluice service list`, as the maps hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedFrontend {
    pub key: FrontendKey,
    pub service: Option<SetKey>,
    pub flags: u16,
    pub backends: Vec<(BackendAddr, bool /* local */)>,
    pub terminating: Vec<BackendAddr>,
}

// === impl ServiceProgrammer ===

impl ServiceProgrammer {
    /// A programmer that adopts what `tables` already hold (an agent restart), so established
    /// flows keep their backends and nothing is renumbered.
    pub fn adopt(tables: &dyn ServiceTables, maglev_size: u32) -> Result<Self, ProgramError> {
        let mut backends = HashMap::new();
        let mut next_backend = 1;
        for (id, be) in tables.backends()? {
            if let Some(addr) = backend_addr(&be) {
                backends.insert(addr, (id, be));
            }
            next_backend = next_backend.max(id + 1);
        }
        let mut frontends = BTreeMap::new();
        let mut next_set = 1;
        for (key, value) in tables.frontends()? {
            if let Some(k) = frontend_key(&key) {
                next_set = next_set.max(value.set_id + 1);
                frontends.insert(k, value);
            }
        }
        let backend_by_id = backends.iter().map(|(addr, (id, _))| (*id, *addr)).collect();
        Ok(Self {
            maglev_size,
            sets: HashMap::new(),
            frontends: BTreeMap::new(),
            backends,
            backend_by_id,
            backend_refs: HashMap::new(),
            next_set,
            next_backend,
            adopted_frontends: Some(frontends),
        })
    }

    /// Brings the tables to `desired`, looking at everything.
    pub fn program(&mut self, tables: &mut dyn ServiceTables, desired: &DesiredServices) -> Result<ProgramReport, ProgramError> {
        self.program_in(tables, desired, None)
    }

    /// Brings the `touched` frontends and sets to what `desired` says of them (programmed when
    /// there, removed when not), leaving the rest alone: a change costs what it touches. The
    /// first round after a start looks at everything.
    pub fn program_touched(
        &mut self,
        tables: &mut dyn ServiceTables,
        desired: &DesiredServices,
        touched: &Touched,
    ) -> Result<ProgramReport, ProgramError> {
        self.program_in(tables, desired, Some(touched))
    }

    fn program_in(
        &mut self,
        tables: &mut dyn ServiceTables,
        desired: &DesiredServices,
        touched: Option<&Touched>,
    ) -> Result<ProgramReport, ProgramError> {
        let mut report = ProgramReport::default();
        let mut touched = touched;
        if let Some(adopted) = self.adopted_frontends.take() {
            self.adopt_sets(tables, desired, adopted)?;
            touched = None;
        }
        let set_keys: Vec<&SetKey> = match touched {
            None => desired.sets.keys().collect(),
            Some(t) => t.sets.iter().filter(|k| desired.sets.contains_key(*k)).collect(),
        };

        // 1. Backends: every backend of every set in scope, active or terminating.
        let mut wanted_backends: BTreeMap<BackendAddr, lb_backend> = BTreeMap::new();
        for key in &set_keys {
            let set = &desired.sets[*key];
            for (b, terminating) in set.backends.iter().map(|b| (b, false)).chain(set.terminating.iter().map(|b| (b, true))) {
                wanted_backends.insert((b.addr, b.port, b.protocol), abi_backend(b, terminating));
            }
        }
        for (addr, value) in &wanted_backends {
            let id = match self.backends.get(addr) {
                Some((_, current)) if current == value => continue,
                Some((id, _)) => *id,
                None => self.new_backend_id()?,
            };
            tables.upsert_backend(id, value)?;
            self.backends.insert(*addr, (id, *value));
            self.backend_by_id.insert(id, *addr);
            report.backends_written += 1;
        }
        // How many sets hold each backend: recounted over everything, or moved by the sets in
        // scope (their old contents out, their new ones in).
        let mut released: BTreeSet<BackendAddr> = BTreeSet::new();
        match touched {
            None => {
                self.backend_refs.clear();
                for set in desired.sets.values() {
                    for b in set.backends.iter().chain(&set.terminating) {
                        *self.backend_refs.entry((b.addr, b.port, b.protocol)).or_default() += 1;
                    }
                }
            }
            Some(t) => {
                for key in &t.sets {
                    if let Some(old) = self.sets.get(key) {
                        for id in old.slots.iter().chain(&old.terminating) {
                            if let Some(addr) = self.backend_by_id.get(id) {
                                if let Some(n) = self.backend_refs.get_mut(addr) {
                                    *n = n.saturating_sub(1);
                                    if *n == 0 {
                                        released.insert(*addr);
                                    }
                                }
                            }
                        }
                    }
                    if let Some(set) = desired.sets.get(key) {
                        for b in set.backends.iter().chain(&set.terminating) {
                            let addr = (b.addr, b.port, b.protocol);
                            *self.backend_refs.entry(addr).or_default() += 1;
                            released.remove(&addr);
                        }
                    }
                }
            }
        }

        // 2. Sets: write changed ones into their spare revision.
        for key in &set_keys {
            let (key, set) = (*key, &desired.sets[*key]);
            let slots: Vec<u32> = set.backends.iter().map(|b| self.backends[&(b.addr, b.port, b.protocol)].0).collect();
            let terminating: Vec<u32> = set.terminating.iter().map(|b| self.backends[&(b.addr, b.port, b.protocol)].0).collect();
            let maglev = if set.maglev && !slots.is_empty() {
                let names: Vec<String> = set.backends.iter().map(Backend::name).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let table = maglev_table(&refs, self.maglev_size).map_err(|source| ProgramError::Maglev { set: set_name(key), source })?;
                Some(table.into_iter().map(|i| slots[i as usize]).collect::<Vec<u32>>())
            } else {
                None
            };
            let current = self.sets.get(key);
            if let Some(c) = current {
                if c.slots == slots && c.maglev == maglev {
                    if c.terminating != terminating {
                        if let Some(c) = self.sets.get_mut(key) {
                            c.terminating = terminating;
                        }
                    }
                    continue;
                }
            }
            let (id, revision, mut written) = match current {
                Some(c) => (c.id, 1 - c.revision, c.written),
                None => (self.new_set_id()?, 0, [0, 0]),
            };
            write_set(tables, id, revision, &slots, maglev.as_deref(), written[revision as usize])?;
            written[revision as usize] = slots.len();
            self.sets.insert(key.clone(), ProgrammedSet { id, revision, slots, maglev, written, terminating });
            report.sets_written += 1;
        }

        // 3. Frontends: each one flips to its set's live revision in one update.
        let frontend_keys: Vec<&FrontendKey> = match touched {
            None => desired.frontends.keys().collect(),
            Some(t) => t.frontends.iter().filter(|k| desired.frontends.contains_key(*k)).collect(),
        };
        for key in frontend_keys {
            let fe = &desired.frontends[key];
            let Some(set) = self.sets.get(&fe.set) else { continue };
            let mut flags = 0u16;
            match fe.kind {
                FrontendKind::ClusterIp => {}
                FrontendKind::NodePort => flags |= sluice_abi::SLUICE_LB_F_NODEPORT as u16,
                FrontendKind::ExternalIp | FrontendKind::LoadBalancer => flags |= sluice_abi::SLUICE_LB_F_EXTERNAL as u16,
            }
            if fe.local_only {
                flags |= sluice_abi::SLUICE_LB_F_LOCAL_ONLY as u16;
            }
            if fe.affinity_timeout.is_some() {
                flags |= sluice_abi::SLUICE_LB_F_AFFINITY as u16;
            }
            if set.maglev.is_some() {
                flags |= sluice_abi::SLUICE_LB_F_MAGLEV as u16;
            }
            let value = lb_frontend {
                set_id: set.id,
                count: set.slots.len().min(sluice_abi::SLUICE_MAX_BACKENDS_PER_SET as usize) as u16,
                flags,
                affinity_timeout_s: fe.affinity_timeout.unwrap_or(0),
                revision: set.revision,
                pad: [0; 3],
            };
            if self.frontends.get(key) == Some(&value) {
                continue;
            }
            tables.upsert_frontend(&abi_frontend_key(key), &value)?;
            self.frontends.insert(key.clone(), value);
            report.frontends_written += 1;
        }

        // 4. Removals, frontends before the sets and backends they point at.
        let stale: Vec<FrontendKey> = match touched {
            None => self.frontends.keys().filter(|k| !desired.frontends.contains_key(*k)).cloned().collect(),
            Some(t) => {
                t.frontends.iter().filter(|k| !desired.frontends.contains_key(*k) && self.frontends.contains_key(*k)).cloned().collect()
            }
        };
        for key in stale {
            tables.remove_frontend(&abi_frontend_key(&key))?;
            self.frontends.remove(&key);
            report.frontends_removed += 1;
        }
        let stale: Vec<SetKey> = match touched {
            None => self.sets.keys().filter(|k| !desired.sets.contains_key(*k)).cloned().collect(),
            Some(t) => t.sets.iter().filter(|k| !desired.sets.contains_key(*k) && self.sets.contains_key(*k)).cloned().collect(),
        };
        for key in stale {
            if let Some(set) = self.sets.remove(&key) {
                remove_set(tables, &set, self.maglev_size)?;
            }
        }
        let stale: Vec<BackendAddr> = match touched {
            None => self.backends.keys().filter(|a| !wanted_backends.contains_key(*a)).copied().collect(),
            Some(_) => released.into_iter().filter(|a| self.backend_refs.get(a).is_none_or(|n| *n == 0)).collect(),
        };
        for addr in stale {
            self.backend_refs.remove(&addr);
            if let Some((id, _)) = self.backends.remove(&addr) {
                self.backend_by_id.remove(&id);
                tables.remove_backend(id)?;
                report.backends_removed.push(addr);
            }
        }
        Ok(report)
    }

    /// Frontends as programmed, with their live backends, for `sluice service list`.
    pub fn list(&self) -> Vec<ProgrammedFrontend> {
        let by_id: HashMap<u32, BackendAddr> = self.backends.iter().map(|(a, (id, _))| (*id, *a)).collect();
        let local: HashMap<u32, bool> =
            self.backends.values().map(|(id, b)| (*id, b.flags & sluice_abi::SLUICE_LB_BE_LOCAL as u8 != 0)).collect();
        let sets: HashMap<u32, (&SetKey, &ProgrammedSet)> = self.sets.iter().map(|(k, s)| (s.id, (k, s))).collect();
        self.frontends
            .iter()
            .map(|(key, fe)| {
                let set = sets.get(&fe.set_id);
                let ids = |v: &[u32]| {
                    v.iter().filter_map(|id| by_id.get(id).map(|a| (*a, local.get(id).copied().unwrap_or(false)))).collect::<Vec<_>>()
                };
                ProgrammedFrontend {
                    key: key.clone(),
                    service: set.map(|(k, _)| (*k).clone()),
                    flags: fe.flags,
                    backends: set.map(|(_, s)| ids(&s.slots)).unwrap_or_default(),
                    terminating: set.map(|(_, s)| ids(&s.terminating).into_iter().map(|(a, _)| a).collect()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// After a restart: each desired set takes the id, revision and contents its frontends
    /// point at in the maps, so unchanged services are not rewritten.
    fn adopt_sets(
        &mut self,
        tables: &dyn ServiceTables,
        desired: &DesiredServices,
        adopted: BTreeMap<FrontendKey, lb_frontend>,
    ) -> Result<(), ProgramError> {
        let mut slots_of: HashMap<(u32, u8), BTreeMap<u16, u32>> = HashMap::new();
        for (k, id) in tables.slots()? {
            slots_of.entry((k.set_id, k.revision)).or_default().insert(k.slot, id);
        }
        let mut maglev_sets: BTreeSet<(u32, u8)> = BTreeSet::new();
        for k in tables.maglev_keys()? {
            maglev_sets.insert((k.set_id, k.revision));
        }
        for (key, fe) in desired.frontends.iter() {
            let Some(found) = adopted.get(key) else { continue };
            if self.sets.contains_key(&fe.set) {
                self.frontends.insert(key.clone(), *found);
                continue;
            }
            let live: Vec<u32> = slots_of
                .get(&(found.set_id, found.revision))
                .map(|m| m.values().copied().take(found.count as usize).collect())
                .unwrap_or_default();
            // The Maglev table is not read back (16 chunks of 4 KiB per set); a set that has one
            // is rewritten once into its spare revision, which moves no flow: same names, same
            // table.
            let maglev = if maglev_sets.contains(&(found.set_id, found.revision)) { Some(Vec::new()) } else { None };
            let written = |rev: u8| slots_of.get(&(found.set_id, rev)).map(|m| m.len()).unwrap_or(0);
            self.sets.insert(
                fe.set.clone(),
                ProgrammedSet {
                    id: found.set_id,
                    revision: found.revision,
                    slots: live,
                    maglev,
                    written: [written(0), written(1)],
                    terminating: Vec::new(),
                },
            );
            self.frontends.insert(key.clone(), *found);
        }
        // Frontends in the maps that nobody wants any more are removed by the next diff.
        for (key, value) in adopted {
            self.frontends.entry(key).or_insert(value);
        }
        Ok(())
    }

    fn new_set_id(&mut self) -> Result<u32, ProgramError> {
        let id = self.next_set;
        self.next_set = self.next_set.checked_add(1).ok_or(ProgramError::Exhausted { what: "backend set ids" })?;
        Ok(id)
    }

    fn new_backend_id(&mut self) -> Result<u32, ProgramError> {
        let id = self.next_backend;
        self.next_backend = self.next_backend.checked_add(1).ok_or(ProgramError::Exhausted { what: "backend ids" })?;
        Ok(id)
    }
}

fn set_name(key: &SetKey) -> String {
    format!("{}/{} port {:?}", key.namespace, key.service, key.port_name)
}

/// Writes slots 1..n (and the Maglev table) of `revision`, removing slots beyond n left there
/// by an older write.
fn write_set(
    tables: &mut dyn ServiceTables,
    set_id: u32,
    revision: u8,
    slots: &[u32],
    maglev: Option<&[u32]>,
    previously: usize,
) -> Result<(), ProgramError> {
    for (i, id) in slots.iter().enumerate() {
        tables.upsert_slot(&lb_slot_key { set_id, slot: (i + 1) as u16, revision, pad: 0 }, *id)?;
    }
    for i in slots.len()..previously {
        tables.remove_slot(&lb_slot_key { set_id, slot: (i + 1) as u16, revision, pad: 0 })?;
    }
    if let Some(table) = maglev {
        let chunk_len = sluice_abi::SLUICE_MAGLEV_CHUNK as usize;
        for (n, part) in table.chunks(chunk_len).enumerate() {
            let mut chunk = lb_maglev_chunk { backend_ids: [0; sluice_abi::SLUICE_MAGLEV_CHUNK as usize] };
            chunk.backend_ids[..part.len()].copy_from_slice(part);
            tables.upsert_maglev(&lb_maglev_key { set_id, chunk: n as u16, revision, pad: 0 }, &chunk)?;
        }
    }
    Ok(())
}

/// Removes a set's slots and Maglev chunks in both revisions. The chunk keys follow from the
/// table size, so no map scan is needed; a chunk never written is skipped by the map.
fn remove_set(tables: &mut dyn ServiceTables, set: &ProgrammedSet, maglev_size: u32) -> Result<(), ProgramError> {
    let chunks = maglev_size.div_ceil(sluice_abi::SLUICE_MAGLEV_CHUNK);
    for revision in 0..2u8 {
        for i in 0..set.written[revision as usize] {
            tables.remove_slot(&lb_slot_key { set_id: set.id, slot: (i + 1) as u16, revision, pad: 0 })?;
        }
        if set.maglev.is_some() {
            for chunk in 0..chunks {
                tables.remove_maglev(&lb_maglev_key { set_id: set.id, chunk: chunk as u16, revision, pad: 0 })?;
            }
        }
    }
    Ok(())
}

fn addr16(addr: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, sluice_abi::SLUICE_AF_INET as u8)
        }
        IpAddr::V6(a) => (a.octets(), sluice_abi::SLUICE_AF_INET6 as u8),
    }
}

fn from16(addr: &[u8; 16], family: u8) -> Option<IpAddr> {
    match family as u32 {
        sluice_abi::SLUICE_AF_INET => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        sluice_abi::SLUICE_AF_INET6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

fn protocol(number: u8) -> Option<Protocol> {
    match number {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

pub(crate) fn abi_frontend_key(key: &FrontendKey) -> lb_frontend_key {
    let (addr, family) = addr16(key.addr);
    lb_frontend_key {
        addr,
        port: key.port.to_be(),
        proto: key.protocol.number(),
        family,
        scope: match key.scope {
            Scope::External => sluice_abi::SLUICE_LB_SCOPE_EXTERNAL as u8,
            Scope::Internal => sluice_abi::SLUICE_LB_SCOPE_INTERNAL as u8,
        },
        pad: [0; 3],
    }
}

fn frontend_key(key: &lb_frontend_key) -> Option<FrontendKey> {
    Some(FrontendKey {
        addr: from16(&key.addr, key.family)?,
        port: u16::from_be(key.port),
        protocol: protocol(key.proto)?,
        scope: if key.scope as u32 == sluice_abi::SLUICE_LB_SCOPE_INTERNAL { Scope::Internal } else { Scope::External },
    })
}

fn abi_backend(b: &Backend, terminating: bool) -> lb_backend {
    let (addr, family) = addr16(b.addr);
    let mut flags = 0u8;
    if b.local {
        flags |= sluice_abi::SLUICE_LB_BE_LOCAL as u8;
    }
    if terminating {
        flags |= sluice_abi::SLUICE_LB_BE_TERMINATING as u8;
    }
    lb_backend { addr, port: b.port.to_be(), proto: b.protocol.number(), family, flags, pad: [0; 3] }
}

fn backend_addr(b: &lb_backend) -> Option<BackendAddr> {
    Some((from16(&b.addr, b.family)?, u16::from_be(b.port), protocol(b.proto)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_datapath::fake::FakeDatapath;
    use sluice_services::desired::{BackendSet, Family, Frontend};

    fn set_key(service: &str) -> SetKey {
        SetKey { namespace: "default".into(), service: service.into(), port_name: "".into(), family: Family::V4, scope: Scope::External }
    }

    fn backend(last: u8) -> Backend {
        Backend { addr: IpAddr::from([198, 19, 0, last]), port: 8080, protocol: Protocol::Tcp, local: true, terminating: false }
    }

    fn desired(services: &[(&str, u8, &[u8], bool)]) -> DesiredServices {
        let mut d = DesiredServices::default();
        for (name, ip, backends, maglev) in services {
            let key = FrontendKey { addr: IpAddr::from([198, 18, 128, *ip]), port: 80, protocol: Protocol::Tcp, scope: Scope::External };
            d.frontends
                .insert(key, Frontend { kind: FrontendKind::ClusterIp, set: set_key(name), affinity_timeout: None, local_only: false });
            d.sets.insert(
                set_key(name),
                BackendSet { backends: backends.iter().map(|b| backend(*b)).collect(), terminating: vec![], maglev: *maglev }.into(),
            );
        }
        d
    }

    fn live_backends(dp: &FakeDatapath, ip: u8) -> Vec<u32> {
        let key = abi_frontend_key(&FrontendKey {
            addr: IpAddr::from([198, 18, 128, ip]),
            port: 80,
            protocol: Protocol::Tcp,
            scope: Scope::External,
        });
        let (_, fe) = dp.frontends().unwrap().into_iter().find(|(k, _)| *k == key).expect("frontend programmed");
        (1..=fe.count)
            .map(|slot| {
                dp.lb_slots
                    .values()
                    .find(|(k, _)| k.set_id == fe.set_id && k.revision == fe.revision && k.slot == slot)
                    .expect("live slot")
                    .1
            })
            .collect()
    }

    #[test]
    fn programs_once_and_a_converged_round_writes_nothing() {
        let mut dp = FakeDatapath::default();
        let mut p = ServiceProgrammer::adopt(&dp, 13).unwrap();
        let d = desired(&[("a", 1, &[1, 2], false), ("b", 2, &[3], true)]);
        let r = p.program(&mut dp, &d).unwrap();
        assert_eq!((r.frontends_written, r.sets_written, r.backends_written), (2, 2, 3), "first round writes everything");
        assert_eq!(live_backends(&dp, 1).len(), 2, "service a has two live slots");
        assert_eq!(dp.lb_maglev.len(), 1, "a 13-entry Maglev table is one chunk");
        let before = dp.writes;
        let r = p.program(&mut dp, &d).unwrap();
        assert_eq!(r, ProgramReport::default(), "a converged round changes nothing");
        assert_eq!(dp.writes, before, "and writes nothing");
    }

    #[test]
    fn a_backend_change_is_written_to_the_spare_revision_then_flipped() {
        let mut dp = FakeDatapath::default();
        let mut p = ServiceProgrammer::adopt(&dp, 13).unwrap();
        p.program(&mut dp, &desired(&[("a", 1, &[1, 2], false)])).unwrap();
        let old = live_backends(&dp, 1);
        let r = p.program(&mut dp, &desired(&[("a", 1, &[2, 3, 4], false)])).unwrap();
        assert_eq!(r.sets_written, 1);
        assert_eq!(r.backends_removed, vec![(IpAddr::from([198, 19, 0, 1]), 8080, Protocol::Tcp)], "backend .1 is gone and reported");
        let new = live_backends(&dp, 1);
        assert_eq!(new.len(), 3, "the frontend now points at the three new backends");
        assert!(new.contains(&old[1]), "backend .2 kept its id");
        let revisions: BTreeSet<u8> = dp.lb_slots.values().map(|(k, _)| k.revision).collect();
        assert_eq!(revisions, BTreeSet::from([0, 1]), "the old revision stays until the next change (readers may still be on it)");
        assert!(!dp.lb_backends.values().any(|b| b.addr[3] == 1), "the removed backend left lb_backends");
    }

    #[test]
    fn a_removed_service_leaves_no_entry() {
        let mut dp = FakeDatapath::default();
        let mut p = ServiceProgrammer::adopt(&dp, 13).unwrap();
        p.program(&mut dp, &desired(&[("a", 1, &[1], true), ("b", 2, &[2], false)])).unwrap();
        p.program(&mut dp, &desired(&[("b", 2, &[2], false)])).unwrap();
        assert_eq!(dp.lb_frontends.len(), 1, "only b's frontend remains");
        assert!(dp.lb_maglev.is_empty(), "a's Maglev table is gone");
        assert_eq!(dp.lb_slots.len(), 1, "only b's slot remains");
        assert_eq!(dp.lb_backends.len(), 1, "only b's backend remains");
    }

    #[test]
    fn a_restarted_agent_adopts_what_the_maps_hold() {
        let mut dp = FakeDatapath::default();
        let d = desired(&[("a", 1, &[1, 2], false), ("b", 2, &[3], false)]);
        ServiceProgrammer::adopt(&dp, 13).unwrap().program(&mut dp, &d).unwrap();
        let ids = (live_backends(&dp, 1), live_backends(&dp, 2));
        let before = dp.writes;
        let mut restarted = ServiceProgrammer::adopt(&dp, 13).unwrap();
        let r = restarted.program(&mut dp, &d).unwrap();
        assert_eq!(r, ProgramReport::default(), "nothing changed, nothing written after a restart");
        assert_eq!(dp.writes, before);
        assert_eq!((live_backends(&dp, 1), live_backends(&dp, 2)), ids, "ids kept");
        assert_eq!(restarted.list().len(), 2, "both frontends listed");
    }
}
