//! BPF_PROG_RUN tests of network policy in the datapath: lookup precedence (deny over allow,
//! an L4 entry over the L3 wildcard of its identity, port ranges by prefix), the identity of
//! an address through the ipcache (CIDRs and their exceptions), stateful replies through the
//! policy conntrack, established flows re-checked after a policy change, audit mode, SCTP and
//! ICMP types, and the lookup by address of Kubernetes ipBlocks (the `ipblocks` map, only for
//! endpoints flagged to use it, only when the lookups by identity miss). Packets are built here;
//! SCTP cannot be probed end to end on this kernel.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_abi::{policy_endpoint, policy_entry, policy_key, sluice_drop_reason as Reason, sluice_obs_point as Point};
use sluice_datapath::test_run::{run, TestRun};
use sluice_datapath::{BpfDatapath, DatapathTables, EndpointEntry, HostRouting, Mac, PolicyTables};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const A_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
const B_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
const NODE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0a]);
const A4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x11);
const A_ID: u32 = 257;
const B_ID: u32 = 258;
const A_EP: u32 = 1;
const B_EP: u32 = 2;

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

// === packets ===

/// An Ethernet frame carrying IPv4 or IPv6 (by the addresses) with `l4` as the payload of
/// protocol `proto`. Checksums are not needed: policy does not rewrite packets.
fn packet(src_mac: Mac, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&B_MAC.0);
    p.extend_from_slice(&src_mac.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            let len = (20 + l4.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(l4);
    p
}

fn tcp(src_mac: Mac, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4[12] = 0x50;
    l4[13] = flags;
    packet(src_mac, src, dst, TCP, &l4)
}

/// UDP or SCTP (both start with the two ports).
fn ports(src_mac: Mac, src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = vec![0u8; 12];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    packet(src_mac, src, dst, proto, &l4)
}

fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, icmp_type: u8) -> Vec<u8> {
    packet(A_MAC, src.into(), dst.into(), ICMP, &[icmp_type, 0, 0, 0, 0, 7, 0, 1])
}

// === harness ===

struct Lab {
    dp: BpfDatapath,
    /// After `dp`: the maps and programs are closed before the bpffs goes.
    _dir: sluice_datapath::testing::BpffsDir,
}

fn endpoint(id: u32, ifindex: u32, v4: Ipv4Addr, v6: Ipv6Addr, mac: Mac) -> EndpointEntry {
    EndpointEntry {
        endpoint_id: id,
        host_ifindex: ifindex,
        host_ifname: format!("lxc{id}"),
        identity: 256 + id,
        ipv4: Some(v4),
        ipv6: Some(v6),
        mac,
        node_mac: NODE_MAC,
    }
}

/// Pod A on the test skb's device (ifindex 1), pod B elsewhere; both in the ipcache.
fn lab() -> Lab {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a private netns for the test thread");
    let dir = sluice_datapath::testing::BpffsDir::new();
    let mut dp = BpfDatapath::load(dir.path(), HostRouting::Bpf).expect("datapath loads and passes the verifier");
    dp.upsert_endpoint(&endpoint(A_EP, 1, A4, A6, A_MAC)).expect("endpoint A");
    dp.upsert_endpoint(&endpoint(B_EP, 77, B4, B6, B_MAC)).expect("endpoint B");
    for (ip, id) in [(IpAddr::from(A4), A_ID), (A6.into(), A_ID), (B4.into(), B_ID), (B6.into(), B_ID)] {
        dp.upsert_ipcache(ipnet::IpNet::from(ip), id).expect("ipcache");
    }
    Lab { dp, _dir: dir }
}

const INGRESS: u8 = sluice_abi::SLUICE_POLICY_INGRESS as u8;
const EGRESS: u8 = sluice_abi::SLUICE_POLICY_EGRESS as u8;
const ALLOW: u8 = sluice_abi::SLUICE_POLICY_ALLOW as u8;
const AUDIT: u8 = sluice_abi::SLUICE_POLICY_AUDIT as u8;
const DENY: u8 = sluice_abi::SLUICE_POLICY_DENY as u8;
const ENFORCE: u8 = sluice_abi::SLUICE_POLICY_MODE_ENFORCE as u8;
const AUDIT_MODE: u8 = sluice_abi::SLUICE_POLICY_MODE_AUDIT as u8;
const NONE: u8 = sluice_abi::SLUICE_POLICY_MODE_NONE as u8;

