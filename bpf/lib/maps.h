/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The maps every object shares, pinned by name in the node's bpffs directory so that an agent
 * restart finds them again and traffic keeps flowing while it is away. */
#ifndef SLUICE_LIB_MAPS_H
#define SLUICE_LIB_MAPS_H

#include "common.h"

/* Pods on this node by address: where to deliver a packet addressed to a pod. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, SLUICE_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Pods on this node by host-side ifindex: who is allowed to send from a pod interface. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, SLUICE_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_ifaces SEC(".maps");

/* Dropped packets and bytes per drop reason (enum sluice_drop_reason), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, SLUICE_DROP_REASON_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_counters SEC(".maps");

/* Packets and bytes per forwarding decision (enum sluice_forward_kind), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, SLUICE_FWD_KIND_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fwd_counters SEC(".maps");

#endif
