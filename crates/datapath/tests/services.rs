//! BPF_PROG_RUN tests of service translation in tc: DNAT and reverse NAT (TCP, UDP, IPv4,
//! IPv6) with every checksum verified, NodePort SNAT to another node, Maglev lookup, and the
//! ICMP reject of a service without backends. The service maps are written directly, as the
//! agent's programmer would; each case runs in a fresh network namespace (no routes).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_abi::{lb_backend, lb_frontend, lb_frontend_key, lb_maglev_chunk, lb_maglev_key, lb_slot_key};
use sluice_datapath::test_run::{run, TestRun};
use sluice_datapath::{BpfDatapath, DatapathTables, EndpointEntry, HostRouting, LoadOptions, Mac, ServiceTables};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const POD_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
const NODE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0a]);
const PEER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
const PEER_NODE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0b]);
/// Pod A: on the test skb's device (loopback, ifindex 1). Pod B: another local pod.
const A4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x10);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0x11);
const NODE4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x99);
const REMOTE4: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 5);
const SVC4: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
const SVC6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xfe, 0, 0, 0, 0x10);
const TCP: u8 = 6;
const UDP: u8 = 17;

// === packets ===

fn csum_add(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let w = if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += w as u32;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    csum_add(&p, 0)
}

/// An Ethernet frame with a TCP SYN or a UDP datagram, every checksum right.
fn packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let payload = b"sluice-service";
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let c = fold(csum_add(&l4, pseudo(src, dst, proto, l4.len())));
    let at = if proto == TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());

    frame(src, dst, proto, &l4)
}

/// An Ethernet frame (pod A's MAC to the node's) carrying `l4` in an IPv4 or IPv6 header with
/// every checksum right.
fn frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&NODE_MAC.0);
    p.extend_from_slice(&POD_MAC.0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + l4.len();
            let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, proto, 0, 0];
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(csum_add(&ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&ip);
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

/// What a frame carries, read back after the program ran; checks every checksum on the way.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

fn parse(p: &[u8]) -> Seen {
    let ethertype = u16::from_be_bytes([p[12], p[13]]);
    let (src, dst, proto, l4) = if ethertype == 0x0800 {
        let ip = &p[14..34];
        assert_eq!(fold(csum_add(ip, 0)), 0, "the IPv4 header checksum must verify");
        let s = IpAddr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
        let d = IpAddr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
        (s, d, ip[9], &p[34..])
    } else {
        let ip = &p[14..54];
        let s = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let d = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        (s, d, ip[6], &p[54..])
    };
    let with_pseudo = proto != 1;
    let sum = if with_pseudo { csum_add(l4, pseudo(src, dst, proto, l4.len())) } else { csum_add(l4, 0) };
    assert_eq!(fold(sum), 0, "the L4 checksum (proto {proto}) must verify after translation");
    let (sport, dport) =
        if proto == TCP || proto == UDP { (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])) } else { (0, 0) };
    Seen { src, dst, proto, sport, dport }
}

fn seen(src: impl Into<IpAddr>, sport: u16, dst: impl Into<IpAddr>, dport: u16, proto: u8) -> Seen {
    Seen { src: src.into(), dst: dst.into(), proto, sport, dport }
}

// === harness ===

struct Lab {
    dp: BpfDatapath,
    /// After `dp`: the maps and programs are closed before the bpffs goes.
    dir: sluice_datapath::testing::BpffsDir,
}

fn lab() -> Lab {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a private netns for the test thread");
    // A node forwards (the agent turns it on at start); bpf_fib_lookup answers "forwarding
    // disabled" otherwise. Set here, in the test's own namespace: a new namespace inherits the
    // machine's IPv4 setting, which a fresh machine has off.
    sluice_datapath::netns::write_sysctl("net/ipv4/conf/all/forwarding", "1").expect("IPv4 forwarding in the test's namespace");
    sluice_datapath::netns::write_sysctl("net/ipv6/conf/all/forwarding", "1").expect("IPv6 forwarding in the test's namespace");
    let dir = sluice_datapath::testing::BpffsDir::new();
    let mut opts = LoadOptions::new(HostRouting::Bpf);
    opts.node_ipv4 = Some(NODE4);
    opts.node_ipv6 = Some(NODE6);
    let mut dp = BpfDatapath::load_with(dir.path(), &opts).expect("datapath loads and passes the verifier");
    for (id, ifindex, v4, v6, mac, node_mac) in [(1, 1, A4, A6, POD_MAC, NODE_MAC), (2, 77, B4, B6, PEER_MAC, PEER_NODE_MAC)] {
        dp.upsert_endpoint(&EndpointEntry {
            endpoint_id: id,
            host_ifindex: ifindex,
            host_ifname: format!("lxc{id}"),
            identity: 256 + id,
            ipv4: Some(v4),
            ipv6: Some(v6),
            mac,
            node_mac,
        })
        .expect("endpoint");
    }
    Lab { dp, dir }
}

