/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Address and port rewriting for service translation, IPv4 and IPv6, with the IP, TCP, UDP
 * and ICMPv6 checksums updated incrementally (the pseudo-header included). */
#ifndef SLUICE_LIB_NAT_H
#define SLUICE_LIB_NAT_H

#include "common.h"

#define IP4_CSUM_OFF 10
#define IP4_SADDR_OFF 12
#define IP4_DADDR_OFF 16
#define IP6_SADDR_OFF 8
#define IP6_DADDR_OFF 24

/* A parsed packet: its tuple and where its headers are. */
struct lb_pkt {
	struct ct_key t;
	__u32 l3_off;
	__u32 l4_off;
	__u32 csum_off;  /* the L4 checksum, 0 when the protocol has none to update */
	__u8 csum_flags; /* BPF_F_MARK_MANGLED_0 for UDP */
	__u8 tcp_flags;
	__u8 icmp_type;  /* ICMP and ICMPv6 */
	__u8 pad;
};

/* Replace the source (which == 0) or destination (which == 1) address. */
static __always_inline int nat_addr(struct __sk_buff *skb, const struct lb_pkt *p, int which,
				    const __u8 *old, const __u8 *new)
{
	if (p->t.family == SLUICE_AF_INET) {
		__be32 o, n;
		__builtin_memcpy(&o, old, 4);
		__builtin_memcpy(&n, new, 4);
		if (o == n)
			return 0;
		__u32 off = p->l3_off + (which ? IP4_DADDR_OFF : IP4_SADDR_OFF);
		if (p->csum_off &&
		    bpf_l4_csum_replace(skb, p->csum_off, o, n, BPF_F_PSEUDO_HDR | p->csum_flags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, p->l3_off + IP4_CSUM_OFF, o, n, 4))
			return -1;
		return (int)bpf_skb_store_bytes(skb, off, &n, 4, 0);
	}
	__u32 o6[4], n6[4];
	__builtin_memcpy(o6, old, 16);
	__builtin_memcpy(n6, new, 16);
	__u32 off = p->l3_off + (which ? IP6_DADDR_OFF : IP6_SADDR_OFF);
	if (p->csum_off) {
		__s64 diff = bpf_csum_diff(o6, 16, n6, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, p->csum_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR | p->csum_flags))
			return -1;
	}
	return (int)bpf_skb_store_bytes(skb, off, n6, 16, 0);
}

/* Replace the source (which == 0) or destination (which == 1) port. */
static __always_inline int nat_port(struct __sk_buff *skb, const struct lb_pkt *p, int which, __be16 old,
				    __be16 new)
{
	if (old == new || (p->t.proto != IPPROTO_TCP && p->t.proto != IPPROTO_UDP))
		return 0;
	if (p->csum_off && bpf_l4_csum_replace(skb, p->csum_off, old, new, p->csum_flags | 2))
		return -1;
	return (int)bpf_skb_store_bytes(skb, p->l4_off + (which ? 2 : 0), &new, 2, 0);
}

/* Apply a conntrack entry's rewrite to the packet and to p->t. */
static __always_inline int nat_apply(struct __sk_buff *skb, struct lb_pkt *p, const struct ct_entry *ct)
{
	if (ct->flags & SLUICE_CT_F_NEW_SRC) {
		if (nat_addr(skb, p, 0, p->t.saddr, ct->new_saddr) || nat_port(skb, p, 0, p->t.sport, ct->new_sport))
			return -1;
		__builtin_memcpy(p->t.saddr, ct->new_saddr, 16);
		p->t.sport = ct->new_sport;
	}
	if (ct->flags & SLUICE_CT_F_NEW_DST) {
		if (nat_addr(skb, p, 1, p->t.daddr, ct->new_daddr) || nat_port(skb, p, 1, p->t.dport, ct->new_dport))
			return -1;
		__builtin_memcpy(p->t.daddr, ct->new_daddr, 16);
		p->t.dport = ct->new_dport;
	}
	return 0;
}

/* Parse an Ethernet frame's IPv4/IPv6 header and TCP/UDP ports (ICMP: type only). Returns 0
 * when the packet is IP and parsed, -1 otherwise (not IP, fragments, IPv6 extension headers:
 * none of these carry a service flow the datapath translates). */
static __always_inline int lb_parse(struct __sk_buff *skb, struct lb_pkt *p)
{
	__be16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2))
		return -1;
	p->l3_off = ETH_HLEN;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl < 5)
			return -1;
		if (ip.frag_off & bpf_htons(0x1FFF)) /* not the first fragment: no ports */
			return -1;
		__builtin_memcpy(p->t.saddr, &ip.saddr, 4);
		__builtin_memcpy(p->t.daddr, &ip.daddr, 4);
		p->t.proto = ip.protocol;
		p->t.family = SLUICE_AF_INET;
		p->l4_off = ETH_HLEN + ip.ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(p->t.saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6.daddr, 16);
		p->t.proto = ip6.nexthdr;
		p->t.family = SLUICE_AF_INET6;
		p->l4_off = ETH_HLEN + sizeof(ip6);
	} else {
		return -1;
	}
	switch (p->t.proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, p->l4_off, hdr, sizeof(hdr)))
			return -1;
		__builtin_memcpy(&p->t.sport, hdr, 2);
		__builtin_memcpy(&p->t.dport, hdr + 2, 2);
		p->tcp_flags = hdr[13];
		p->csum_off = p->l4_off + 16;
		return 0;
	}
	case IPPROTO_UDP: {
		__be16 h[4];
		if (bpf_skb_load_bytes(skb, p->l4_off, h, sizeof(h)))
			return -1;
		p->t.sport = h[0];
		p->t.dport = h[1];
		p->csum_off = p->l4_off + 6;
		p->csum_flags = BPF_F_MARK_MANGLED_0;
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, p->l4_off, &p->icmp_type, 1))
			return -1;
		p->csum_off = p->t.proto == IPPROTO_ICMPV6 ? p->l4_off + 2 : 0;
		return 0;
	default:
		return -1;
	}
}

#endif
