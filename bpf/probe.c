// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Feature probes: the agent loads each program at start; a program that the verifier accepts
 * proves the kernel has its helper. Never attached. */
#define SLUICE_POINT SLUICE_POINT_FROM_POD /* unused: probes count nothing */
#include "lib/common.h"

SEC("classifier")
int probe_redirect_peer(struct __sk_buff *skb)
{
	return (int)bpf_redirect_peer(skb->ifindex, 0);
}

SEC("classifier")
int probe_redirect_neigh(struct __sk_buff *skb)
{
	return (int)bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