fn set_modes(lab: &mut Lab, ep: u32, ingress: u8, egress: u8) {
    set_modes_and_flags(lab, ep, ingress, egress, 0);
}

fn set_modes_and_flags(lab: &mut Lab, ep: u32, ingress: u8, egress: u8, flags: u32) {
    let value = policy_endpoint { ingress_mode: ingress, egress_mode: egress, revision: 0, flags: flags as u8 };
    lab.dp.upsert_policy_endpoint(ep, &value).expect("policy endpoint");
}

/// An entry: `proto` None = every protocol; `port`/`bits` the port prefix.
#[allow(clippy::too_many_arguments)] // one entry's fields, spelled out at each call
fn entry(lab: &mut Lab, ep: u32, dir: u8, identity: u32, proto: Option<u8>, port: u16, bits: u8, verdict: u8, rule: u32) {
    let fixed = sluice_abi::SLUICE_POLICY_FIXED_BITS;
    let prefixlen = match proto {
        None => fixed,
        Some(_) => fixed + 8 + u32::from(bits),
    };
    let key = policy_key {
        prefixlen,
        endpoint_id: ep,
        identity,
        direction: dir,
        revision: 0,
        pad: 0,
        proto: proto.unwrap_or(0),
        port: port.to_be(),
        pad2: [0; 2],
    };
    lab.dp.upsert_policy_entry(&key, &policy_entry { verdict, pad: 0, proxy_port: 0, rule }).expect("policy entry");
}

/// The aligned prefixes covering first..=last: (start, bits).
fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(first), u32::from(last));
    while lo <= hi {
        let mut size = 1u32;
        while lo % (size * 2) == 0 && lo + size * 2 - 1 <= hi && size < 65536 {
            size *= 2;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

fn from_pod(lab: &Lab, packet: &[u8]) -> TestRun {
    run(lab.dp.from_pod_program().expect("program"), packet).expect("BPF_PROG_TEST_RUN")
}

fn to_pod(lab: &Lab, packet: &[u8]) -> TestRun {
    run(lab.dp.to_pod_program().expect("program"), packet).expect("BPF_PROG_TEST_RUN")
}

fn from_netdev(lab: &Lab, mut packet: Vec<u8>) -> TestRun {
    packet[0..6].copy_from_slice(&[0; 6]); // addressed to the (loopback) device: PACKET_HOST
    run(lab.dp.from_netdev_program().expect("program"), &packet).expect("BPF_PROG_TEST_RUN")
}

fn drops(lab: &Lab, point: Point, reason: Reason) -> u64 {
    let index = point as usize * Reason::SLUICE_DROP_REASON_MAX as usize + reason as usize;
    lab.dp.drop_counters().expect("drop counters")[index].packets
}

macro_rules! privileged {
    () => {
        if !sluice_datapath::testing::require_root(module_path!()) {
            return;
        }
    };
}

// === cases ===

#[test]
fn ingress_lets_in_only_the_allowed_identity_and_port_v4_and_v6() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 80, 16, ALLOW, 1);
    for (a, b) in [(IpAddr::from(A4), IpAddr::from(B4)), (A6.into(), B6.into())] {
        assert_eq!(from_pod(&lab, &tcp(A_MAC, a, b, 40000, 80, SYN)).verdict, TC_ACT_REDIRECT, "A -> B tcp/80 is allowed ({a})");
        let before = drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_POLICY_INGRESS);
        assert_eq!(from_pod(&lab, &tcp(A_MAC, a, b, 40000, 81, SYN)).verdict, TC_ACT_SHOT, "tcp/81 has no entry ({a})");
        assert_eq!(from_pod(&lab, &ports(A_MAC, a, b, UDP, 40000, 80)).verdict, TC_ACT_SHOT, "udp/80 has no entry ({a})");
        let after = drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_POLICY_INGRESS);
        assert_eq!(after - before, 2, "both denials counted as policy denied ingress");
    }
}

