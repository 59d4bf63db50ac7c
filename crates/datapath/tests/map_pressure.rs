//! Map pressure, in the kernel (BPF_PROG_RUN): the conntrack tables filled to capacity. Both are
//! LRU hashes: full, they evict the least recently used entry, so new flows go on and flows in
//! use keep theirs. Where the kernel refuses an entry all the same (shown here with plain hash
//! maps pinned in their place, which refuse once full), a new flow is dropped as "conntrack
//! table full": counted and reported as a drop event; existing flows keep working. The agent's
//! tables (fixed capacity) refuse a write past capacity with an error naming the map and its
//! capacity, and keep what they hold. Each case runs in a fresh network namespace and bpffs.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use sluice_abi::{lb_backend, lb_frontend, lb_frontend_key, lb_slot_key, sluice_drop_reason as Reason, sluice_obs_point as Point};
use sluice_datapath::test_run::{run, tcp_frame, TestRun};
use sluice_datapath::{
    BpfDatapath, DatapathError, DatapathTables, EndpointEntry, HostRouting, LoadOptions, Mac, PolicyTables, ServiceTables,
};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const A_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
const A_NODE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0a]);
const B_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
const B_NODE_MAC: Mac = Mac([0x02, 0, 0, 0, 0xee, 0x0b]);
/// Pod A sends on the test skb's device (loopback, ifindex 1); pod B is another local pod.
const A4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const B4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 11);
const SVC4: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

const CT_KEY_SIZE: u32 = std::mem::size_of::<sluice_abi::ct_key>() as u32;
const CT_ENTRY_SIZE: u32 = std::mem::size_of::<sluice_abi::ct_entry>() as u32;
const PCT_ENTRY_SIZE: u32 = std::mem::size_of::<sluice_abi::policy_ct_entry>() as u32;

// === harness ===

struct Lab {
    dp: BpfDatapath,
    /// After `dp`: the maps and programs are closed before the bpffs goes.
    _dir: sluice_datapath::testing::BpffsDir,
}

/// A datapath with tables of `ct_entries`; `prepin` runs on the bpffs before the load (to pin
/// maps the load then reuses).
fn lab(ct_entries: u32, prepin: impl FnOnce(&Path)) -> Lab {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a private netns for the test thread");
    let dir = sluice_datapath::testing::BpffsDir::new();
    prepin(dir.path());
    let mut opts = LoadOptions::new(HostRouting::Bpf);
    opts.conntrack_entries = ct_entries;
    opts.policy_conntrack_entries = ct_entries;
    let mut dp = BpfDatapath::load_with(dir.path(), &opts).expect("datapath loads and passes the verifier");
    for (id, ifindex, v4, mac, node_mac) in [(1, 1, A4, A_MAC, A_NODE_MAC), (2, 77, B4, B_MAC, B_NODE_MAC)] {
        dp.upsert_endpoint(&EndpointEntry {
            endpoint_id: id,
            host_ifindex: ifindex,
            host_ifname: format!("lxc{id}"),
            identity: 256 + id,
            ipv4: Some(v4),
            ipv6: None,
            mac,
            node_mac,
        })
        .expect("endpoint");
    }
    let mut lab = Lab { dp, _dir: dir };
    cluster_ip_to_b(&mut lab);
    lab
}

fn addr16(a: Ipv4Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a.octets());
    out
}

/// SVC4:80/TCP, internal scope, with pod B:8080 its one backend.
fn cluster_ip_to_b(lab: &mut Lab) {
    let family = sluice_abi::SLUICE_AF_INET as u8;
    let be = lb_backend { addr: addr16(B4), port: 8080u16.to_be(), proto: 6, family, ..Default::default() };
    lab.dp.upsert_backend(1, &be).expect("backend");
    lab.dp.upsert_slot(&lb_slot_key { set_id: 1, slot: 1, revision: 0, pad: 0 }, 1).expect("slot");
    let key = lb_frontend_key {
        addr: addr16(SVC4),
        port: 80u16.to_be(),
        proto: 6,
        family,
        scope: sluice_abi::SLUICE_LB_SCOPE_INTERNAL as u8,
        pad: [0; 3],
    };
    lab.dp.upsert_frontend(&key, &lb_frontend { set_id: 1, count: 1, ..Default::default() }).expect("frontend");
}