fn addr16(a: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, sluice_abi::SLUICE_AF_INET as u8)
        }
        IpAddr::V6(v6) => (v6.octets(), sluice_abi::SLUICE_AF_INET6 as u8),
    }
}

/// A frontend with `backends` (id, address, port) in slots 1..n of revision 0.
fn service(lab: &mut Lab, set_id: u32, fe: (IpAddr, u16, u8), flags: u16, backends: &[(u32, IpAddr, u16, bool)]) {
    for (slot, &(id, addr, port, local)) in backends.iter().enumerate() {
        let (a, family) = addr16(addr);
        let be = lb_backend {
            addr: a,
            port: port.to_be(),
            proto: fe.2,
            family,
            flags: if local { sluice_abi::SLUICE_LB_BE_LOCAL as u8 } else { 0 },
            ..Default::default()
        };
        lab.dp.upsert_backend(id, &be).expect("backend");
        lab.dp.upsert_slot(&lb_slot_key { set_id, slot: slot as u16 + 1, revision: 0, pad: 0 }, id).expect("slot");
    }
    let (a, family) = addr16(fe.0);
    let key = lb_frontend_key {
        addr: a,
        port: fe.1.to_be(),
        proto: fe.2,
        family,
        scope: sluice_abi::SLUICE_LB_SCOPE_EXTERNAL as u8,
        pad: [0; 3],
    };
    let value = lb_frontend { set_id, count: backends.len() as u16, flags, ..Default::default() };
    lab.dp.upsert_frontend(&key, &value).expect("frontend");
}

fn from_pod(lab: &Lab, p: &[u8]) -> TestRun {
    run(lab.dp.from_pod_program().expect("program"), p).expect("BPF_PROG_TEST_RUN")
}

/// As it arrives on the uplink: addressed to the device (loopback's MAC is zero: PACKET_HOST).
fn from_netdev(lab: &Lab, p: &[u8]) -> TestRun {
    let mut p = p.to_vec();
    p[0..6].copy_from_slice(&[0; 6]);
    run(lab.dp.from_netdev_program().expect("program"), &p).expect("BPF_PROG_TEST_RUN")
}

macro_rules! privileged {
    () => {
        if !sluice_datapath::testing::require_root(module_path!()) {
            return;
        }
    };
}

const NODEPORT: u16 = sluice_abi::SLUICE_LB_F_NODEPORT as u16;
const MAGLEV: u16 = sluice_abi::SLUICE_LB_F_MAGLEV as u16;

// === cases ===

#[test]
fn pod_to_cluster_ip_is_translated_to_the_backend_tcp_udp_v4_v6() {
    privileged!();
    let mut lab = lab();
    for (svc, client, backend, proto) in [
        (IpAddr::from(SVC4), IpAddr::from(A4), IpAddr::from(B4), TCP),
        (IpAddr::from(SVC4), IpAddr::from(A4), IpAddr::from(B4), UDP),
        (IpAddr::from(SVC6), IpAddr::from(A6), IpAddr::from(B6), TCP),
        (IpAddr::from(SVC6), IpAddr::from(A6), IpAddr::from(B6), UDP),
    ] {
        let set = if svc.is_ipv4() { 1 } else { 2 };
        service(&mut lab, set * 10 + proto as u32, (svc, 80, proto), 0, &[(set * 100 + proto as u32, backend, 8080, true)]);
        let out = from_pod(&lab, &packet(client, svc, proto, 40000, 80));
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{svc} proto {proto}: translated to the local backend and redirected to it");
        assert_eq!(
            parse(&out.packet),
            seen(client, 40000, backend, 8080, proto),
            "{svc} proto {proto}: destination rewritten to the backend"
        );
        assert_eq!(&out.packet[0..6], &PEER_MAC.0, "delivered to the backend pod's MAC");
    }
    assert_eq!(lab.dp.conntrack().unwrap().len(), 8, "each flow has a forward and a reply entry");
}

