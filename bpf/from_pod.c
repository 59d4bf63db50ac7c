// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Entry point on the host side of every pod veth (tcx ingress): everything a pod sends.
 * Order: who sent it (anti-spoofing), the pod's gateway (ARP/ND), service translation (replies
 * of NodePort flows, ClusterIPs when socket LB is off) wrapped by the pod's egress policy, then
 * delivery (a pod on this node only if its ingress policy allows) — to a pod on this node
 * with bpf_redirect_peer, elsewhere with fib_lookup + redirect_neigh, or to the node's stack in
 * legacy host routing and for whatever the datapath does not forward itself. */
#define SLUICE_POINT SLUICE_POINT_FROM_POD
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/endpoints.h"
#include "lib/fib.h"
#include "lib/gateway.h"
#include "lib/lb_packet.h"
#include "lib/policy.h"

/* Deliver an IPv4 packet by its (possibly translated) destination. `own_route`: the datapath
 * must forward it even in legacy host routing (it carries a node or service address as its
 * source, which the stack would refuse as martian). */
static __noinline int route_ip4(struct __sk_buff *skb, int own_route)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (!host_routing_bpf() && !own_route)
		return to_stack(skb);

	struct endpoint_info *dst = lookup_ip4_endpoint(ip->daddr);
	if (dst) {
		if (ip->ttl <= 1)
			return to_stack(skb);
		ip4_decrease_ttl(ip);
		return deliver_to_endpoint(skb, eth, dst);
	}
	return fib_forward_ip4(skb, ip);
}

static __noinline int from_pod_ip4(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return drop(skb, SLUICE_DROP_MALFORMED);
	__be32 own;
	__builtin_memcpy(&own, ep->ipv4, 4);
	if (!(ep->flags & SLUICE_EP_HAS_IPV4) || ip->saddr != own)
		return drop(skb, SLUICE_DROP_INVALID_SOURCE_IP);

	policy_egress_begin(skb);
	int verdict = TC_ACT_OK;
	int lb = lb_packet(skb, 0, &verdict);
	if (lb == LB_VERDICT)
		return verdict;
	verdict = policy_egress_end(skb, ep, lb != LB_NONE);
	if (verdict == POLICY_PROXY_REPLY)
		return to_proxy_stack(skb);
	if (verdict != POLICY_CONTINUE)
		return verdict;
	return route_ip4(skb, lb == LB_NODE_SOURCE);
}

static __always_inline int is_link_scope(const struct in6_addr *a)
{
	__u8 b0 = a->in6_u.u6_addr8[0], b1 = a->in6_u.u6_addr8[1];
	return b0 == 0xff || (b0 == 0xfe && (b1 & 0xc0) == 0x80);
}

static __noinline int route_ip6(struct __sk_buff *skb, int own_route)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (!host_routing_bpf() && !own_route)
		return to_stack(skb);

	struct endpoint_info *dst = lookup_ip6_endpoint(&ip6->daddr);
	if (dst) {
		if (ip6->hop_limit <= 1)
			return to_stack(skb);
		ip6->hop_limit--;
		return deliver_to_endpoint(skb, eth, dst);
	}
	return fib_forward_ip6(skb, ip6);
}

static __noinline int from_pod_ip6(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	int verdict = handle_nd_solicit(skb, ep);
	if (verdict >= 0)
		return verdict;

	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (!(ep->flags & SLUICE_EP_HAS_IPV6) || !ip6_equal(&ip6->saddr, ep->ipv6)) {
		/* Link-local and unspecified sources may speak only to the link (neighbour
		 * discovery, MLD); the node never forwards such packets. */
		__u32 *s = ip6->saddr.in6_u.u6_addr32;
		int unspecified = (s[0] | s[1] | s[2] | s[3]) == 0;
		if ((unspecified || is_link_scope(&ip6->saddr)) && is_link_scope(&ip6->daddr))
			return to_stack(skb);
		return drop(skb, SLUICE_DROP_INVALID_SOURCE_IP);
	}
	if (is_link_scope(&ip6->daddr))
		return route_ip6(skb, 0);

	policy_egress_begin(skb);
	verdict = TC_ACT_OK;
	int lb = lb_packet(skb, 0, &verdict);
	if (lb == LB_VERDICT)
		return verdict;
	verdict = policy_egress_end(skb, ep, lb != LB_NONE);
	if (verdict == POLICY_PROXY_REPLY)
		return to_proxy_stack(skb);
	if (verdict != POLICY_CONTINUE)
		return verdict;
	return route_ip6(skb, lb == LB_NODE_SOURCE);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct endpoint_info *ep = lookup_endpoint_by_ifindex(skb->ifindex);
	if (!ep)
		return drop(skb, SLUICE_DROP_UNKNOWN_ENDPOINT);

	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, SLUICE_DROP_MALFORMED);
	if (!mac_equal(eth->h_source, ep->mac))
		return drop(skb, SLUICE_DROP_INVALID_SOURCE_MAC);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return from_pod_ip4(skb, ep);
	case bpf_htons(ETH_P_IPV6):
		return from_pod_ip6(skb, ep);
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb, ep);
	default:
		return drop(skb, SLUICE_DROP_UNSUPPORTED_L3);
	}
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