#[test]
fn deny_wins_over_allow_between_identity_and_wildcard_entries() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    entry(&mut lab, B_EP, INGRESS, sluice_abi::SLUICE_IDENTITY_ANY, None, 0, 0, ALLOW, 1); // allow everyone
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 80, 16, DENY, 2); // but deny A on tcp/80
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 40000, 80, SYN)).verdict,
        TC_ACT_SHOT,
        "the deny of A's identity wins over the wildcard allow"
    );
    assert_eq!(from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 40000, 81, SYN)).verdict, TC_ACT_REDIRECT, "other ports stay allowed");
    // And the other way round: an allow for A's identity does not beat a wildcard deny.
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 81, 16, ALLOW, 3);
    entry(&mut lab, B_EP, INGRESS, sluice_abi::SLUICE_IDENTITY_ANY, Some(TCP), 81, 16, DENY, 4);
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 40000, 81, SYN)).verdict,
        TC_ACT_SHOT,
        "a wildcard deny wins over an identity allow"
    );
}

#[test]
fn an_l4_entry_is_chosen_over_the_l3_wildcard_of_its_identity() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    entry(&mut lab, B_EP, INGRESS, A_ID, None, 0, 0, ALLOW, 1); // A: everything
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 0, 0, DENY, 2); // except all of tcp
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 443, 16, ALLOW, 3); // but tcp/443
    assert_eq!(from_pod(&lab, &ports(A_MAC, A4.into(), B4.into(), UDP, 1, 53)).verdict, TC_ACT_REDIRECT, "udp falls to the L3 entry");
    assert_eq!(from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 1, 80, SYN)).verdict, TC_ACT_SHOT, "tcp falls to the protocol entry");
    assert_eq!(from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 1, 443, SYN)).verdict, TC_ACT_REDIRECT, "tcp/443 has the longest match");
}

#[test]
fn port_ranges_match_by_prefix() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    let prefixes = port_prefixes(1000, 2000);
    assert!(prefixes.len() > 1, "1000-2000 is not one prefix: {prefixes:?}");
    for (i, (port, bits)) in prefixes.iter().enumerate() {
        entry(&mut lab, B_EP, INGRESS, A_ID, Some(UDP), *port, *bits, ALLOW, i as u32 + 1);
    }
    for (port, want) in [
        (999, TC_ACT_SHOT),
        (1000, TC_ACT_REDIRECT),
        (1023, TC_ACT_REDIRECT),
        (1500, TC_ACT_REDIRECT),
        (2000, TC_ACT_REDIRECT),
        (2001, TC_ACT_SHOT),
        (3000, TC_ACT_SHOT),
    ] {
        let out = from_pod(&lab, &ports(A_MAC, A4.into(), B4.into(), UDP, 5353, port));
        assert_eq!(out.verdict, want, "udp/{port} against the range 1000-2000");
    }
}

#[test]
fn egress_is_checked_at_the_sender_and_replies_pass_by_conntrack() {
    privileged!();
    let mut lab = lab();
    // A may not send anything.
    set_modes(&mut lab, A_EP, NONE, ENFORCE);
    let syn = tcp(A_MAC, A4.into(), B4.into(), 41000, 80, SYN);
    let before = drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_POLICY_EGRESS);
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_SHOT, "egress deny by default");
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_POLICY_EGRESS) - before, 1);

    // Allowed: the connection is tracked; A's ingress (to_pod) lets the reply in though it
    // allows nothing itself, and nothing else.
    entry(&mut lab, A_EP, EGRESS, B_ID, Some(TCP), 80, 16, ALLOW, 1);
    set_modes(&mut lab, A_EP, ENFORCE, ENFORCE);
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_REDIRECT, "A -> B tcp/80 allowed at egress");
    let reply = tcp(B_MAC, B4.into(), A4.into(), 80, 41000, SYN_ACK);
    assert_eq!(to_pod(&lab, &reply).verdict, TC_ACT_OK, "the reply reaches A through the conntrack");
    let unsolicited = tcp(B_MAC, B4.into(), A4.into(), 80, 41001, SYN);
    assert_eq!(to_pod(&lab, &unsolicited).verdict, TC_ACT_SHOT, "a new connection to A is not a reply");
    assert!(drops(&lab, Point::SLUICE_POINT_TO_POD, Reason::SLUICE_DROP_POLICY_INGRESS) >= 1, "counted at to-pod");

    // The policy changes: the established connection's next packet is refused.
    lab.dp
        .remove_policy_entry(&policy_key {
            prefixlen: sluice_abi::SLUICE_POLICY_FULL_BITS,
            endpoint_id: A_EP,
            identity: B_ID,
            direction: EGRESS,
            revision: 0,
            pad: 0,
            proto: TCP,
            port: 80u16.to_be(),
            pad2: [0; 2],
        })
        .expect("remove entry");
    let ack = tcp(A_MAC, A4.into(), B4.into(), 41000, 80, ACK);
    assert_eq!(from_pod(&lab, &ack).verdict, TC_ACT_SHOT, "an established connection the new policy denies stops");
}

