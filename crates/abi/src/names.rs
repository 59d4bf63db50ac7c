//! Human names of the datapath's enumerations, shared by status, metrics and (later) flows.

use crate::{sluice_drop_reason as D, sluice_event_loss as L, sluice_forward_kind as F};

/// Every drop reason the datapath can report, in number order.
pub const DROP_REASONS: [D; 12] = [
    D::SLUICE_DROP_INVALID_SOURCE_MAC,
    D::SLUICE_DROP_INVALID_SOURCE_IP,
    D::SLUICE_DROP_UNKNOWN_ENDPOINT,
    D::SLUICE_DROP_UNSUPPORTED_L3,
    D::SLUICE_DROP_MALFORMED,
    D::SLUICE_DROP_ARP_SPOOFED,
    D::SLUICE_DROP_NO_SERVICE_BACKEND,
    D::SLUICE_DROP_NAT_NO_PORT,
    D::SLUICE_DROP_CT_FULL,
    D::SLUICE_DROP_POLICY_INGRESS,
    D::SLUICE_DROP_POLICY_EGRESS,
    D::SLUICE_DROP_PROXY,
];

/// Every forwarding decision the datapath counts, in number order.
pub const FORWARD_KINDS: [F; 6] = [
    F::SLUICE_FWD_LOCAL_ENDPOINT,
    F::SLUICE_FWD_FIB,
    F::SLUICE_FWD_STACK,
    F::SLUICE_FWD_ARP_REPLY,
    F::SLUICE_FWD_ND_REPLY,
    F::SLUICE_FWD_ICMP_REJECT,
];

/// The documented name of a drop reason (docs/datapath.md lists them).
pub fn drop_reason_name(reason: D) -> &'static str {
    match reason {
        D::SLUICE_DROP_NONE => "none",
        D::SLUICE_DROP_INVALID_SOURCE_MAC => "invalid source MAC",
        D::SLUICE_DROP_INVALID_SOURCE_IP => "invalid source IP",
        D::SLUICE_DROP_UNKNOWN_ENDPOINT => "unknown endpoint",
        D::SLUICE_DROP_UNSUPPORTED_L3 => "unsupported L3 protocol",
        D::SLUICE_DROP_MALFORMED => "malformed packet",
        D::SLUICE_DROP_ARP_SPOOFED => "ARP spoofed",
        D::SLUICE_DROP_NO_SERVICE_BACKEND => "service has no backend",
        D::SLUICE_DROP_NAT_NO_PORT => "no SNAT port",
        D::SLUICE_DROP_CT_FULL => "conntrack table full",
        D::SLUICE_DROP_POLICY_INGRESS => "policy denied ingress",
        D::SLUICE_DROP_POLICY_EGRESS => "policy denied egress",
        D::SLUICE_DROP_PROXY => "layer-7 proxy unavailable",
        D::SLUICE_DROP_REASON_MAX => "invalid",
    }
}

pub fn forward_kind_name(kind: F) -> &'static str {
    match kind {
        F::SLUICE_FWD_LOCAL_ENDPOINT => "local endpoint",
        F::SLUICE_FWD_FIB => "fib redirect",
        F::SLUICE_FWD_STACK => "to stack",
        F::SLUICE_FWD_ARP_REPLY => "ARP reply",
        F::SLUICE_FWD_ND_REPLY => "ND reply",
        F::SLUICE_FWD_ICMP_REJECT => "ICMP reject",
        F::SLUICE_FWD_KIND_MAX => "invalid",
    }
}

/// Every reason an event can be lost in the datapath, in number order.
pub const EVENT_LOSSES: [L; 2] = [L::SLUICE_LOSS_RATE_LIMITED, L::SLUICE_LOSS_RING_FULL];

/// The name metrics and flows give a datapath event loss.
pub fn event_loss_name(loss: L) -> &'static str {
    match loss {
        L::SLUICE_LOSS_RATE_LIMITED => "rate-limited",
        L::SLUICE_LOSS_RING_FULL => "ring-full",
        L::SLUICE_LOSS_MAX => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_listed_once_in_order() {
        assert_eq!(DROP_REASONS.len() + 1, D::SLUICE_DROP_REASON_MAX as usize, "DROP_REASONS must list every reason but NONE");
        for (i, r) in DROP_REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "drop reason {} out of order", drop_reason_name(*r));
            assert_ne!(drop_reason_name(*r), "invalid");
        }
    }

    #[test]
    fn every_forward_kind_is_listed_once_in_order() {
        assert_eq!(FORWARD_KINDS.len(), F::SLUICE_FWD_KIND_MAX as usize);
        for (i, k) in FORWARD_KINDS.iter().enumerate() {
            assert_eq!(*k as usize, i, "forward kind {} out of order", forward_kind_name(*k));
        }
    }

    #[test]
    fn every_event_loss_is_listed_once_in_order() {
        assert_eq!(EVENT_LOSSES.len(), L::SLUICE_LOSS_MAX as usize);
        for (i, l) in EVENT_LOSSES.iter().enumerate() {
            assert_eq!(*l as usize, i, "event loss {} out of order", event_loss_name(*l));
        }
    }

    #[test]
    fn key_and_value_sizes_match_the_c_layout() {
        // bindgen's generated layout tests check every field offset; these pin the totals the
        // datapath's maps were created with, so a header change that resizes them is noticed.
        assert_eq!(std::mem::size_of::<crate::endpoint_key>(), 20);
        assert_eq!(std::mem::size_of::<crate::endpoint_info>(), 48);
        assert_eq!(std::mem::size_of::<crate::traffic_counter>(), 16);
    }
}
