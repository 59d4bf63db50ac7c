/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, load-time configuration and small helpers shared by every datapath object. */
#ifndef SLUICE_LIB_COMMON_H
#define SLUICE_LIB_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "abi/sluice_abi.h"

/* Set by the agent at load time (read-only globals); the objects are never recompiled. */
volatile const __u32 CONFIG_HOST_ROUTING = SLUICE_HOST_ROUTING_BPF;
volatile const __u32 CONFIG_MONITOR_AGGREGATION = SLUICE_MONITOR_MEDIUM;
volatile const __u32 CONFIG_DROP_EVENT_RATE = 1000; /* drop events per CPU-second */
volatile const __u32 CONFIG_MAGLEV_SIZE = SLUICE_MAGLEV_DEFAULT_SIZE; /* entries, prime */
/* This node's addresses (network byte order): the source of NodePort flows it forwards to
 * another node (SNAT). Zero when the node has no address of that family. */
volatile const __u32 CONFIG_NODE_IPV4 = 0;
volatile const __u32 CONFIG_NODE_IPV6_0 = 0;
volatile const __u32 CONFIG_NODE_IPV6_1 = 0;
volatile const __u32 CONFIG_NODE_IPV6_2 = 0;
volatile const __u32 CONFIG_NODE_IPV6_3 = 0;

/* Each entry object defines SLUICE_POINT (enum sluice_obs_point) before including the
 * library; counters and events carry it. */
#ifndef SLUICE_POINT
#error "define SLUICE_POINT before including the datapath library"
#endif

/* skb->data and skb->data_end, read so that the compiler cannot keep a pointer into the
 * context (ctx + offset) across calls: the verifier refuses a modified context pointer. */
static __always_inline void *skb_data(struct __sk_buff *skb)
{
	void *p;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return p;
}

static __always_inline void *skb_data_end(struct __sk_buff *skb)
{
	void *p;
	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return p;
}

static __always_inline int host_routing_bpf(void)
{
	return CONFIG_HOST_ROUTING == SLUICE_HOST_ROUTING_BPF;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

static __always_inline int ip6_equal(const struct in6_addr *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a->in6_u.u6_addr32;
	const __u32 *y = (const __u32 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

#endif
