/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Refusing a connection to a service without backends at once: the packet is turned into an
 * ICMP (ICMPv6) port unreachable carrying its own headers, sent back out of the interface it
 * came in on. The client's connect() fails with ECONNREFUSED instead of timing out. */
#ifndef SLUICE_LIB_REJECT_H
#define SLUICE_LIB_REJECT_H

#include "counters.h"
#include "nat.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define REJECT_QUOTE 8 /* bytes of the offending packet's L4 header quoted after its IP header */

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct reject4 {
	struct iphdr ip;
	__u8 icmp[8];
	struct iphdr quoted;
	__u8 l4[REJECT_QUOTE];
};

struct reject6 {
	struct ipv6hdr ip6;
	__u8 icmp[8];
	struct ipv6hdr quoted;
	__u8 l4[REJECT_QUOTE];
};

/* ICMPv6 pseudo-header (RFC 8200 section 8.1) followed by the message. */
struct reject6_csum {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
	__u8 icmp[8];
	struct ipv6hdr quoted;
	__u8 l4[REJECT_QUOTE];
};

static __always_inline int reject_swap_mac(struct __sk_buff *skb)
{
	__u8 mac[12], swapped[12];
	if (bpf_skb_load_bytes(skb, 0, mac, 12))
		return -1;
	__builtin_memcpy(swapped, mac + 6, 6);
	__builtin_memcpy(swapped + 6, mac, 6);
	return (int)bpf_skb_store_bytes(skb, 0, swapped, 12, 0);
}

/* Rewrite the packet into the ICMP error in place and send it back; returns a tc verdict. */
static __always_inline int reject_ip4(struct __sk_buff *skb, const struct lb_pkt *p)
{
	struct reject4 r = {};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &r.quoted, sizeof(r.quoted)) || r.quoted.ihl != 5)
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	if (bpf_skb_load_bytes(skb, p->l4_off, r.l4, REJECT_QUOTE))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.saddr = r.quoted.daddr;
	r.ip.daddr = r.quoted.saddr;
	r.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	r.icmp[0] = ICMP_DEST_UNREACH;
	r.icmp[1] = ICMP_PORT_UNREACH;
	__u16 c = csum_fold(bpf_csum_diff(0, 0, (__be32 *)r.icmp, sizeof(r) - sizeof(r.ip), 0));
	__builtin_memcpy(&r.icmp[2], &c, 2);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) || reject_swap_mac(skb))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	return forwarded(skb, SLUICE_FWD_ICMP_REJECT, (int)bpf_redirect(skb->ifindex, 0));
}

static __always_inline int reject_ip6(struct __sk_buff *skb, const struct lb_pkt *p)
{
	struct reject6 r = {};
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &r.quoted, sizeof(r.quoted)))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	if (bpf_skb_load_bytes(skb, p->l4_off, r.l4, REJECT_QUOTE))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	__u32 payload = sizeof(r) - sizeof(r.ip6);
	r.ip6.version = 6;
	r.ip6.hop_limit = 64;
	r.ip6.nexthdr = IPPROTO_ICMPV6;
	r.ip6.payload_len = bpf_htons(payload);
	r.ip6.saddr = r.quoted.daddr;
	r.ip6.daddr = r.quoted.saddr;
	r.icmp[0] = ICMPV6_DEST_UNREACH;
	r.icmp[1] = ICMPV6_PORT_UNREACH;
	struct reject6_csum cs = {};
	__builtin_memcpy(cs.saddr, &r.ip6.saddr, 16);
	__builtin_memcpy(cs.daddr, &r.ip6.daddr, 16);
	cs.len = bpf_htonl(payload);
	cs.nexthdr = IPPROTO_ICMPV6;
	__builtin_memcpy(cs.icmp, r.icmp, 8);
	cs.quoted = r.quoted;
	__builtin_memcpy(cs.l4, r.l4, REJECT_QUOTE);
	__u16 c = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&cs, sizeof(cs), 0));
	__builtin_memcpy(&r.icmp[2], &c, 2);
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0) || reject_swap_mac(skb))
		return drop(skb, SLUICE_DROP_NO_SERVICE_BACKEND);
	return forwarded(skb, SLUICE_FWD_ICMP_REJECT, (int)bpf_redirect(skb->ifindex, 0));
}

static __noinline int reject(struct __sk_buff *skb, const struct lb_pkt *p)
{
	return p->t.family == SLUICE_AF_INET ? reject_ip4(skb, p) : reject_ip6(skb, p);
}

#endif
