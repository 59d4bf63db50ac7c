/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Endpoint lookups and delivery to a pod on this node with bpf_redirect_peer. */
#ifndef SLUICE_LIB_ENDPOINTS_H
#define SLUICE_LIB_ENDPOINTS_H

#include "counters.h"

static __always_inline struct endpoint_info *lookup_ip4_endpoint(__be32 addr)
{
	struct endpoint_key key = {};
	__builtin_memcpy(key.addr, &addr, 4);
	key.family = SLUICE_AF_INET;
	return bpf_map_lookup_elem(&endpoints, &key);
}

static __always_inline struct endpoint_info *lookup_ip6_endpoint(const struct in6_addr *addr)
{
	struct endpoint_key key = {};
	__builtin_memcpy(key.addr, addr, 16);
	key.family = SLUICE_AF_INET6;
	return bpf_map_lookup_elem(&endpoints, &key);
}

static __always_inline struct endpoint_info *lookup_endpoint_by_ifindex(__u32 ifindex)
{
	return bpf_map_lookup_elem(&endpoint_ifaces, &ifindex);
}

/* Decrement the IPv4 TTL with an incremental checksum update (as the kernel's ip_decrease_ttl). */
static __always_inline void ip4_decrease_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check;
	check += (__u32)bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/* Rewrite L2 for a pod on this node and hand the packet to its interface's ingress, skipping
 * the node's stack. `eth` must have been bounds-checked by the caller. */
static __always_inline int redirect_to_endpoint(struct __sk_buff *skb, struct ethhdr *eth,
						const struct endpoint_info *ep)
{
	mac_copy(eth->h_dest, ep->mac);
	mac_copy(eth->h_source, ep->node_mac);
	return forwarded(skb, SLUICE_FWD_LOCAL_ENDPOINT, bpf_redirect_peer(ep->ifindex, 0));
}

#endif