#[test]
fn replies_of_accepted_connections_leave_an_egress_denied_pod() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, A_EP, ENFORCE, ENFORCE);
    entry(&mut lab, A_EP, INGRESS, B_ID, Some(TCP), 8080, 16, ALLOW, 1);
    assert_eq!(to_pod(&lab, &tcp(B_MAC, B4.into(), A4.into(), 42000, 8080, SYN)).verdict, TC_ACT_OK, "B -> A tcp/8080 allowed");
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 8080, 42000, SYN_ACK)).verdict,
        TC_ACT_REDIRECT,
        "A's reply leaves by the conntrack"
    );
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 8080, 42000, SYN)).verdict,
        TC_ACT_SHOT,
        "a bare SYN on the tuple is a new connection, not a reply"
    );
}

/// Every event waiting: (type, code, policy rule, peer identity).
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<(u8, u8, u32, u32)> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        assert!(bytes.len() >= std::mem::size_of::<sluice_abi::datapath_event>());
        // SAFETY: the ring holds datapath_event records; the length was checked.
        let ev: sluice_abi::datapath_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        out.push((ev.type_, ev.code, ev.policy_rule, ev.peer_identity));
    }
    out
}

#[test]
fn audit_mode_reports_what_enforce_mode_drops() {
    privileged!();
    let mut lab = lab();
    let mut ring = lab.dp.take_events().expect("events ring");
    drain(&mut ring);
    let syn = tcp(B_MAC, B4.into(), A4.into(), 43000, 80, SYN);
    set_modes(&mut lab, A_EP, AUDIT_MODE, NONE);
    assert_eq!(to_pod(&lab, &syn).verdict, TC_ACT_OK, "audit lets it through");
    let audit = sluice_abi::sluice_event_type::SLUICE_EVENT_POLICY_AUDIT as u8;
    let events = drain(&mut ring);
    assert!(events.contains(&(audit, Reason::SLUICE_DROP_POLICY_INGRESS as u8, 0, B_ID)), "an audit event names the peer: {events:?}");

    // An audit entry (an audit-mode deny rule) in an enforced endpoint: reported, not dropped.
    set_modes(&mut lab, A_EP, ENFORCE, NONE);
    entry(&mut lab, A_EP, INGRESS, B_ID, Some(TCP), 80, 16, AUDIT, 7);
    assert_eq!(to_pod(&lab, &tcp(B_MAC, B4.into(), A4.into(), 43001, 80, SYN)).verdict, TC_ACT_OK);
    assert!(
        drain(&mut ring).contains(&(audit, Reason::SLUICE_DROP_POLICY_INGRESS as u8, 7, B_ID)),
        "the audit event names the entry's rule"
    );

    // Enforced without an entry: dropped, and the drop event names the peer.
    assert_eq!(to_pod(&lab, &tcp(B_MAC, B4.into(), A4.into(), 43002, 81, SYN)).verdict, TC_ACT_SHOT);
    let drop = sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8;
    assert!(drain(&mut ring).contains(&(drop, Reason::SLUICE_DROP_POLICY_INGRESS as u8, 0, B_ID)), "default deny: rule 0, peer named");
}

