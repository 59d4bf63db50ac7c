//! The flow observer's decoder never panics on a ring-buffer record: random bytes, records of
//! every length, real frames (TCP, UDP, ICMP over IPv4 and IPv6, ARP, IPv4 with options) in
//! records of every event type with bits flipped and bytes cut, and frames built field by field
//! with any header length, protocol, capture length and timestamp. Each record is decoded into
//! a flow or counted as undecodable. Bounded by a case count, a few seconds in all
//! (`PROPTEST_CASES` for a longer run).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly on what it did not expect

use proptest::prelude::*;
use sluice_abi::datapath_event;
use sluice_agent::observer::decode::{decode, read_event, DecodeError};
use sluice_agent::observer::Observer;
use sluice_api::FlowFilter;
use sluice_fuzz::bytes;

const EVENT_LEN: usize = std::mem::size_of::<datapath_event>();
const TYPES: [u8; 3] = [
    sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8,
    sluice_abi::sluice_event_type::SLUICE_EVENT_TRACE as u8,
    sluice_abi::sluice_event_type::SLUICE_EVENT_POLICY_AUDIT as u8,
];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn ipv4(proto: u8, ihl: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = eth(0x0800);
    p.extend_from_slice(&[0x40 | ihl, 0, 0, 40, 0, 0, 0, 0, 64, proto, 0, 0, 198, 19, 0, 3, 198, 19, 0, 2]);
    p.extend(std::iter::repeat_n(1u8, usize::from(ihl.saturating_sub(5)) * 4)); // options
    p.extend_from_slice(l4);
    p
}

fn ipv6(next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = eth(0x86dd);
    p.extend_from_slice(&[0x60, 0, 0, 0, 0, l4.len() as u8, next, 64]);
    p.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    p.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(l4);
    p
}

const TCP_SYN: [u8; 20] = [0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0];
const UDP_DNS: [u8; 8] = [0x13, 0x88, 0, 53, 0, 8, 0, 0];
const ECHO: [u8; 8] = [8, 0, 0, 0, 0, 1, 0, 1];

/// Real frames of each kind the decoder names.
fn frames() -> Vec<Vec<u8>> {
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 19, 0, 99, 0, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
    vec![
        ipv4(6, 5, &TCP_SYN),
        ipv4(17, 5, &UDP_DNS),
        ipv4(1, 5, &ECHO),
        ipv4(6, 15, &TCP_SYN),
        ipv6(6, &TCP_SYN),
        ipv6(17, &UDP_DNS),
        ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1]),
        arp,
    ]
}

/// A record as the datapath writes it into the ring buffer.
fn record(type_: u8, code: u8, point: u8, cap_len: u16, timestamp_ns: u64, frame: &[u8]) -> Vec<u8> {
    let mut ev =
        datapath_event { timestamp_ns, ifindex: 7, orig_len: frame.len() as u32, type_, code, point, cap_len, ..Default::default() };
    let n = frame.len().min(ev.data.len());
    ev.data[..n].copy_from_slice(&frame[..n]);
    // SAFETY: viewing a plain C struct (bindgen, no padding left uninitialised: Default zeroes
    // it) as bytes for as long as it lives.
    unsafe { std::slice::from_raw_parts((&ev as *const datapath_event).cast::<u8>(), EVENT_LEN) }.to_vec()
}

/// Every real frame in a record of every type: the seeds of the mutations.
fn records() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for frame in frames() {
        for type_ in TYPES {
            out.push(record(type_, 1, 0, frame.len() as u16, 1_000_000, &frame));
        }
    }
    out
}

/// A frame built field by field: any EtherType, IPv4 header length, protocol and payload.
fn built_frame() -> impl Strategy<Value = Vec<u8>> {
    let proto = prop_oneof![Just(6u8), Just(17u8), Just(1u8), Just(58u8), any::<u8>()];
    let payload = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (proto.clone(), 0u8..16, payload.clone()).prop_map(|(p, ihl, l4)| ipv4(p, ihl, &l4)),
        (proto, payload.clone()).prop_map(|(p, l4)| ipv6(p, &l4)),
        (any::<u16>(), payload).prop_map(|(t, rest)| {
            let mut f = eth(t);
            f.extend_from_slice(&rest);
            f
        }),
    ]
}

fn built_record() -> impl Strategy<Value = Vec<u8>> {
    let type_ = prop_oneof![4 => proptest::sample::select(TYPES.to_vec()), 1 => any::<u8>()];
    let cap_len = prop_oneof![Just(None), any::<u16>().prop_map(Some)];
    let timestamp = prop_oneof![0u64..1 << 50, any::<u64>()];
    (type_, any::<u8>(), any::<u8>(), cap_len, timestamp, built_frame()).prop_map(|(t, code, point, cap, ts, frame)| {
        let cap = cap.unwrap_or(frame.len() as u16);
        record(t, code, point, cap, ts, &frame)
    })
}

fn inputs() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => bytes::random(2 * EVENT_LEN),
        3 => bytes::mutated(records(), &[]),
        3 => built_record(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(sluice_fuzz::config(10000))]

    #[test]
    fn records_never_panic(input in inputs()) {
        match read_event(&input) {
            Err(DecodeError::Short(n)) => prop_assert!(n < EVENT_LEN, "only a record shorter than an event is short: {}", n),
            Err(other) => prop_assert!(false, "reading a record fails only when short: {}", other),
            Ok(ev) => {
                prop_assert!(input.len() >= EVENT_LEN, "a record of {} bytes was read", input.len());
                match decode(&ev, "node0", 1_700_000_000_000_000_000) {
                    Ok(flow) => {
                        prop_assert!(TYPES.contains(&ev.type_), "type {} decoded", ev.type_);
                        prop_assert_eq!(flow.length, ev.orig_len, "the wire length is the record's");
                        if usize::from(ev.cap_len) < 14 {
                            prop_assert!(flow.truncated, "a capture shorter than Ethernet is truncated");
                        }
                    }
                    Err(error) => prop_assert_eq!(error, DecodeError::UnknownType(ev.type_), "only an unknown type fails"),
                }
            }
        }
        // The observer takes every record, decodable or not, and counts it once.
        let observer = Observer::new("node0", 4);
        observer.ingest(&input);
        prop_assert_eq!(observer.decoded() + observer.undecodable(), 1, "one record, counted once");
        prop_assert_eq!(observer.recent(&FlowFilter::default()).len() as u64, observer.decoded(), "a decoded record is held");
    }
}
