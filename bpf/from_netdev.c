// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Entry point on the node's uplink (tcx ingress): packets for a pod on this node are handed
 * straight to the pod's interface with bpf_redirect_peer; everything else goes to the stack.
 * In legacy host routing this program passes everything. */
#define SLUICE_POINT SLUICE_POINT_FROM_NETDEV
#include "lib/common.h"
#include "lib/counters.h"
#include "lib/endpoints.h"

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	if (!host_routing_bpf() || skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_OK;
		struct endpoint_info *ep = lookup_ip4_endpoint(ip->daddr);
		if (!ep || ip->ttl <= 1)
			return TC_ACT_OK;
		ip4_decrease_ttl(ip);
		return redirect_to_endpoint(skb, eth, ep);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		struct endpoint_info *ep = lookup_ip6_endpoint(&ip6->daddr);
		if (!ep || ip6->hop_limit <= 1)
			return TC_ACT_OK;
		ip6->hop_limit--;
		return redirect_to_endpoint(skb, eth, ep);
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
