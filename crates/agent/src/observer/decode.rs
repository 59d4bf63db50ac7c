//! Decoding of datapath events: the fixed record from the ring buffer, then the captured
//! headers (Ethernet, ARP, IPv4, IPv6, TCP, UDP, ICMP). A capture cut short yields what it
//! holds and says it was truncated. Pure code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sluice_abi::{datapath_event, drop_reason_name, forward_kind_name, DROP_REASONS, FORWARD_KINDS};
use sluice_api::{Flow, FlowPeer};

/// Why an event record could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a `datapath_event`: written by another version of the datapath.
    #[error("event of {0} bytes is shorter than a datapath event")]
    Short(usize),
    /// An event type this agent does not know.
    #[error("unknown event type {0}")]
    UnknownType(u8),
}

/// The record as the datapath wrote it.
pub fn read_event(bytes: &[u8]) -> Result<datapath_event, DecodeError> {
    if bytes.len() < std::mem::size_of::<datapath_event>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length was checked; datapath_event is plain old data (bindgen from the ABI
    // header), valid for any bytes; read_unaligned copes with the ring buffer's alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<datapath_event>()) })
}

/// A flow from an event; `time_unix_nanos` is the event's monotonic time plus `clock_offset`.
/// Whether `ev` is of a type [`decode`] knows (the only way a read event fails to decode):
/// checked when the observer takes an event, which it decodes only later.
pub fn check_type(ev: &datapath_event) -> Result<(), DecodeError> {
    use sluice_abi::sluice_event_type::{SLUICE_EVENT_DROP, SLUICE_EVENT_POLICY_AUDIT, SLUICE_EVENT_TRACE};
    let known = [SLUICE_EVENT_DROP as u32, SLUICE_EVENT_TRACE as u32, SLUICE_EVENT_POLICY_AUDIT as u32];
    if known.contains(&(ev.type_ as u32)) {
        Ok(())
    } else {
        Err(DecodeError::UnknownType(ev.type_))
    }
}

pub fn decode(ev: &datapath_event, node: &str, clock_offset: i128) -> Result<Flow, DecodeError> {
    let (verdict, event_type, drop_reason, forward) = match ev.type_ as u32 {
        t if t == sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u32 => {
            let reason = DROP_REASONS.iter().find(|r| **r as u8 == ev.code).map(|r| drop_reason_name(*r).to_owned());
            ("DROPPED", "drop", Some(reason.unwrap_or_else(|| format!("reason {}", ev.code))), None)
        }
        t if t == sluice_abi::sluice_event_type::SLUICE_EVENT_TRACE as u32 => {
            let kind = FORWARD_KINDS.iter().find(|k| **k as u8 == ev.code).map(|k| forward_kind_name(*k).to_owned());
            ("FORWARDED", "trace", None, Some(kind.unwrap_or_else(|| format!("kind {}", ev.code))))
        }
        t if t == sluice_abi::sluice_event_type::SLUICE_EVENT_POLICY_AUDIT as u32 => {
            let reason = DROP_REASONS.iter().find(|r| **r as u8 == ev.code).map(|r| drop_reason_name(*r).to_owned());
            ("AUDIT", "policy-verdict", Some(reason.unwrap_or_else(|| format!("reason {}", ev.code))), None)
        }
        other => return Err(DecodeError::UnknownType(other as u8)),
    };
    let point = match ev.point as u32 {
        p if p == sluice_abi::sluice_obs_point::SLUICE_POINT_FROM_NETDEV as u32 => "from-netdev",
        p if p == sluice_abi::sluice_obs_point::SLUICE_POINT_TO_POD as u32 => "to-pod",
        _ => "from-pod",
    };
    let is_policy = ev.code == sluice_abi::sluice_drop_reason::SLUICE_DROP_POLICY_INGRESS as u8
        || ev.code == sluice_abi::sluice_drop_reason::SLUICE_DROP_POLICY_EGRESS as u8;
    let policy_verdict = (verdict != "FORWARDED" && is_policy).then_some((ev.policy_rule, ev.peer_identity));
    let cap = (ev.cap_len as usize).min(ev.data.len());
    let headers = parse_headers(&ev.data[..cap]);
    Ok(Flow {
        time_unix_nanos: (ev.timestamp_ns as i128 + clock_offset).max(0) as u64,
        node: node.to_owned(),
        verdict: verdict.into(),
        event_type: event_type.into(),
        drop_reason,
        forward,
        point: point.into(),
        ifindex: ev.ifindex,
        protocol: headers.protocol,
        source: headers.source,
        destination: headers.destination,
        tcp_flags: headers.tcp_flags,
        icmp: headers.icmp,
        length: ev.orig_len,
        truncated: headers.truncated,
        summary: headers.summary,
        policy_rule: policy_verdict.map(|(rule, _)| rule),
        peer_identity: policy_verdict.map(|(_, id)| id),
        policy: None,
        http: None,
    })
}

/// What the captured headers say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub protocol: String,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    pub tcp_flags: Option<String>,
    pub icmp: Option<(u8, u8)>,
    pub truncated: bool,
    pub summary: Option<String>,
}