#[test]
fn nodeport_to_a_local_backend_keeps_the_client_and_the_reply_is_reverse_translated() {
    privileged!();
    let mut lab = lab();
    for (node, client, backend, proto) in [
        (IpAddr::from(NODE4), IpAddr::from(CLIENT4), IpAddr::from(A4), TCP),
        (IpAddr::from(NODE6), IpAddr::from(CLIENT6), IpAddr::from(A6), UDP),
    ] {
        service(
            &mut lab,
            if node.is_ipv4() { 1 } else { 2 },
            (node, 30080, proto),
            NODEPORT,
            &[(if node.is_ipv4() { 11 } else { 12 }, backend, 8080, true)],
        );
        let out = from_netdev(&lab, &packet(client, node, proto, 5555, 30080));
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{node}: NodePort to a local backend goes straight to the pod");
        assert_eq!(parse(&out.packet), seen(client, 5555, backend, 8080, proto), "{node}: client kept, destination is the backend");
        // The backend (pod A, on the test device) answers the client.
        let out = from_pod(&lab, &packet(backend, client, proto, 8080, 5555));
        assert_eq!(out.verdict, TC_ACT_OK, "{node}: no route in the test namespace: the reply goes to the stack");
        assert_eq!(parse(&out.packet), seen(node, 30080, client, 5555, proto), "{node}: the reply comes from the NodePort");
    }
}

#[test]
fn nodeport_to_another_node_is_snatted_and_the_reply_restored() {
    privileged!();
    let mut lab = lab();
    service(&mut lab, 1, (NODE4.into(), 30080, TCP), NODEPORT, &[(1, REMOTE4.into(), 8080, false)]);
    let out = from_netdev(&lab, &packet(CLIENT4.into(), NODE4.into(), TCP, 5555, 30080));
    let fwd = parse(&out.packet);
    assert_eq!(fwd.src, IpAddr::from(NODE4), "SNAT to the node address");
    assert!((40000..60000).contains(&fwd.sport), "SNAT port {} from the NodePort SNAT range", fwd.sport);
    assert_eq!((fwd.dst, fwd.dport), (IpAddr::from(REMOTE4), 8080), "DNAT to the remote backend");
    let reply = from_netdev(&lab, &packet(REMOTE4.into(), NODE4.into(), TCP, 8080, fwd.sport));
    assert_eq!(parse(&reply.packet), seen(NODE4, 30080, CLIENT4, 5555, TCP), "the reply restored for the client");
}

#[test]
fn maglev_table_picks_the_backend_of_the_entry() {
    privileged!();
    let mut lab = lab();
    service(&mut lab, 5, (NODE4.into(), 30081, UDP), NODEPORT | MAGLEV, &[(1, A4.into(), 8080, true), (2, B4.into(), 9090, true)]);
    // Every entry of the table names backend 2: Maglev must choose it, whatever the hash.
    let size = sluice_abi::SLUICE_MAGLEV_DEFAULT_SIZE;
    for chunk in 0..size.div_ceil(sluice_abi::SLUICE_MAGLEV_CHUNK) {
        lab.dp
            .upsert_maglev(
                &lb_maglev_key { set_id: 5, chunk: chunk as u16, revision: 0, pad: 0 },
                &lb_maglev_chunk { backend_ids: [2; 1024] },
            )
            .unwrap();
    }
    for sport in [1000, 2000, 3000] {
        let out = from_netdev(&lab, &packet(CLIENT4.into(), NODE4.into(), UDP, sport, 30081));
        assert_eq!(parse(&out.packet), seen(CLIENT4, sport, B4, 9090, UDP), "source port {sport}: the Maglev entry's backend");
    }
}

