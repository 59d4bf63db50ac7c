/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The pod's gateway: ARP and IPv6 neighbour solicitations for the link-local gateway addresses
 * (169.254.1.1, fe80::1) are answered here, on the pod's own interface, with the host-side MAC.
 * The node needs no address per pod and its stack never sees the pod's neighbour discovery. */
#ifndef SLUICE_LIB_GATEWAY_H
#define SLUICE_LIB_GATEWAY_H

#include "counters.h"

#define ARPOP_REQUEST_BE bpf_htons(1)
#define ARPOP_REPLY_BE bpf_htons(2)
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define ND_OPT_SOURCE_LL 1
#define ND_OPT_TARGET_LL 2

/* fe80::1, built in registers: clang puts constant arrays in .rodata beside the load-time
 * configuration, which some clang versions describe with invalid BTF. */
static __always_inline int ip6_is_gateway(const __u32 *a)
{
	return a[0] == bpf_htonl(SLUICE_GATEWAY_IPV6_WORD0) && a[1] == 0 && a[2] == 0 &&
	       a[3] == bpf_htonl(SLUICE_GATEWAY_IPV6_WORD3);
}

static __always_inline void ip6_set_gateway(__u32 *a)
{
	a[0] = bpf_htonl(SLUICE_GATEWAY_IPV6_WORD0);
	a[1] = 0;
	a[2] = 0;
	a[3] = bpf_htonl(SLUICE_GATEWAY_IPV6_WORD3);
}

/* ARP for Ethernet and IPv4, the only kind a pod sends. */
struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

/* ARP from a pod: a sender that is not the pod is spoofing; a request for the gateway is
 * answered back out of the same interface; anything else goes to the stack. */
static __always_inline int handle_arp(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct arp_eth *arp = (void *)(eth + 1);
	if ((void *)(arp + 1) > data_end)
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != ETH_ALEN ||
	    arp->plen != 4)
		return drop(skb, SLUICE_DROP_MALFORMED);
	__be32 own;
	__builtin_memcpy(&own, ep->ipv4, 4);
	if (!mac_equal(arp->sha, ep->mac) || (arp->spa != 0 && arp->spa != own))
		return drop(skb, SLUICE_DROP_ARP_SPOOFED);
	if (arp->op != ARPOP_REQUEST_BE || arp->tpa != bpf_htonl(SLUICE_GATEWAY_IPV4))
		return to_stack(skb);

	arp->op = ARPOP_REPLY_BE;
	mac_copy(arp->tha, arp->sha);
	arp->tpa = arp->spa;
	mac_copy(arp->sha, ep->node_mac);
	arp->spa = bpf_htonl(SLUICE_GATEWAY_IPV4);
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, ep->node_mac);
	return forwarded(skb, SLUICE_FWD_ARP_REPLY, (int)bpf_redirect(skb->ifindex, 0));
}

/* A neighbour advertisement for fe80::1, built whole: Ethernet, IPv6 and ICMPv6 with the
 * target link-layer address option. */
struct nd_advert {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;
	__u8 opt_mac[ETH_ALEN];
} __attribute__((packed));

/* One's complement sum over the ICMPv6 pseudo-header and message of `na`. */
static __always_inline __sum16 nd_checksum(const struct nd_advert *na)
{
	const __u16 *w;
	__u32 sum = 0;
	w = (const __u16 *)(const void *)&na->ip6.saddr;
#pragma unroll
	for (int i = 0; i < 16; i++) /* source and destination addresses */
		sum += w[i];
	sum += bpf_htons(32);           /* upper-layer length */
	sum += bpf_htons(IPPROTO_ICMPV6); /* next header */
	w = (const __u16 *)(const void *)&na->type;
#pragma unroll
	for (int i = 0; i < 16; i++) /* 32 bytes of ICMPv6 */
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__sum16)~sum;
}

/* Answer a neighbour solicitation for the gateway. Returns -1 when `ip6` is not one. */
static __noinline int handle_nd_solicit(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	__u8 *icmp = (void *)(ip6 + 1);
	if ((void *)(icmp + 24) > data_end)
		return -1;
	if (ip6->nexthdr != IPPROTO_ICMPV6 || icmp[0] != ND_NEIGHBOR_SOLICIT || icmp[1] != 0)
		return -1;
	if (!ip6_is_gateway((const __u32 *)(icmp + 8)))
		return -1;
	/* A solicitation from the unspecified address is duplicate address detection: not ours. */
	if (ip6->saddr.in6_u.u6_addr32[0] == 0 && ip6->saddr.in6_u.u6_addr32[1] == 0 &&
	    ip6->saddr.in6_u.u6_addr32[2] == 0 && ip6->saddr.in6_u.u6_addr32[3] == 0)
		return to_stack(skb);

	/* Two bytes in front put the IPv6 header on a 4-byte boundary: the verifier refuses
	 * misaligned stack stores. */
	struct {
		__u8 pad[2];
		struct nd_advert na;
	} __attribute__((aligned(8))) buf = {};
	struct nd_advert *na = &buf.na;
	mac_copy(na->eth.h_dest, eth->h_source);
	mac_copy(na->eth.h_source, ep->node_mac);
	na->eth.h_proto = bpf_htons(ETH_P_IPV6);
	na->ip6.version = 6;
	na->ip6.payload_len = bpf_htons(32);
	na->ip6.nexthdr = IPPROTO_ICMPV6;
	na->ip6.hop_limit = 255;
	ip6_set_gateway(na->ip6.saddr.in6_u.u6_addr32);
	__builtin_memcpy(&na->ip6.daddr, &ip6->saddr, 16);
	na->type = ND_NEIGHBOR_ADVERT;
	na->flags = bpf_htonl(0xE0000000); /* router, solicited, override */
	ip6_set_gateway((__u32 *)(void *)na->target);
	na->opt_type = ND_OPT_TARGET_LL;
	na->opt_len = 1;
	mac_copy(na->opt_mac, ep->node_mac);
	na->checksum = nd_checksum(na);

	if (skb->len != sizeof(*na) && bpf_skb_change_tail(skb, sizeof(*na), 0))
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (bpf_skb_store_bytes(skb, 0, na, sizeof(*na), 0))
		return drop(skb, SLUICE_DROP_MALFORMED);

	return forwarded(skb, SLUICE_FWD_ND_REPLY, (int)bpf_redirect(skb->ifindex, 0));
}

#endif