#[test]
fn cidr_identities_and_their_exceptions_come_from_the_ipcache() {
    privileged!();
    let mut lab = lab();
    let (cidr_id, except_id) = (16_777_216 + 1, 16_777_216 + 2);
    lab.dp.upsert_ipcache("203.0.113.0/24".parse().unwrap(), cidr_id).unwrap();
    lab.dp.upsert_ipcache("203.0.113.128/25".parse().unwrap(), except_id).unwrap();
    lab.dp.upsert_ipcache("2001:db8::/64".parse().unwrap(), cidr_id).unwrap();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    entry(&mut lab, B_EP, INGRESS, cidr_id, Some(TCP), 80, 16, ALLOW, 1);
    let from = |src: IpAddr, dst: IpAddr| tcp(Mac([2, 9, 9, 9, 9, 9]), src, dst, 44000, 80, SYN);
    let inside: IpAddr = "203.0.113.5".parse().unwrap();
    let excepted: IpAddr = "203.0.113.200".parse().unwrap();
    let world: IpAddr = "192.0.2.1".parse().unwrap();
    assert_eq!(from_netdev(&lab, from(inside, B4.into())).verdict, TC_ACT_REDIRECT, "inside the CIDR");
    assert_eq!(from_netdev(&lab, from(excepted, B4.into())).verdict, TC_ACT_SHOT, "in the exception: its own identity");
    assert_eq!(from_netdev(&lab, from(world, B4.into())).verdict, TC_ACT_SHOT, "under no prefix: world");
    assert_eq!(from_netdev(&lab, from("2001:db8::7".parse().unwrap(), B6.into())).verdict, TC_ACT_REDIRECT, "IPv6 CIDR");
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_NETDEV, Reason::SLUICE_DROP_POLICY_INGRESS), 2);
    entry(&mut lab, B_EP, INGRESS, sluice_abi::SLUICE_IDENTITY_WORLD, Some(TCP), 80, 16, ALLOW, 2);
    assert_eq!(from_netdev(&lab, from(world, B4.into())).verdict, TC_ACT_REDIRECT, "world allowed");
}

#[test]
fn sctp_ports_and_icmp_types_are_matched() {
    privileged!();
    let mut lab = lab();
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(SCTP), 5000, 16, ALLOW, 1);
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(ICMP), 8, 16, ALLOW, 2);
    assert_eq!(from_pod(&lab, &ports(A_MAC, A4.into(), B4.into(), SCTP, 7, 5000)).verdict, TC_ACT_REDIRECT, "sctp/5000");
    assert_eq!(from_pod(&lab, &ports(A_MAC, A4.into(), B4.into(), SCTP, 7, 5001)).verdict, TC_ACT_SHOT, "sctp/5001");
    assert_eq!(from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 7, 5000, SYN)).verdict, TC_ACT_SHOT, "tcp/5000 is another protocol");
    assert_eq!(from_pod(&lab, &icmp4(A4, B4, 8)).verdict, TC_ACT_REDIRECT, "echo request (type 8)");
    assert_eq!(from_pod(&lab, &icmp4(A4, B4, 13)).verdict, TC_ACT_SHOT, "timestamp (type 13)");
}

#[test]
fn the_entries_of_the_current_revision_are_the_ones_read() {
    privileged!();
    let mut lab = lab();
    // Revision 1 is written in full while the endpoint still reads revision 0 (deny all).
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    let key = policy_key {
        prefixlen: sluice_abi::SLUICE_POLICY_FIXED_BITS + 8 + 16,
        endpoint_id: B_EP,
        identity: A_ID,
        direction: INGRESS,
        revision: 1,
        pad: 0,
        proto: TCP,
        port: 80u16.to_be(),
        pad2: [0; 2],
    };
    lab.dp.upsert_policy_entry(&key, &policy_entry { verdict: ALLOW, pad: 0, proxy_port: 0, rule: 1 }).unwrap();
    let syn = tcp(A_MAC, A4.into(), B4.into(), 45000, 80, SYN);
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_SHOT, "revision 1 is not visible yet");
    lab.dp.upsert_policy_endpoint(B_EP, &policy_endpoint { ingress_mode: ENFORCE, egress_mode: NONE, revision: 1, flags: 0 }).unwrap();
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_REDIRECT, "the flip makes revision 1 whole at once");
}