pub fn parse_headers(p: &[u8]) -> Headers {
    let mut h = Headers::default();
    if p.len() < 14 {
        h.protocol = "unknown".into();
        h.truncated = true;
        return h;
    }
    let ethertype = u16::from_be_bytes([p[12], p[13]]);
    let l3 = &p[14..];
    match ethertype {
        0x0800 => ipv4(l3, &mut h),
        0x86dd => ipv6(l3, &mut h),
        0x0806 => arp(l3, &mut h),
        other => {
            h.protocol = format!("ethertype 0x{other:04x}");
            h.summary = Some(format!("frame with EtherType 0x{other:04x}"));
        }
    }
    h
}

fn ipv4(p: &[u8], h: &mut Headers) {
    if p.len() < 20 {
        h.protocol = "IPv4".into();
        h.truncated = true;
        return;
    }
    let ihl = ((p[0] & 0x0f) as usize) * 4;
    h.source.ip = Some(IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])));
    h.destination.ip = Some(IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])));
    let l4 = if p.len() >= ihl && ihl >= 20 { &p[ihl..] } else { &[][..] };
    transport(p[9], l4, false, h);
}

fn ipv6(p: &[u8], h: &mut Headers) {
    if p.len() < 40 {
        h.protocol = "IPv6".into();
        h.truncated = true;
        return;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    h.source.ip = Some(IpAddr::V6(Ipv6Addr::from(src)));
    h.destination.ip = Some(IpAddr::V6(Ipv6Addr::from(dst)));
    transport(p[6], &p[40..], true, h);
}

fn transport(proto: u8, l4: &[u8], v6: bool, h: &mut Headers) {
    match proto {
        6 => {
            h.protocol = "TCP".into();
            if l4.len() < 14 {
                h.truncated = true;
                return;
            }
            h.source.port = Some(u16::from_be_bytes([l4[0], l4[1]]));
            h.destination.port = Some(u16::from_be_bytes([l4[2], l4[3]]));
            h.tcp_flags = Some(tcp_flags(l4[13]));
        }
        17 => {
            h.protocol = "UDP".into();
            if l4.len() < 4 {
                h.truncated = true;
                return;
            }
            h.source.port = Some(u16::from_be_bytes([l4[0], l4[1]]));
            h.destination.port = Some(u16::from_be_bytes([l4[2], l4[3]]));
        }
        1 | 58 => {
            h.protocol = if proto == 1 { "ICMPv4" } else { "ICMPv6" }.into();
            if l4.len() < 2 {
                h.truncated = true;
                return;
            }
            h.icmp = Some((l4[0], l4[1]));
        }
        other => h.protocol = format!("{} proto {other}", if v6 { "IPv6" } else { "IPv4" }),
    }
}

fn tcp_flags(f: u8) -> String {
    const NAMES: [(u8, &str); 6] = [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG")];
    NAMES.iter().filter(|(bit, _)| f & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

fn arp(p: &[u8], h: &mut Headers) {
    h.protocol = "ARP".into();
    if p.len() < 28 {
        h.truncated = true;
        return;
    }
    let sender = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    let target = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
    h.source.ip = Some(sender.into());
    h.destination.ip = Some(target.into());
    h.summary = Some(match u16::from_be_bytes([p[6], p[7]]) {
        1 => format!("ARP who-has {target} tell {sender}"),
        2 => format!("ARP {sender} is-at {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", p[8], p[9], p[10], p[11], p[12], p[13]),
        op => format!("ARP op {op}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(proto: u16) -> Vec<u8> {
        let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        p.extend_from_slice(&proto.to_be_bytes());
        p
    }

    fn tcp4(flags: u8) -> Vec<u8> {
        let mut p = eth(0x0800);
        p.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 198, 19, 0, 3, 198, 19, 0, 2]);
        p.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, flags, 0, 0, 0, 0, 0, 0]);
        p
    }

    fn event(kind: u8, code: u8, data: &[u8]) -> datapath_event {
        let mut ev =
            datapath_event { timestamp_ns: 1_000, ifindex: 7, orig_len: data.len() as u32, type_: kind, code, ..Default::default() };
        ev.cap_len = data.len() as u16;
        ev.data[..data.len()].copy_from_slice(data);
        ev
    }

    const DROP: u8 = sluice_abi::sluice_event_type::SLUICE_EVENT_DROP as u8;
    const TRACE: u8 = sluice_abi::sluice_event_type::SLUICE_EVENT_TRACE as u8;

    #[test]
    fn tcp_over_ipv4_drop() {
        let ev = event(DROP, sluice_abi::sluice_drop_reason::SLUICE_DROP_INVALID_SOURCE_IP as u8, &tcp4(0x02));
        let f = decode(&ev, "node0", 500).unwrap();
        assert_eq!(f.verdict, "DROPPED");
        assert_eq!(f.drop_reason.as_deref(), Some("invalid source IP"));
        assert_eq!(f.protocol, "TCP");
        assert_eq!(f.source.ip, Some("198.19.0.3".parse().unwrap()));
        assert_eq!(f.source.port, Some(40000));
        assert_eq!(f.destination.port, Some(80));
        assert_eq!(f.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(f.time_unix_nanos, 1_500, "monotonic time plus the clock offset");
        assert!(!f.truncated);
    }

    #[test]
    fn udp_over_ipv6_trace() {
        let mut p = eth(0x86dd);
        p.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
        p.extend_from_slice(&"2001:2::3".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"2001:2::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 8, 0, 0]);
        let f = decode(&event(TRACE, sluice_abi::sluice_forward_kind::SLUICE_FWD_LOCAL_ENDPOINT as u8, &p), "n", 0).unwrap();
        assert_eq!(f.verdict, "FORWARDED");
        assert_eq!(f.forward.as_deref(), Some("local endpoint"));
        assert_eq!(f.protocol, "UDP");
        assert_eq!(f.destination.ip, Some("2001:2::2".parse().unwrap()));
        assert_eq!((f.source.port, f.destination.port), (Some(5000), Some(53)));
    }

    #[test]
    fn icmp_both_families() {
        let mut v4 = eth(0x0800);
        v4.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 198, 19, 0, 3, 198, 19, 0, 2, 8, 0, 0, 0]);
        let f = decode(&event(TRACE, 0, &v4), "n", 0).unwrap();
        assert_eq!((f.protocol.as_str(), f.icmp), ("ICMPv4", Some((8, 0))));
        let mut v6 = eth(0x86dd);
        v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 58, 64]);
        v6.extend_from_slice(&[0; 32]);
        v6.extend_from_slice(&[128, 0, 0, 0]);
        let f = decode(&event(TRACE, 0, &v6), "n", 0).unwrap();
        assert_eq!((f.protocol.as_str(), f.icmp), ("ICMPv6", Some((128, 0))));
    }

    #[test]
    fn truncated_captures_say_so_and_keep_what_they_have() {
        let full = tcp4(0x12);
        let f = decode(&event(DROP, 1, &full[..14 + 20 + 2]), "n", 0).unwrap();
        assert!(f.truncated, "TCP header cut short");
        assert_eq!(f.source.ip, Some("198.19.0.3".parse().unwrap()), "the IP header was whole");
        assert_eq!(f.source.port, None);
        let f = decode(&event(DROP, 1, &full[..20]), "n", 0).unwrap();
        assert!(f.truncated && f.source.ip.is_none(), "IPv4 header cut short");
        let f = decode(&event(DROP, 1, &full[..6]), "n", 0).unwrap();
        assert!(f.truncated, "Ethernet header cut short");
    }

    #[test]
    fn arp_is_summarised() {
        let mut p = eth(0x0806);
        p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 19, 0, 99, 0, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
        let f = decode(&event(DROP, 6, &p), "n", 0).unwrap();
        assert_eq!(f.protocol, "ARP");
        assert_eq!(f.drop_reason.as_deref(), Some("ARP spoofed"));
        assert_eq!(f.summary.as_deref(), Some("ARP who-has 169.254.1.1 tell 198.19.0.99"));
    }

    #[test]
    fn flags_and_unknowns() {
        assert_eq!(tcp_flags(0x12), "SYN,ACK");
        assert_eq!(tcp_flags(0x11), "ACK,FIN");
        assert_eq!(decode(&event(9, 0, &[]), "n", 0).unwrap_err(), DecodeError::UnknownType(9));
        assert_eq!(read_event(&[0; 8]).unwrap_err(), DecodeError::Short(8));
    }
}
