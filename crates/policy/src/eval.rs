//! A reference evaluator that does what the datapath does with a [`Compiled`]: the ipcache
//! by longest prefix, then the policy entries of each local side by longest prefix on the
//! peer's identity and on IDENTITY_ANY, and when both miss, the entries by address on the
//! peer's ipBlock identity. Tests and `policy trace` use it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::output::{ClusterView, Compiled, DirectionTable, EndpointView, Entry, EntryKey, Mode, Verdict, IDENTITY_ANY, IDENTITY_WORLD};
use crate::ports::mask;

/// The other end of a connection as the datapath resolves its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIds {
    /// Its identity (the ipcache).
    pub identity: u32,
    /// The identity of the longest ipBlock prefix holding its address, if any.
    pub ip_block: Option<u32>,
}

/// An entry a lookup matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matched {
    pub key: EntryKey,
    pub entry: Entry,
    /// Found among the entries by address (its key's identity is the peer's ipBlock identity).
    pub by_address: bool,
}

/// The verdict of a table for traffic with `peer`, and the entries the lookups matched (the
/// peer identity's first, then IDENTITY_ANY's, then by address).
pub fn lookup(table: &DirectionTable, peer: PeerIds, proto: u8, port: u16) -> (Verdict, Vec<Matched>) {
    let miss = match table.mode {
        Mode::None => return (Verdict::Allow, Vec::new()),
        Mode::Enforce => Verdict::Deny,
        Mode::Audit => Verdict::Audit,
        Mode::DefaultAllow => Verdict::Allow,
    };
    let identities: &[u32] = if peer.identity == IDENTITY_ANY { &[IDENTITY_ANY] } else { &[peer.identity, IDENTITY_ANY] };
    let mut matched: Vec<Matched> = identities
        .iter()
        .filter_map(|id| longest_match(&table.entries, *id, proto, port))
        .map(|(key, entry)| Matched { key, entry, by_address: false })
        .collect();
    // As the datapath: the entries by address only when both lookups by identity miss.
    if matched.is_empty() && !table.by_address.is_empty() {
        if let Some((key, entry)) = peer.ip_block.and_then(|block| longest_match(&table.by_address, block, proto, port)) {
            matched.push(Matched { key, entry, by_address: true });
        }
    }
    let verdict = matched.iter().map(|m| m.entry.verdict).max().unwrap_or(miss);
    (verdict, matched)
}

/// The entry whose verdict a lookup took, as the datapath picks it: the first of the strongest
/// (the peer identity's before IDENTITY_ANY's). Its `proxy` says whether the traffic goes
/// through the node's layer-7 proxy.
pub fn deciding(matched: &[Matched]) -> Option<&Matched> {
    let strongest = matched.iter().map(|m| m.entry.verdict).max()?;
    matched.iter().find(|m| m.entry.verdict == strongest)
}

fn longest_match(entries: &BTreeMap<EntryKey, Entry>, identity: u32, proto: u8, port: u16) -> Option<(EntryKey, Entry)> {
    let specific = (0..=16u8).rev().map(|len| EntryKey { identity, proto: Some(proto), port: mask(port, len), port_prefix: len });
    let any_proto = EntryKey { identity, proto: None, port: 0, port_prefix: 0 };
    specific.chain(std::iter::once(any_proto)).find_map(|k| entries.get(&k).map(|e| (k, e.clone())))
}

/// The longest prefix of `prefixes` holding `ip`.
fn longest_prefix(prefixes: &BTreeMap<IpNet, u32>, ip: IpAddr) -> Option<(IpNet, u32)> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max).rev().filter_map(|len| IpNet::new(ip, len).ok()).find_map(|net| prefixes.get(&net.trunc()).map(|id| (net.trunc(), *id)))
}

/// The identity of an address: the longest ipcache prefix holding it, else world.
pub fn identity_of(compiled: &Compiled, ip: IpAddr) -> u32 {
    longest_prefix(&compiled.ipcache, ip).map_or(IDENTITY_WORLD, |(_, id)| id)
}

/// The longest ipBlock prefix holding an address, and its identity.
pub fn ip_block_of(compiled: &Compiled, ip: IpAddr) -> Option<(IpNet, u32)> {
    longest_prefix(&compiled.ipblocks, ip)
}

/// How the datapath resolves a peer's address.
pub fn peer_ids(compiled: &Compiled, ip: IpAddr) -> PeerIds {
    PeerIds { identity: identity_of(compiled, ip), ip_block: ip_block_of(compiled, ip).map(|(_, id)| id) }
}

/// The local endpoint owning `ip`, if any.
pub fn local_endpoint(view: &ClusterView, ip: IpAddr) -> Option<&EndpointView> {
    view.endpoints.iter().find(|e| e.local && e.ips.contains(&ip))
}

/// The verdict for a connection from `src` to `dst` port `dport`: the source's egress if it
/// is a local endpoint, then the destination's ingress if it is; the stronger verdict wins.
pub fn connection(compiled: &Compiled, view: &ClusterView, src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Verdict {
    let side = |ep: Option<&EndpointView>, peer: IpAddr, ingress: bool| {
        let policy = ep.and_then(|e| compiled.endpoints.get(&e.key))?;
        let table = if ingress { &policy.ingress } else { &policy.egress };
        Some(lookup(table, peer_ids(compiled, peer), proto, dport).0)
    };
    let egress = side(local_endpoint(view, src), dst, false);
    let ingress = side(local_endpoint(view, dst), src, true);
    egress.into_iter().chain(ingress).max().unwrap_or(Verdict::Allow)
}