// === entries by address (Kubernetes ipBlocks) ===

const BY_ADDRESS: u8 = sluice_abi::SLUICE_POLICY_BY_ADDRESS as u8;
const F_INGRESS: u32 = sluice_abi::SLUICE_POLICY_F_INGRESS_BY_ADDRESS;
const F_EGRESS: u32 = sluice_abi::SLUICE_POLICY_F_EGRESS_BY_ADDRESS;
/// Identities of ipBlock prefixes, as the agent numbers CIDRs.
const POD_BLOCK: u32 = 16_777_216 + 10;
const A_ONLY: u32 = 16_777_216 + 11;
const B_ONLY: u32 = 16_777_216 + 12;
const NODE_BLOCK: u32 = 16_777_216 + 13;

/// ipBlock prefixes: both pods' /24 and /64, and the nodes' /24. Host prefixes of one pod
/// (`A_ONLY`, `B_ONLY`) are added where a case needs them.
fn blocks(lab: &mut Lab) {
    for (prefix, id) in [("198.19.0.0/24", POD_BLOCK), ("2001:2::/64", POD_BLOCK), ("198.18.0.0/24", NODE_BLOCK)] {
        lab.dp.upsert_ipblock(prefix.parse().unwrap(), id).expect("ipblocks");
    }
}

#[test]
fn ingress_by_address_matches_a_pod_in_the_block_only_for_a_flagged_endpoint() {
    privileged!();
    let mut lab = lab();
    blocks(&mut lab);
    // B allows, by address, the pods' /24 and /64 on tcp/80.
    entry(&mut lab, B_EP, INGRESS | BY_ADDRESS, POD_BLOCK, Some(TCP), 80, 16, ALLOW, 1);
    set_modes(&mut lab, B_EP, ENFORCE, NONE);
    let syn = |port| tcp(A_MAC, A4.into(), B4.into(), 46000, port, SYN);
    assert_eq!(from_pod(&lab, &syn(80)).verdict, TC_ACT_SHOT, "without the flag the entries by address are not read");

    set_modes_and_flags(&mut lab, B_EP, ENFORCE, NONE, F_INGRESS);
    assert_eq!(from_pod(&lab, &syn(80)).verdict, TC_ACT_REDIRECT, "A's address is in the block: allowed");
    assert_eq!(from_pod(&lab, &syn(81)).verdict, TC_ACT_SHOT, "tcp/81 has no entry by address either");
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A6.into(), B6.into(), 46000, 80, SYN)).verdict,
        TC_ACT_REDIRECT,
        "the IPv6 block holds A's IPv6 address"
    );
    // The longest prefix decides: A's /32 with an identity of its own that no entry names (an
    // except) takes A out of the block.
    lab.dp.upsert_ipblock("198.19.0.10/32".parse().unwrap(), A_ONLY).unwrap();
    assert_eq!(from_pod(&lab, &syn(80)).verdict, TC_ACT_SHOT, "A's own /32 (an except) takes it out of the block");
    lab.dp.remove_ipblock("198.19.0.10/32".parse().unwrap()).unwrap();
    assert_eq!(from_pod(&lab, &syn(80)).verdict, TC_ACT_REDIRECT, "without the except A is in the block again");

    // Ingress matches the source's address: a block holding only the destination says
    // nothing of A.
    lab.dp.remove_ipblock("198.19.0.0/24".parse().unwrap()).unwrap();
    lab.dp.upsert_ipblock("198.19.0.11/32".parse().unwrap(), B_ONLY).unwrap();
    entry(&mut lab, B_EP, INGRESS | BY_ADDRESS, B_ONLY, Some(TCP), 80, 16, ALLOW, 2);
    assert_eq!(from_pod(&lab, &syn(80)).verdict, TC_ACT_SHOT, "the block of the destination's address does not let A in");
}
#[test]
fn a_match_by_identity_decides_before_the_lookup_by_address() {
    privileged!();
    let mut lab = lab();
    blocks(&mut lab);
    entry(&mut lab, B_EP, INGRESS | BY_ADDRESS, POD_BLOCK, None, 0, 0, ALLOW, 1);
    set_modes_and_flags(&mut lab, B_EP, ENFORCE, NONE, F_INGRESS);
    entry(&mut lab, B_EP, INGRESS, A_ID, Some(TCP), 80, 16, DENY, 2);
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 47000, 80, SYN)).verdict,
        TC_ACT_SHOT,
        "a deny of A's identity wins over the allow by address"
    );
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 47000, 81, SYN)).verdict,
        TC_ACT_REDIRECT,
        "on other ports the identity lookups miss and the address allows"
    );
}

