// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Entry point on the node's uplink (tcx ingress). Service translation first (NodePort,
 * external IPs and load-balancer addresses; replies of NodePort flows SNAT'd to another node),
 * then packets for a pod on this node are handed straight to the pod's interface with
 * bpf_redirect_peer; everything else goes to the stack. In legacy host routing only the
 * service translation runs and the stack delivers. */
#define SLUICE_POINT SLUICE_POINT_FROM_NETDEV
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/endpoints.h"
#include "lib/fib.h"
#include "lib/lb_packet.h"
#include "lib/policy.h"

static __always_inline int deliver_ip4(struct __sk_buff *skb, int own_route)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	struct endpoint_info *ep = lookup_ip4_endpoint(ip->daddr);
	if (ep && host_routing_bpf() && ip->ttl > 1) {
		ip4_decrease_ttl(ip);
		return deliver_to_endpoint(skb, eth, ep);
	}
	if (own_route && !ep)
		return fib_forward_ip4(skb, ip);
	return TC_ACT_OK;
}

static __always_inline int deliver_ip6(struct __sk_buff *skb, int own_route)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_OK;
	struct endpoint_info *ep = lookup_ip6_endpoint(&ip6->daddr);
	if (ep && host_routing_bpf() && ip6->hop_limit > 1) {
		ip6->hop_limit--;
		return deliver_to_endpoint(skb, eth, ep);
	}
	if (own_route && !ep)
		return fib_forward_ip6(skb, ip6);
	return TC_ACT_OK;
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	if (skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	int verdict = TC_ACT_OK;
	int lb = lb_packet(skb, 1, &verdict);
	if (lb == LB_VERDICT)
		return verdict;
	if (lb == LB_NONE && !host_routing_bpf())
		return TC_ACT_OK;

	__be16 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2))
		return TC_ACT_OK;
	if (proto == bpf_htons(ETH_P_IP))
		return deliver_ip4(skb, lb == LB_NODE_SOURCE);
	if (proto == bpf_htons(ETH_P_IPV6))
		return deliver_ip6(skb, lb == LB_NODE_SOURCE);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
