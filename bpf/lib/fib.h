/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding to anything that is not a local pod: the kernel's FIB decides the next hop and
 * bpf_redirect_neigh resolves its L2 address, so the packet skips the node's IP stack. Whatever
 * the FIB will not forward (local addresses, no route, MTU exceeded) goes to the stack, which
 * answers with the right ICMP error. */
#ifndef SLUICE_LIB_FIB_H
#define SLUICE_LIB_FIB_H

#include "counters.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif


/* `ip` must have been bounds-checked; returns a tc verdict. */
static __always_inline int fib_forward_ip4(struct __sk_buff *skb, struct iphdr *ip)
{
	if (ip->ttl <= 1)
		return to_stack(skb);
	struct bpf_fib_lookup params = {};
	params.family = AF_INET;
	params.tos = ip->tos;
	params.l4_protocol = ip->protocol;
	/* tot_len 0: the helper checks the MTU against the skb itself, which understands GSO
	 * super-packets; a header length would send every TSO segment to the stack. */
	params.tot_len = 0;
	params.ipv4_src = ip->saddr;
	params.ipv4_dst = ip->daddr;
	params.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &params, sizeof(params), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return to_stack(skb);
	ip4_decrease_ttl(ip);
	struct bpf_redir_neigh nh = {};
	nh.nh_family = AF_INET;
	nh.ipv4_nh = params.ipv4_dst;
	return forwarded(skb, SLUICE_FWD_FIB, (int)bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0));
}

static __always_inline int fib_forward_ip6(struct __sk_buff *skb, struct ipv6hdr *ip6)
{
	if (ip6->hop_limit <= 1)
		return to_stack(skb);
	struct bpf_fib_lookup params = {};
	params.family = AF_INET6;
	params.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0FFFFFFF);
	params.l4_protocol = ip6->nexthdr;
	params.tot_len = 0; /* as for IPv4: let the helper check GSO packets against the MTU */
	__builtin_memcpy(params.ipv6_src, &ip6->saddr, 16);
	__builtin_memcpy(params.ipv6_dst, &ip6->daddr, 16);
	params.ifindex = skb->ifindex;
	long rc = bpf_fib_lookup(skb, &params, sizeof(params), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return to_stack(skb);
	ip6->hop_limit--;
	struct bpf_redir_neigh nh = {};
	nh.nh_family = AF_INET6;
	__builtin_memcpy(nh.ipv6_nh, params.ipv6_dst, 16);
	return forwarded(skb, SLUICE_FWD_FIB, (int)bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0));
}

#endif
