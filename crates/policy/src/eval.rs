//! A reference evaluator that does what the datapath does with a [`Compiled`]: the ipcache
//! by longest prefix, then the policy entries of each local side by longest prefix on the
//! peer's identity and on IDENTITY_ANY. Tests and `policy trace` use it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::output::{ClusterView, Compiled, DirectionTable, EndpointView, Entry, EntryKey, Mode, Verdict, IDENTITY_ANY, IDENTITY_WORLD};
use crate::ports::mask;

/// The verdict of a table for traffic with a peer of `peer_identity`, and the entries the
/// two lookups matched (the peer's first).
pub fn lookup(table: &DirectionTable, peer_identity: u32, proto: u8, port: u16) -> (Verdict, Vec<(EntryKey, Entry)>) {
    let miss = match table.mode {
        Mode::None => return (Verdict::Allow, Vec::new()),
        Mode::Enforce => Verdict::Deny,
        Mode::Audit => Verdict::Audit,
        Mode::DefaultAllow => Verdict::Allow,
    };
    let identities: &[u32] = if peer_identity == IDENTITY_ANY { &[IDENTITY_ANY] } else { &[peer_identity, IDENTITY_ANY] };
    let matched: Vec<(EntryKey, Entry)> = identities.iter().filter_map(|id| longest_match(table, *id, proto, port)).collect();
    let verdict = matched.iter().map(|(_, e)| e.verdict).max().unwrap_or(miss);
    (verdict, matched)
}

fn longest_match(table: &DirectionTable, identity: u32, proto: u8, port: u16) -> Option<(EntryKey, Entry)> {
    let specific = (0..=16u8).rev().map(|len| EntryKey { identity, proto: Some(proto), port: mask(port, len), port_prefix: len });
    let any_proto = EntryKey { identity, proto: None, port: 0, port_prefix: 0 };
    specific.chain(std::iter::once(any_proto)).find_map(|k| table.entries.get(&k).map(|e| (k, e.clone())))
}

/// The identity of an address: the longest ipcache prefix holding it, else world.
pub fn identity_of(compiled: &Compiled, ip: IpAddr) -> u32 {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max)
        .rev()
        .filter_map(|len| IpNet::new(ip, len).ok())
        .find_map(|net| compiled.ipcache.get(&net.trunc()).copied())
        .unwrap_or(IDENTITY_WORLD)
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
        Some(lookup(table, identity_of(compiled, peer), proto, dport).0)
    };
    let egress = side(local_endpoint(view, src), dst, false);
    let ingress = side(local_endpoint(view, dst), src, true);
    egress.into_iter().chain(ingress).max().unwrap_or(Verdict::Allow)
}
