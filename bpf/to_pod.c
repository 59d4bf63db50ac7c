// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Entry point on the host side of every pod veth (tcx egress): what the node's stack delivers
 * to a pod — everything in legacy host routing, and in eBPF host routing what the node itself
 * sends or routes (packets the datapath redirects to a pod skip this hook and are checked where
 * they are redirected). It enforces the pod's ingress policy; the node proxy's upstream
 * connections (marked FROM_PROXY) pass the layer-7 redirect that sent their client to it. */
#define SLUICE_POINT SLUICE_POINT_TO_POD
#include "lib/common.h"
#include "lib/policy.h"

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct endpoint_info *ep = lookup_endpoint_by_ifindex(skb->ifindex);
	if (!ep)
		return TC_ACT_OK;
	int v = policy_ingress(skb, ep);
	/* A flow for the proxy that the stack routed here (legacy host routing, or the node's own
	 * traffic) cannot be redirected at this hook: dropped and counted, never let past the
	 * layer-7 rules. */
	if (v == POLICY_PROXY || v == POLICY_PROXY_REPLY)
		return drop(skb, SLUICE_DROP_PROXY);
	return v == POLICY_CONTINUE ? TC_ACT_OK : v;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
