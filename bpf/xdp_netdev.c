// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* XDP on the node's uplink: the fast path of NodePort and load-balancer flows that this node
 * SNATs to a backend on another node. Such a flow enters and leaves by the uplink, so once its
 * conntrack entries exist (the tc path writes them on the first packet), each later packet of
 * either direction is rewritten here and transmitted with XDP_TX / XDP_REDIRECT, before the
 * kernel allocates an skb. Everything else passes to tc unchanged. When asked
 * (CONFIG_XDP_DROP_UNMATCHED), packets for the NodePort range of this node's address that no
 * frontend matches are dropped here. */
#define SLUICE_POINT SLUICE_POINT_FROM_NETDEV
#include "lib/common.h"
#include "lib/conntrack.h"
#include "lib/lb.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

volatile const __u32 CONFIG_XDP_DROP_UNMATCHED = 0;
volatile const __u32 CONFIG_NODEPORT_MIN = 30000;
volatile const __u32 CONFIG_NODEPORT_MAX = 32767;

/* Packets handled in XDP, per CPU, by enum sluice_xdp_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, SLUICE_XDP_COUNTER_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xdp_counters SEC(".maps");

static __always_inline int xdp_count(struct xdp_md *ctx, __u32 which, int verdict)
{
	struct traffic_counter *c = bpf_map_lookup_elem(&xdp_counters, &which);
	if (c) {
		c->packets += 1;
		c->bytes += ctx->data_end - ctx->data;
	}
	return verdict;
}

/* One's-complement update of a 16-bit checksum by a 32-bit difference (bpf_csum_diff). */
static __always_inline void csum_apply(__sum16 *sum, __s64 diff)
{
	__u64 s = (__u16)~*sum;
	s += (__u32)diff;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	*sum = (__sum16)~(__u16)s;
}

static __always_inline int node_port_address(const struct ct_key *t)
{
	if (t->family == SLUICE_AF_INET) {
		__u32 a;
		__builtin_memcpy(&a, t->daddr, 4);
		return a != 0 && a == CONFIG_NODE_IPV4;
	}
	const __u32 *d = (const __u32 *)t->daddr;
	return (CONFIG_NODE_IPV6_0 | CONFIG_NODE_IPV6_1 | CONFIG_NODE_IPV6_2 | CONFIG_NODE_IPV6_3) &&
	       d[0] == CONFIG_NODE_IPV6_0 && d[1] == CONFIG_NODE_IPV6_1 && d[2] == CONFIG_NODE_IPV6_2 &&
	       d[3] == CONFIG_NODE_IPV6_3;
}

