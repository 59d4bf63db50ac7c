//! BPF_PROG_RUN tests of the from-pod program: a packet in, the verdict and the packet out.
//! Each case runs the real entry point against real (pinned, private) maps, on a thread in a
//! fresh network namespace so that the FIB lookups see no routes.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::net::{Ipv4Addr, Ipv6Addr};

use sluice_abi::{sluice_drop_reason as Reason, sluice_forward_kind as Fwd};
use sluice_datapath::test_run::{run, TestRun};
use sluice_datapath::{BpfDatapath, DatapathTables, EndpointEntry, HostRouting, Mac};
// aya is a dependency of the datapath crate; its ring buffer type is what take_events returns.

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_A_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
const POD_B_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
const NODE_A_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0a]);
const NODE_B_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0b]);
const A4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x11);
const B_IFINDEX: u32 = 77;

// === packets ===

fn eth(dst: Mac, src: Mac, proto: u16) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst.0);
    p.extend_from_slice(&src.0);
    p.extend_from_slice(&proto.to_be_bytes());
    p
}

fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp4(src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = eth(NODE_A_MAC, src_mac, 0x0800);
    let payload = b"sluice";
    let total = 20 + 8 + payload.len();
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, (8 + payload.len()) as u8, 0, 0]);
    p.extend_from_slice(payload);
    p
}

fn udp6(src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut p = eth(NODE_A_MAC, src_mac, 0x86dd);
    let payload = b"sluice";
    let len = 8 + payload.len();
    p.extend_from_slice(&[0x60, 0, 0, 0, 0, len as u8, 17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, len as u8, 0, 0]);
    p.extend_from_slice(payload);
    p
}

fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = eth(Mac([0xff; 6]), sender_mac, 0x0806);
    p.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&sender_mac.0);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    p
}

fn neighbour_solicit(src_mac: Mac, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut p = eth(Mac([0x33, 0x33, 0xff, 0, 0, 1]), src_mac, 0x86dd);
    let dst: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    p.extend_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac.0);
    let c = icmp6_checksum(&src, &dst, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

fn icmp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, body: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(body);
    csum(&pseudo, 0)
}

// === harness ===

struct Lab {
    dp: BpfDatapath,
    /// After `dp`: the maps and programs are closed before the bpffs goes.
    _dir: sluice_datapath::testing::BpffsDir,
}

fn endpoint(id: u32, ifindex: u32, v4: Ipv4Addr, v6: Ipv6Addr, mac: Mac, node_mac: Mac) -> EndpointEntry {
    EndpointEntry {
        endpoint_id: id,
        host_ifindex: ifindex,
        host_ifname: format!("lxc{id}"),
        identity: 256 + id,
        ipv4: Some(v4),
        ipv6: Some(v6),
        mac,
        node_mac,
    }
}

/// Loads the datapath in `mode` with pods A (on the test skb's device, ifindex 1) and B.
fn lab(mode: HostRouting) -> Lab {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a private netns for the test thread");
    let dir = sluice_datapath::testing::BpffsDir::new();
    let mut dp = BpfDatapath::load(dir.path(), mode).expect("datapath loads and passes the verifier");
    dp.upsert_endpoint(&endpoint(1, 1, A4, A6, POD_A_MAC, NODE_A_MAC)).expect("endpoint A");
    dp.upsert_endpoint(&endpoint(2, B_IFINDEX, B4, B6, POD_B_MAC, NODE_B_MAC)).expect("endpoint B");
    Lab { dp, _dir: dir }
}

fn from_pod(lab: &Lab, packet: &[u8]) -> TestRun {
    run(lab.dp.from_pod_program().expect("program"), packet).expect("BPF_PROG_TEST_RUN")
}

fn drops(lab: &Lab, reason: Reason) -> u64 {
    lab.dp.drop_counters().expect("drop counters")[reason as usize].packets
}

