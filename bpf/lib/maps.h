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

/* Dropped packets and bytes, per CPU; index point * SLUICE_DROP_REASON_MAX + reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, SLUICE_DROP_REASON_MAX * SLUICE_POINT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_counters SEC(".maps");

/* Forwarded packets and bytes, per CPU; index point * SLUICE_FWD_KIND_MAX + kind. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, SLUICE_FWD_KIND_MAX * SLUICE_POINT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fwd_counters SEC(".maps");

/* Datapath events (struct datapath_event) for the agent's flow observer. Its size is set by the
 * agent at load time (eventsBufferBytes). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Events not delivered, per CPU, by enum sluice_event_loss. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SLUICE_LOSS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_lost SEC(".maps");

/* Flows already reported, and their TCP flags: which packets are "first" (monitor medium). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
	__uint(max_entries, SLUICE_TRACE_FLOWS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trace_flows SEC(".maps");

/* Drop-event budget of each CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_budget SEC(".maps");

#endif