SEC("xdp")
int xdp_netdev(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	struct ct_key t = {};
	struct iphdr *ip = 0;
	struct ipv6hdr *ip6 = 0;
	__u8 *l4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3FFF)))
			return XDP_PASS;
		__builtin_memcpy(t.saddr, &ip->saddr, 4);
		__builtin_memcpy(t.daddr, &ip->daddr, 4);
		t.proto = ip->protocol;
		t.family = SLUICE_AF_INET;
		l4 = (__u8 *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		__builtin_memcpy(t.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.daddr, &ip6->daddr, 16);
		t.proto = ip6->nexthdr;
		t.family = SLUICE_AF_INET6;
		l4 = (__u8 *)(ip6 + 1);
	} else {
		return XDP_PASS;
	}
	if (t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP)
		return XDP_PASS;
	__u32 csum_at = t.proto == IPPROTO_TCP ? 16 : 6;
	if ((void *)(l4 + csum_at + 2) > data_end || (void *)(l4 + 14) > data_end)
		return XDP_PASS;
	__builtin_memcpy(&t.sport, l4, 2);
	__builtin_memcpy(&t.dport, l4 + 2, 2);
	__u8 tcp_flags = t.proto == IPPROTO_TCP ? l4[13] : 0;

	struct ct_entry *ct = bpf_map_lookup_elem(&lb_ct, &t);
	if (!ct) {
		if (CONFIG_XDP_DROP_UNMATCHED && node_port_address(&t)) {
			__u16 port = bpf_ntohs(t.dport);
			if (port >= CONFIG_NODEPORT_MIN && port <= CONFIG_NODEPORT_MAX &&
			    !lookup_frontend(t.daddr, t.dport, t.proto, t.family, 0))
				return xdp_count(ctx, SLUICE_XDP_DROPPED_NO_FRONTEND, XDP_DROP);
		}
		return XDP_PASS;
	}
	/* Only flows that enter and leave by the uplink: SNAT'd both ways. */
	__u8 both = SLUICE_CT_F_NEW_SRC | SLUICE_CT_F_NEW_DST;
	if ((ct->flags & both) != both)
		return XDP_PASS;
	if (!(ct->flags & SLUICE_CT_F_REPLY)) {
		__u32 id = ct->backend_id;
		if (!bpf_map_lookup_elem(&lb_backends, &id))
			return XDP_PASS; /* the backend is gone: tc starts the flow over */
	}
	struct ct_entry e = *ct;

	/* The next hop first: a packet XDP cannot send must reach tc unchanged. */
	struct bpf_fib_lookup fib = {};
	fib.ifindex = ctx->ingress_ifindex;
	fib.l4_protocol = t.proto;
	__u8 ttl = ip ? ip->ttl : (ip6 ? ip6->hop_limit : 0);
	if (ttl <= 1)
		return XDP_PASS;
	if (t.family == SLUICE_AF_INET) {
		fib.family = AF_INET;
		__builtin_memcpy(&fib.ipv4_src, e.new_saddr, 4);
		__builtin_memcpy(&fib.ipv4_dst, e.new_daddr, 4);
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_src, e.new_saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, e.new_daddr, 16);
	}
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	/* The helper call invalidated every packet pointer: take them again, by family. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__u32 l3len = t.family == SLUICE_AF_INET ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	l4 = (__u8 *)(eth + 1) + l3len;
	if ((void *)(l4 + 18) > data_end)
		return XDP_PASS;
	ct_touch(ct, tcp_flags);
	__sum16 *l4sum = (__sum16 *)(l4 + csum_at);
	__be16 old_ports[2], ports[2] = {e.new_sport, e.new_dport};
	__builtin_memcpy(old_ports, l4, 4);
	__s64 port_diff = bpf_csum_diff((__be32 *)old_ports, 4, (__be32 *)ports, 4, 0);
	__builtin_memcpy(l4, ports, 4);
	__s64 addr_diff;
	int udp_nocsum = 0;
	if (t.family == SLUICE_AF_INET) {
		struct iphdr *h = (void *)(eth + 1);
		if ((void *)(h + 1) > data_end)
			return XDP_PASS;
		udp_nocsum = t.proto == IPPROTO_UDP && *l4sum == 0;
		__be32 old[2] = {h->saddr, h->daddr}, naddr[2];
		__builtin_memcpy(&naddr[0], e.new_saddr, 4);
		__builtin_memcpy(&naddr[1], e.new_daddr, 4);
		addr_diff = bpf_csum_diff(old, 8, naddr, 8, 0);
		h->saddr = naddr[0];
		h->daddr = naddr[1];
		/* TTL and protocol are one 16-bit word of the header checksum. */
		__be32 ow = 0, nw = 0;
		__builtin_memcpy(&ow, &h->ttl, 2);
		h->ttl--;
		__builtin_memcpy(&nw, &h->ttl, 2);
		csum_apply(&h->check, addr_diff);
		csum_apply(&h->check, bpf_csum_diff(&ow, 4, &nw, 4, 0));
	} else {
		struct ipv6hdr *h = (void *)(eth + 1);
		if ((void *)(h + 1) > data_end)
			return XDP_PASS;
		__u32 old[8], naddr[8];
		__builtin_memcpy(old, &h->saddr, 32);
		__builtin_memcpy(naddr, e.new_saddr, 16);
		__builtin_memcpy(naddr + 4, e.new_daddr, 16);
		addr_diff = bpf_csum_diff(old, 32, naddr, 32, 0);
		__builtin_memcpy(&h->saddr, naddr, 32);
		h->hop_limit--;
	}
	if (!udp_nocsum) {
		csum_apply(l4sum, addr_diff);
		csum_apply(l4sum, port_diff);
		if (t.proto == IPPROTO_UDP && *l4sum == 0)
			*l4sum = (__sum16)0xffff;
	}
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	if (fib.ifindex == ctx->ingress_ifindex)
		return xdp_count(ctx, SLUICE_XDP_FORWARDED, XDP_TX);
	return xdp_count(ctx, SLUICE_XDP_FORWARDED, (int)bpf_redirect(fib.ifindex, 0));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