fn forwards(lab: &Lab, kind: Fwd) -> u64 {
    lab.dp.forward_counters().expect("forward counters")[kind as usize].packets
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
fn ipv4_to_local_pod_is_redirected_to_its_peer_with_l2_rewritten() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &udp4(POD_A_MAC, A4, B4));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "a packet for pod B must be redirected");
    assert_eq!(&out.packet[0..6], &POD_B_MAC.0, "destination MAC must be pod B's");
    assert_eq!(&out.packet[6..12], &NODE_B_MAC.0, "source MAC must be B's gateway");
    assert_eq!(out.packet[14 + 8], 63, "TTL must be decremented");
    assert_eq!(csum(&out.packet[14..34], 0), 0, "IPv4 header checksum must still verify");
    assert_eq!(forwards(&lab, Fwd::SLUICE_FWD_LOCAL_ENDPOINT), 1);
}

#[test]
fn ipv6_to_local_pod_is_redirected_to_its_peer() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &udp6(POD_A_MAC, A6, B6));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "a packet for pod B must be redirected");
    assert_eq!(&out.packet[0..6], &POD_B_MAC.0);
    assert_eq!(out.packet[14 + 7], 63, "hop limit must be decremented");
}

#[test]
fn spoofed_source_ip_is_dropped_and_counted_v4_and_v6() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &udp4(POD_A_MAC, Ipv4Addr::new(198, 19, 0, 99), B4));
    assert_eq!(out.verdict, TC_ACT_SHOT, "IPv4 with a foreign source must be dropped");
    let out = from_pod(&lab, &udp6(POD_A_MAC, "2001:2::99".parse().unwrap(), B6));
    assert_eq!(out.verdict, TC_ACT_SHOT, "IPv6 with a foreign source must be dropped");
    assert_eq!(drops(&lab, Reason::SLUICE_DROP_INVALID_SOURCE_IP), 2, "both drops counted as invalid source IP");
}

#[test]
fn spoofed_source_mac_is_dropped_and_counted() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &udp4(POD_B_MAC, A4, B4));
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert_eq!(drops(&lab, Reason::SLUICE_DROP_INVALID_SOURCE_MAC), 1);
}

#[test]
fn spoofed_arp_sender_is_dropped() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &arp_request(POD_A_MAC, B4, Ipv4Addr::new(169, 254, 1, 1)));
    assert_eq!(out.verdict, TC_ACT_SHOT, "an ARP claiming pod B's address must be dropped");
    assert_eq!(drops(&lab, Reason::SLUICE_DROP_ARP_SPOOFED), 1);
}

#[test]
fn unknown_destination_goes_to_the_stack_v4_and_v6() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &udp4(POD_A_MAC, A4, Ipv4Addr::new(198, 18, 0, 200)));
    assert_eq!(out.verdict, TC_ACT_OK, "no FIB route: IPv4 must go to the stack");
    let out = from_pod(&lab, &udp6(POD_A_MAC, A6, "2001:2:0:ff::200".parse().unwrap()));
    assert_eq!(out.verdict, TC_ACT_OK, "no FIB route: IPv6 must go to the stack");
    assert_eq!(forwards(&lab, Fwd::SLUICE_FWD_STACK), 2);
}

#[test]
fn legacy_mode_hands_local_traffic_to_the_stack_but_still_checks_sources() {
    privileged!();
    let lab = lab(HostRouting::Legacy);
    assert_eq!(from_pod(&lab, &udp4(POD_A_MAC, A4, B4)).verdict, TC_ACT_OK, "legacy: IPv4 to the stack");
    assert_eq!(from_pod(&lab, &udp6(POD_A_MAC, A6, B6)).verdict, TC_ACT_OK, "legacy: IPv6 to the stack");
    let spoofed = udp4(POD_A_MAC, Ipv4Addr::new(198, 19, 0, 99), B4);
    assert_eq!(from_pod(&lab, &spoofed).verdict, TC_ACT_SHOT, "legacy: spoofing still dropped");
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_node_mac() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_pod(&lab, &arp_request(POD_A_MAC, A4, Ipv4Addr::new(169, 254, 1, 1)));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "the reply goes back out of the pod interface");
    let p = &out.packet;
    assert_eq!(&p[0..6], &POD_A_MAC.0, "reply addressed to the pod");
    assert_eq!(&p[20..22], &[0, 2], "ARP op must be reply");
    assert_eq!(&p[22..28], &NODE_A_MAC.0, "sender MAC must be the gateway's");
    assert_eq!(&p[28..32], &[169, 254, 1, 1], "sender IP must be the gateway");
    assert_eq!(&p[32..38], &POD_A_MAC.0, "target MAC must be the pod's");
    assert_eq!(&p[38..42], &A4.octets(), "target IP must be the pod's");
}