fn from_pod(lab: &Lab, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> TestRun {
    let p = tcp_frame(A_MAC.0, A_NODE_MAC.0, A4.into(), dst.into(), sport, dport, flags).unwrap();
    run(lab.dp.from_pod_program().expect("program"), &p).expect("BPF_PROG_TEST_RUN")
}

/// From the uplink to pod A (loopback's MAC is zero: PACKET_HOST).
fn from_netdev(lab: &Lab, sport: u16, flags: u8) -> TestRun {
    let p = tcp_frame(Mac([2, 9, 9, 9, 9, 9]).0, [0; 6], CLIENT4.into(), A4.into(), sport, 22, flags).unwrap();
    run(lab.dp.from_netdev_program().expect("program"), &p).expect("BPF_PROG_TEST_RUN")
}

/// The destination address and port of a packet the program let through.
fn destination(out: &TestRun) -> (IpAddr, u16) {
    let p = &out.packet;
    (IpAddr::from(<[u8; 4]>::try_from(&p[30..34]).unwrap()), u16::from_be_bytes([p[36], p[37]]))
}

fn drops(lab: &Lab, point: Point, reason: Reason) -> u64 {
    let index = point as usize * Reason::SLUICE_DROP_REASON_MAX as usize + reason as usize;
    lab.dp.drop_counters().expect("drop counters")[index].packets
}

fn entries(lab: &Lab, map: &str) -> (usize, usize) {
    let m = lab.dp.map_pressure().into_iter().find(|m| m.map == map).unwrap_or_else(|| panic!("{map} in map pressure"));
    (m.entries, m.capacity)
}

/// Drop reasons of the drop events waiting in the ring buffer.
fn drop_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        assert!(bytes.len() >= std::mem::size_of::<sluice_abi::datapath_event>(), "an event is a whole datapath_event");
        // SAFETY: the ring buffer holds datapath_event records; the length was checked and
        // read_unaligned copes with any alignment.
        let ev: sluice_abi::datapath_event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if ev.type_ == sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8 {
            out.push(ev.code);
        }
    }
    out
}

/// Pins a plain `BPF_MAP_TYPE_HASH` of `max_entries` at `<dir>/<name>`, for the load to reuse:
/// unlike the LRU hash it stands in for, it refuses new keys once full.
fn pin_plain_hash(dir: &Path, name: &str, key_size: u32, value_size: u32, max_entries: u32) {
    let mut attr = [0u32; 32];
    attr[0] = 1; // BPF_MAP_TYPE_HASH
    attr[1] = key_size;
    attr[2] = value_size;
    attr[3] = max_entries;
    // SAFETY: bpf(BPF_MAP_CREATE) reads the attribute buffer, which lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE {name}: {}", std::io::Error::last_os_error());
    let path = std::ffi::CString::new(dir.join(name).into_os_string().into_encoded_bytes()).unwrap();
    let mut pin = [0u64; 16];
    pin[0] = path.as_ptr() as u64;
    pin[1] = fd as u64; // bpf_fd, file_flags 0
                        // SAFETY: bpf(BPF_OBJ_PIN) reads the buffer and the path, both alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(r, 0, "BPF_OBJ_PIN {name}: {}", std::io::Error::last_os_error());
    // SAFETY: fd is ours; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}

macro_rules! privileged {
    () => {
        if !sluice_datapath::testing::require_root(module_path!()) {
            return;
        }
    };
}

// === cases ===

/// Both conntrack tables (LRU, 512 entries) filled many times over by new service flows while
/// one established flow sends a packet every eight new flows.
#[test]
fn full_lru_conntrack_evicts_idle_flows_and_keeps_the_active_one() {
    privileged!();
    let lab = lab(512, |_| {});
    let active = from_pod(&lab, SVC4, 1000, 80, SYN);
    assert_eq!(active.verdict, TC_ACT_REDIRECT, "the first flow is translated to pod B");
    assert_eq!(from_pod(&lab, SVC4, 1001, 80, SYN).verdict, TC_ACT_REDIRECT, "a flow that then goes quiet");
    let mut highest = (0, 0);
    for i in 0..3000u16 {
        let out = from_pod(&lab, SVC4, 2000 + i, 80, SYN);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "new flow {i}: a full LRU table makes room, the flow goes on");
        assert_eq!(destination(&out), (IpAddr::from(B4), 8080), "new flow {i}: translated");
        if i % 8 == 0 {
            let out = from_pod(&lab, SVC4, 1000, 80, ACK);
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "after {i} new flows the active flow still passes");
            assert_eq!(destination(&out), (IpAddr::from(B4), 8080), "after {i} new flows the active flow keeps its translation");
        }
        if i % 500 == 0 {
            let (lb, cap) = entries(&lab, "lb_ct");
            let (pct, pcap) = entries(&lab, "policy_ct");
            assert!(lb <= cap && pct <= pcap, "never past capacity: lb_ct {lb}/{cap}, policy_ct {pct}/{pcap}");
            highest = (highest.0.max(lb), highest.1.max(pct));
        }
    }
    // 3000 flows: 6000 lb_ct entries asked of 512 places, 3000 policy_ct entries.
    let (lb, cap) = entries(&lab, "lb_ct");
    assert_eq!(cap, 512);
    assert!(lb.max(highest.0) * 10 >= cap * 9, "lb_ct ran full (at least 90%): {lb} of {cap}, highest {}", highest.0);
    let ct = lab.dp.conntrack().unwrap();
    let tracked = ct.iter().filter(|(k, _)| u16::from_be(k.sport) == 1000 && k.daddr[..4] == SVC4.octets()).count();
    assert_eq!(tracked, 1, "the active flow's entry survived the eviction");
    assert!(!ct.iter().any(|(k, _)| u16::from_be(k.sport) == 1001), "the quiet flow was evicted");
    let pct = lab.dp.policy_conntrack().unwrap();
    assert!(pct.iter().any(|(k, _)| u16::from_be(k.sport) == 1000), "the active flow's policy entry survived the eviction");
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_CT_FULL), 0, "an LRU table never refused");
}