#[test]
fn egress_by_address_matches_the_destination() {
    privileged!();
    let mut lab = lab();
    blocks(&mut lab);
    let syn = tcp(A_MAC, A4.into(), B4.into(), 48000, 80, SYN);
    // A's egress allows, by address, its own /32 only: the destination (B) is not in it.
    lab.dp.upsert_ipblock("198.19.0.10/32".parse().unwrap(), A_ONLY).unwrap();
    lab.dp.upsert_ipblock("198.19.0.11/32".parse().unwrap(), B_ONLY).unwrap();
    entry(&mut lab, A_EP, EGRESS | BY_ADDRESS, A_ONLY, Some(TCP), 80, 16, ALLOW, 1);
    set_modes_and_flags(&mut lab, A_EP, NONE, ENFORCE, F_EGRESS);
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_SHOT, "egress matches the destination's address, not the source's");
    entry(&mut lab, A_EP, EGRESS | BY_ADDRESS, B_ONLY, Some(TCP), 80, 16, ALLOW, 2);
    assert_eq!(from_pod(&lab, &syn).verdict, TC_ACT_REDIRECT, "B's /32 is allowed by address");
    // The ingress flag does not open egress.
    set_modes_and_flags(&mut lab, A_EP, NONE, ENFORCE, F_INGRESS);
    assert_eq!(
        from_pod(&lab, &tcp(A_MAC, A4.into(), B4.into(), 48001, 80, SYN)).verdict,
        TC_ACT_SHOT,
        "the ingress flag leaves egress to the lookups by identity"
    );
}

#[test]
fn ingress_by_address_matches_a_node_through_to_pod_and_from_netdev() {
    privileged!();
    let mut lab = lab();
    blocks(&mut lab);
    let node: IpAddr = "198.18.0.1".parse().unwrap();
    lab.dp.upsert_ipcache("198.18.0.1/32".parse().unwrap(), 1).unwrap(); // host
    entry(&mut lab, A_EP, INGRESS | BY_ADDRESS, NODE_BLOCK, Some(TCP), 80, 16, ALLOW, 1);
    set_modes_and_flags(&mut lab, A_EP, ENFORCE, NONE, F_INGRESS);
    let from_node = |port| tcp(NODE_MAC, node, A4.into(), 49000, port, SYN);
    assert_eq!(to_pod(&lab, &from_node(80)).verdict, TC_ACT_OK, "the node's address (identity host) is in the block");
    assert_eq!(to_pod(&lab, &from_node(81)).verdict, TC_ACT_SHOT, "not on tcp/81");
    let remote: IpAddr = "198.18.0.2".parse().unwrap();
    lab.dp.upsert_ipcache("198.18.0.2/32".parse().unwrap(), 6).unwrap(); // remote-node
    let from_remote = tcp(Mac([2, 9, 9, 9, 9, 9]), remote, A4.into(), 49001, 80, SYN);
    assert_eq!(from_netdev(&lab, from_remote).verdict, TC_ACT_REDIRECT, "another node's address (remote-node) is in the block");
    let outside = tcp(Mac([2, 9, 9, 9, 9, 9]), "192.0.2.1".parse().unwrap(), A4.into(), 49002, 80, SYN);
    assert_eq!(from_netdev(&lab, outside).verdict, TC_ACT_SHOT, "an address under no ipBlock prefix is denied");
}