#[test]
fn neighbour_solicitation_for_the_gateway_is_answered() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let pod_ll: Ipv6Addr = "fe80::a".parse().unwrap();
    let gw: Ipv6Addr = "fe80::1".parse().unwrap();
    let out = from_pod(&lab, &neighbour_solicit(POD_A_MAC, pod_ll, gw));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "the advertisement goes back out of the pod interface");
    let p = &out.packet;
    assert_eq!(p.len(), 86, "Ethernet + IPv6 + NA with target link-layer option");
    assert_eq!(&p[0..6], &POD_A_MAC.0);
    assert_eq!(&p[6..12], &NODE_A_MAC.0);
    assert_eq!(&p[22..38], &gw.octets(), "source is the gateway");
    assert_eq!(&p[38..54], &pod_ll.octets(), "destination is the soliciting address");
    assert_eq!(p[54], 136, "ICMPv6 type must be neighbour advertisement");
    assert_eq!(p[58] & 0xe0, 0xe0, "router, solicited and override flags");
    assert_eq!(&p[62..78], &gw.octets(), "target is the gateway");
    assert_eq!(&p[78..80], &[2, 1], "target link-layer address option");
    assert_eq!(&p[80..86], &NODE_A_MAC.0);
    assert_eq!(icmp6_checksum(&gw, &pod_ll, &p[54..86]), 0, "ICMPv6 checksum must verify");
    assert_eq!(forwards(&lab, Fwd::SLUICE_FWD_ND_REPLY), 1);
}

#[test]
fn packet_on_an_unknown_interface_is_dropped() {
    privileged!();
    let mut lab = lab(HostRouting::Bpf);
    lab.dp.remove_ifindex(1).expect("remove A's interface entry");
    assert_eq!(from_pod(&lab, &udp4(POD_A_MAC, A4, B4)).verdict, TC_ACT_SHOT);
    assert_eq!(drops(&lab, Reason::SLUICE_DROP_UNKNOWN_ENDPOINT), 1);
}

// === from-netdev ===

fn from_netdev(lab: &Lab, packet: &[u8]) -> TestRun {
    run(lab.dp.from_netdev_program().expect("program"), packet).expect("BPF_PROG_TEST_RUN")
}

/// A frame as it arrives on the uplink: addressed to the device (the test skb's device is
/// loopback, whose address is all zeros, so the kernel marks it PACKET_HOST).
fn from_uplink(mut packet: Vec<u8>) -> Vec<u8> {
    packet[0..6].copy_from_slice(&[0; 6]);
    packet
}

#[test]
fn uplink_traffic_for_a_local_pod_is_redirected_to_its_peer_v4_and_v6() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let remote4 = Ipv4Addr::new(198, 19, 1, 2);
    let out = from_netdev(&lab, &from_uplink(udp4(Mac([2, 9, 9, 9, 9, 9]), remote4, B4)));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "IPv4 for pod B must go straight to its interface");
    assert_eq!(&out.packet[0..6], &POD_B_MAC.0);
    assert_eq!(&out.packet[6..12], &NODE_B_MAC.0);
    assert_eq!(csum(&out.packet[14..34], 0), 0, "IPv4 header checksum must still verify");
    let out = from_netdev(&lab, &from_uplink(udp6(Mac([2, 9, 9, 9, 9, 9]), "2001:2:0:1::2".parse().unwrap(), B6)));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "IPv6 for pod B must go straight to its interface");
    assert_eq!(&out.packet[0..6], &POD_B_MAC.0);
}