/// `lb_ct` a plain hash of 8 entries: four service flows fill it (two entries each).
#[test]
fn refused_service_conntrack_drops_the_new_flow_as_conntrack_full() {
    privileged!();
    let mut lab = lab(8, |dir| pin_plain_hash(dir, "lb_ct", CT_KEY_SIZE, CT_ENTRY_SIZE, 8));
    let mut ring = lab.dp.take_events().expect("events ring buffer");
    for sport in 1000..1004 {
        assert_eq!(from_pod(&lab, SVC4, sport, 80, SYN).verdict, TC_ACT_REDIRECT, "flow {sport} fits");
    }
    assert_eq!(entries(&lab, "lb_ct"), (8, 8), "the table is full");
    drop_events(&mut ring);
    for sport in 2000..2003 {
        let out = from_pod(&lab, SVC4, sport, 80, SYN);
        assert_eq!(out.verdict, TC_ACT_SHOT, "new flow {sport}: dropped, not sent untranslated");
    }
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_CT_FULL), 3, "each refused flow counted");
    assert_eq!(drop_events(&mut ring), vec![Reason::SLUICE_DROP_CT_FULL as u8; 3], "each refused flow reported as a drop event");
    assert_eq!(entries(&lab, "lb_ct"), (8, 8), "no half-written flow left behind");
    assert_eq!(sluice_abi::drop_reason_name(Reason::SLUICE_DROP_CT_FULL), "conntrack table full");
    for sport in 1000..1004 {
        let out = from_pod(&lab, SVC4, sport, 80, ACK);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "established flow {sport} keeps working");
        assert_eq!(destination(&out), (IpAddr::from(B4), 8080), "established flow {sport} keeps its translation");
    }
    // Room again: the next new flow is tracked.
    let (k, _) = lab.dp.conntrack().unwrap().into_iter().find(|(k, _)| u16::from_be(k.sport) == 1000).unwrap();
    lab.dp.remove_conntrack(&k).unwrap();
    let gone = lab.dp.conntrack().unwrap().into_iter().find(|(_, e)| e.flags & sluice_abi::SLUICE_CT_F_REPLY as u8 != 0).unwrap();
    lab.dp.remove_conntrack(&gone.0).unwrap();
    assert_eq!(from_pod(&lab, SVC4, 2000, 80, SYN).verdict, TC_ACT_REDIRECT, "with room again, a new flow is tracked");
}