#[test]
fn service_without_backends_is_refused_with_icmp_port_unreachable_v4_v6() {
    privileged!();
    let mut lab = lab();
    service(&mut lab, 1, (SVC4.into(), 80, TCP), 0, &[]);
    service(&mut lab, 2, (SVC6.into(), 80, TCP), 0, &[]);
    let out = from_pod(&lab, &packet(A4.into(), SVC4.into(), TCP, 40000, 80));
    assert_eq!(out.verdict, TC_ACT_REDIRECT, "the ICMP error is sent back out of the pod's interface");
    let icmp = parse(&out.packet);
    assert_eq!((icmp.src, icmp.dst, icmp.proto), (IpAddr::from(SVC4), IpAddr::from(A4), 1), "ICMP from the service to the client");
    assert_eq!(&out.packet[34..36], &[3, 3], "destination unreachable, port unreachable");
    assert_eq!(&out.packet[0..6], &POD_MAC.0, "addressed back to the pod");
    assert_eq!(&out.packet[42 + 12..42 + 20], &[A4.octets(), SVC4.octets()].concat()[..], "the offending header is quoted");

    let out = from_pod(&lab, &packet(A6.into(), SVC6.into(), TCP, 40000, 80));
    let icmp = parse(&out.packet);
    assert_eq!((icmp.src, icmp.dst, icmp.proto), (IpAddr::from(SVC6), IpAddr::from(A6), 58), "ICMPv6 from the service to the client");
    assert_eq!(&out.packet[54..56], &[1, 4], "destination unreachable, port unreachable");
    let counters = lab.dp.forward_counters().unwrap();
    assert_eq!(counters[sluice_abi::sluice_forward_kind::SLUICE_FWD_ICMP_REJECT as usize].packets, 2, "both rejects counted");
}

// === ICMP errors about translated flows ===

/// An ICMP (ICMPv6) port unreachable from `src` to `dst` quoting `quoted` (an Ethernet frame
/// as built by `packet`) whole, every checksum right.
fn icmp_error(src: IpAddr, dst: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let v4 = src.is_ipv4();
    let mut icmp = if v4 { vec![3, 3, 0, 0, 0, 0, 0, 0] } else { vec![1, 4, 0, 0, 0, 0, 0, 0] };
    icmp.extend_from_slice(&quoted[14..]);
    let proto = if v4 { 1 } else { 58 };
    let c = if v4 { fold(csum_add(&icmp, 0)) } else { fold(csum_add(&icmp, pseudo(src, dst, proto, icmp.len()))) };
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frame(src, dst, proto, &icmp)
}

/// The packet an ICMP error quotes, with its checksums verified, as a `Seen`.
fn quoted(p: &[u8]) -> Seen {
    let off = if u16::from_be_bytes([p[12], p[13]]) == 0x0800 { 14 + 20 + 8 } else { 14 + 40 + 8 };
    let mut frame = p[..14].to_vec();
    frame[12..14].copy_from_slice(if p[off] >> 4 == 4 { &[0x08, 0x00] } else { &[0x86, 0xdd] });
    frame.extend_from_slice(&p[off..]);
    parse(&frame)
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back_v4_v6() {
    privileged!();
    let mut lab = lab();
    for (node, client, backend) in
        [(IpAddr::from(NODE4), IpAddr::from(CLIENT4), IpAddr::from(A4)), (IpAddr::from(NODE6), IpAddr::from(CLIENT6), IpAddr::from(A6))]
    {
        service(
            &mut lab,
            if node.is_ipv4() { 1 } else { 2 },
            (node, 30053, UDP),
            NODEPORT,
            &[(if node.is_ipv4() { 11 } else { 12 }, backend, 8080, true)],
        );
        let request = packet(client, node, UDP, 5555, 30053);
        let delivered = from_netdev(&lab, &request);
        assert_eq!(parse(&delivered.packet), seen(client, 5555, backend, 8080, UDP), "{node}: NodePort to the local backend");
        // The backend has no socket on 8080: its stack answers port unreachable, quoting what it got.
        let error = icmp_error(backend, client, &delivered.packet);
        let out = from_pod(&lab, &error);
        let outer = parse(&out.packet);
        assert_eq!((outer.src, outer.dst), (node, client), "{node}: the error comes from the NodePort's address, to the client");
        assert_eq!(quoted(&out.packet), seen(client, 5555, node, 30053, UDP), "{node}: the quoted packet is the one the client sent");
    }
}

#[test]
fn icmp_errors_about_snatted_flows_reach_the_client() {
    privileged!();
    let mut lab = lab();
    service(&mut lab, 1, (NODE4.into(), 30053, UDP), NODEPORT, &[(1, REMOTE4.into(), 8080, false)]);
    let out = from_netdev(&lab, &packet(CLIENT4.into(), NODE4.into(), UDP, 5555, 30053));
    let fwd = parse(&out.packet);
    assert_eq!(fwd.src, IpAddr::from(NODE4), "SNAT to the node");
    let error = icmp_error(REMOTE4.into(), NODE4.into(), &out.packet);
    let back = from_netdev(&lab, &error);
    let outer = parse(&back.packet);
    assert_eq!(
        (outer.src, outer.dst, back.verdict),
        (IpAddr::from(NODE4), IpAddr::from(CLIENT4), 0),
        "the error reaches the client from the NodePort's address (no route here: handed to the stack)"
    );
    assert_eq!(quoted(&back.packet), seen(CLIENT4, 5555, NODE4, 30053, UDP), "the quote is the client's own packet again");
}

// === XDP on the uplink ===

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x55, 0x55];