#[test]
fn uplink_traffic_for_anything_else_goes_to_the_stack() {
    privileged!();
    let lab = lab(HostRouting::Bpf);
    let out = from_netdev(&lab, &from_uplink(udp4(Mac([2, 9, 9, 9, 9, 9]), Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 10))));
    assert_eq!(out.verdict, TC_ACT_OK, "traffic for the node itself goes to the stack");
    let legacy = self::lab(HostRouting::Legacy);
    let out = from_netdev(&legacy, &from_uplink(udp4(Mac([2, 9, 9, 9, 9, 9]), Ipv4Addr::new(198, 19, 1, 2), B4)));
    assert_eq!(out.verdict, TC_ACT_OK, "legacy: the stack delivers, even to local pods");
}

// === events ===

/// (type, code, captured bytes) of every event waiting in the ring buffer.
fn drain_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        assert!(bytes.len() >= std::mem::size_of::<sluice_abi::datapath_event>(), "an event is a whole datapath_event");
        // SAFETY: the ring buffer holds datapath_event records written by the program; the
        // length was checked and read_unaligned copes with any alignment.
        let ev: sluice_abi::datapath_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        out.push((ev.type_, ev.code, ev.data[..ev.cap_len as usize].to_vec()));
    }
    out
}

#[test]
fn drops_make_events_with_reason_and_headers() {
    privileged!();
    let mut lab = lab(HostRouting::Bpf);
    let mut ring = lab.dp.take_events().expect("events ring buffer");
    drain_events(&mut ring);
    let spoofed = udp4(POD_A_MAC, Ipv4Addr::new(198, 19, 0, 99), B4);
    assert_eq!(from_pod(&lab, &spoofed).verdict, TC_ACT_SHOT);
    let events = drain_events(&mut ring);
    assert_eq!(events.len(), 1, "one event for one drop");
    let (kind, code, data) = &events[0];
    assert_eq!(*kind, sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8);
    assert_eq!(*code, Reason::SLUICE_DROP_INVALID_SOURCE_IP as u8);
    assert_eq!(data.as_slice(), spoofed.as_slice(), "a short packet is captured whole");
}

#[test]
fn medium_aggregation_traces_the_first_packet_and_new_tcp_flags_only() {
    privileged!();
    let mut lab = lab(HostRouting::Bpf);
    let mut ring = lab.dp.take_events().expect("events ring buffer");
    drain_events(&mut ring);
    let packet = udp4(POD_A_MAC, A4, B4);
    from_pod(&lab, &packet);
    from_pod(&lab, &packet);
    let events = drain_events(&mut ring);
    assert_eq!(events.len(), 1, "the second packet of a flow is not traced: {events:?}");
    assert_eq!(events[0].0, sluice_abi::sluice_event_type::SLUICE_EVENT_TRACE as u8);
    assert_eq!(events[0].1, Fwd::SLUICE_FWD_LOCAL_ENDPOINT as u8);

    let mut syn = udp4(POD_A_MAC, A4, B4);
    syn[23] = 6; // TCP
    syn.extend_from_slice(&[0; 20]);
    syn[14 + 20 + 13] = 0x02; // SYN
    let mut ack = syn.clone();
    ack[14 + 20 + 13] = 0x10; // ACK only
    let mut fin = syn.clone();
    fin[14 + 20 + 13] = 0x11; // FIN+ACK
    for p in [&syn, &ack, &ack, &fin] {
        from_pod(&lab, p);
    }
    let events = drain_events(&mut ring);
    assert_eq!(events.len(), 2, "SYN and FIN traced, plain ACKs not: {events:?}");
}
