//! Port matches as entry-key parts: (protocol, port, prefix). The datapath matches ports by
//! longest prefix, so a range becomes the minimal set of aligned prefixes that covers it.

use crate::ir::{PortMatch, Protocol};
use crate::output::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// (protocol, port, port prefix) of an entry key; `None` protocol means every protocol.
pub type PortKey = (Option<u8>, u16, u8);

/// The IP protocol numbers a protocol stands for.
pub fn protocol_numbers(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Tcp => &[PROTO_TCP],
        Protocol::Udp => &[PROTO_UDP],
        Protocol::Sctp => &[PROTO_SCTP],
        Protocol::Any => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
    }
}

/// Keys of a port match that needs no endpoint to resolve; named ports yield nothing here.
pub fn port_keys(port: &PortMatch) -> Vec<PortKey> {
    match port {
        PortMatch::AllPorts(p) => protocol_numbers(*p).iter().map(|n| (Some(*n), 0, 0)).collect(),
        PortMatch::Range { protocol, first, last } => {
            let prefixes = range_prefixes(*first, *last);
            protocol_numbers(*protocol).iter().flat_map(|n| prefixes.iter().map(move |(port, len)| (Some(*n), *port, *len))).collect()
        }
        PortMatch::Named { .. } => Vec::new(),
        PortMatch::Icmp { ipv6, icmp_type } => {
            let proto = if *ipv6 { PROTO_ICMPV6 } else { PROTO_ICMP };
            vec![match icmp_type {
                Some(t) => (Some(proto), u16::from(*t), 16),
                None => (Some(proto), 0, 0),
            }]
        }
    }
}

/// `port` with all but its top `len` bits cleared.
pub fn mask(port: u16, len: u8) -> u16 {
    match len {
        0 => 0,
        len => port & (u16::MAX << (16 - u32::from(len.min(16)))),
    }
}

/// Minimal aligned prefixes (port, prefix length) covering `first..=last`; empty if
/// `first > last`.
pub fn range_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        // The largest block aligned at `start` that stays within the range.
        let mut size_bits = start.trailing_zeros().min(16);
        while (1u32 << size_bits) - 1 > end - start {
            size_bits -= 1;
        }
        // start <= end <= u16::MAX, and size_bits <= 16.
        out.push((start as u16, (16 - size_bits) as u8));
        start += 1 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..=u16::MAX).filter(|p| prefixes.iter().any(|(base, len)| mask(*p, *len) == *base)).collect();
        ports.dedup();
        ports
    }

    #[test]
    fn ranges_are_covered_exactly_and_minimally() {
        for (first, last, count) in [(80, 80, 1), (0, u16::MAX, 1), (1000, 2000, 8), (1024, 2047, 1), (1, u16::MAX, 16), (65535, 65535, 1)]
        {
            let prefixes = range_prefixes(first, last);
            assert_eq!(prefixes.len(), count, "{first}-{last}: {prefixes:?}");
            assert_eq!(covered(&prefixes), (first..=last).collect::<Vec<_>>(), "{first}-{last} covered exactly");
        }
        assert_eq!(range_prefixes(80, 80), vec![(80, 16)], "a single port is a /16");
        assert!(range_prefixes(2, 1).is_empty(), "an inverted range is empty");
    }

    #[test]
    fn masks() {
        assert_eq!(mask(0xabcd, 0), 0, "prefix 0 keeps nothing");
        assert_eq!(mask(0xabcd, 8), 0xab00, "prefix 8 keeps the top byte");
        assert_eq!(mask(0xabcd, 16), 0xabcd, "prefix 16 keeps all");
    }
}