fn ip(args: &str) {
    let out = std::process::Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

fn xdp(lab: &Lab, drop_unmatched: bool) -> sluice_datapath::XdpNetdev {
    let opts = sluice_datapath::XdpOptions {
        mode: None,
        drop_unmatched,
        node_ports: (30000, 32767),
        node_ipv4: Some(NODE4),
        node_ipv6: Some(NODE6),
    };
    sluice_datapath::XdpNetdev::load(lab.dir.path(), &opts).expect("XDP program loads and passes the verifier")
}

#[test]
fn xdp_forwards_established_snatted_nodeport_flows_both_ways() {
    privileged!();
    let mut lab = lab();
    // Routes and neighbours for the FIB: the remote backend and the client behind a device.
    ip("link add sx0 type veth peer name sx1");
    ip("link set sx0 up");
    ip("link set sx1 up");
    ip("addr add 198.19.1.1/24 dev sx0");
    ip("addr add 198.18.0.1/24 dev sx0");
    ip(&format!("neigh add {REMOTE4} lladdr 02:00:00:00:55:55 dev sx0"));
    ip(&format!("neigh add {CLIENT4} lladdr 02:00:00:00:55:55 dev sx0"));
    service(&mut lab, 1, (NODE4.into(), 30080, TCP), NODEPORT, &[(1, REMOTE4.into(), 8080, false)]);
    let x = xdp(&lab, false);
    let prog = x.program().unwrap();

    let syn = packet(CLIENT4.into(), NODE4.into(), TCP, 5555, 30080);
    let first = sluice_datapath::test_run::run_xdp(prog, &syn).unwrap();
    assert_eq!(first.verdict, XDP_PASS, "a new flow goes to tc, which writes its conntrack entries");
    let tc = from_netdev(&lab, &syn);
    let snat = parse(&tc.packet);

    let again = sluice_datapath::test_run::run_xdp(prog, &syn).unwrap();
    assert_eq!(again.verdict, XDP_REDIRECT, "the established flow is sent from XDP");
    assert_eq!(parse(&again.packet), snat, "XDP rewrites as tc did (checksums verified)");
    assert_eq!(&again.packet[0..6], &NEIGH_MAC, "to the next hop's MAC");
    assert_eq!(again.packet[14 + 8], 63, "TTL decremented");

    let reply = packet(REMOTE4.into(), NODE4.into(), TCP, 8080, snat.sport);
    let back = sluice_datapath::test_run::run_xdp(prog, &reply).unwrap();
    assert_eq!(back.verdict, XDP_REDIRECT, "the reply is sent from XDP too");
    assert_eq!(parse(&back.packet), seen(NODE4, 30080, CLIENT4, 5555, TCP), "the reply restored for the client");
    let counters = x.counters().unwrap();
    assert_eq!(counters[sluice_abi::sluice_xdp_counter::SLUICE_XDP_FORWARDED as usize].packets, 2, "two packets forwarded in XDP");
}

#[test]
fn xdp_drops_unmatched_nodeport_traffic_only_when_asked() {
    privileged!();
    let mut lab = lab();
    service(&mut lab, 1, (NODE4.into(), 30080, TCP), NODEPORT, &[(1, A4.into(), 8080, true)]);
    let strict = xdp(&lab, true);
    let run = |x: &sluice_datapath::XdpNetdev, dport: u16| {
        sluice_datapath::test_run::run_xdp(x.program().unwrap(), &packet(CLIENT4.into(), NODE4.into(), TCP, 5555, dport)).unwrap().verdict
    };
    assert_eq!(run(&strict, 31000), XDP_DROP, "a NodePort without a frontend is dropped");
    assert_eq!(run(&strict, 30080), XDP_PASS, "a NodePort with a frontend passes to tc");
    assert_eq!(run(&strict, 22), XDP_PASS, "other ports of the node pass");
    assert_eq!(strict.counters().unwrap()[sluice_abi::sluice_xdp_counter::SLUICE_XDP_DROPPED_NO_FRONTEND as usize].packets, 1);
    drop(strict);
    let lenient = xdp(&lab, false);
    assert_eq!(run(&lenient, 31000), XDP_PASS, "without drop_unmatched nothing is dropped");
}