/// `policy_ct` a plain hash of 4 entries: two flows from pod A to pod B fill it (both pods are
/// local: an entry for A's egress, one for B's ingress).
#[test]
fn refused_policy_conntrack_drops_the_new_flow_both_ways() {
    privileged!();
    let mut lab = lab(4, |dir| pin_plain_hash(dir, "policy_ct", CT_KEY_SIZE, PCT_ENTRY_SIZE, 4));
    let mut ring = lab.dp.take_events().expect("events ring buffer");
    for sport in 1000..1002 {
        assert_eq!(from_pod(&lab, B4, sport, 80, SYN).verdict, TC_ACT_REDIRECT, "flow {sport} to pod B fits");
    }
    assert_eq!(entries(&lab, "policy_ct"), (4, 4), "the table is full");
    drop_events(&mut ring);
    // Pod A opens one more flow; a client outside opens one to pod A.
    assert_eq!(from_pod(&lab, B4, 2000, 80, SYN).verdict, TC_ACT_SHOT, "a flow pod A opens is dropped");
    assert_eq!(from_netdev(&lab, 3000, SYN).verdict, TC_ACT_SHOT, "a flow to pod A is dropped");
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_POD, Reason::SLUICE_DROP_CT_FULL), 1, "counted at from-pod");
    assert_eq!(drops(&lab, Point::SLUICE_POINT_FROM_NETDEV, Reason::SLUICE_DROP_CT_FULL), 1, "counted at from-netdev");
    assert_eq!(drop_events(&mut ring), vec![Reason::SLUICE_DROP_CT_FULL as u8; 2], "both reported as drop events");
    for sport in 1000..1002 {
        assert_eq!(from_pod(&lab, B4, sport, 80, ACK).verdict, TC_ACT_REDIRECT, "established flow {sport} keeps working");
    }
    assert_eq!(entries(&lab, "policy_ct"), (4, 4));
}

/// The agent's backend table (`SLUICE_MAX_BACKENDS`) written to capacity, and once more.
#[test]
fn a_write_past_capacity_names_the_map_and_keeps_what_it_holds() {
    privileged!();
    let mut lab = lab(64, |_| {});
    let cap = sluice_abi::SLUICE_MAX_BACKENDS;
    let be = lb_backend { addr: addr16(B4), port: 9u16.to_be(), proto: 6, family: 2, ..Default::default() };
    for id in 2..=cap {
        lab.dp.upsert_backend(id, &be).expect("backends up to capacity");
    }
    let (n, c) = entries(&lab, "lb_backends");
    assert_eq!((n, c), (cap as usize, cap as usize), "full");
    let err = lab.dp.upsert_backend(cap + 1, &be).expect_err("a write past capacity fails");
    assert!(matches!(err, DatapathError::MapFull { map: "lb_backends", capacity } if capacity == cap as usize), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("lb_backends") && text.contains(&cap.to_string()) && text.contains("full"), "{text}");
    // An existing entry can still be rewritten, and the table holds what it held.
    lab.dp.upsert_backend(1, &lb_backend { addr: addr16(B4), port: 8080u16.to_be(), proto: 6, family: 2, ..Default::default() }).unwrap();
    assert_eq!(entries(&lab, "lb_backends").0, cap as usize);
    let out = from_pod(&lab, SVC4, 1000, 80, SYN);
    assert_eq!((out.verdict, destination(&out)), (TC_ACT_REDIRECT, (IpAddr::from(B4), 8080)), "the service still works");
}

/// The agent's `ipblocks` trie (`SLUICE_IPBLOCK_ENTRIES`) written to capacity, and once more: an
/// LPM trie answers ENOSPC where a hash answers E2BIG; both are named the same way.
#[test]
fn a_full_prefix_trie_names_the_map_and_its_capacity() {
    privileged!();
    let mut lab = lab(64, |_| {});
    let cap = sluice_abi::SLUICE_IPBLOCK_ENTRIES;
    let prefix = |i: u32| ipnet::IpNet::from(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap());
    for i in 0..cap {
        lab.dp.upsert_ipblock(prefix(i), 300).expect("prefixes up to capacity");
    }
    assert_eq!(entries(&lab, "ipblocks"), (cap as usize, cap as usize), "full");
    let err = lab.dp.upsert_ipblock(prefix(cap), 300).expect_err("a prefix past capacity fails");
    assert!(matches!(err, DatapathError::MapFull { map: "ipblocks", capacity } if capacity == cap as usize), "{err:?}");
    lab.dp.upsert_ipblock(prefix(0), 301).expect("an existing prefix can be rewritten");
    assert_eq!(entries(&lab, "ipblocks").0, cap as usize, "the trie holds what it held");
}
