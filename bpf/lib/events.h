/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Datapath events for the flow observer: a drop event for every drop (rate-limited per CPU so
 * a flood cannot starve the node), trace events for forwarded packets as the monitor
 * aggregation level asks. Each event carries the first SLUICE_EVENT_CAPTURE bytes. */
#ifndef SLUICE_LIB_EVENTS_H
#define SLUICE_LIB_EVENTS_H

#include "maps.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_REPORTED_FLAGS (TCP_FLAG_FIN | TCP_FLAG_SYN | TCP_FLAG_RST)

static __always_inline void count_loss(__u32 why)
{
	__u64 *lost = bpf_map_lookup_elem(&event_lost, &why);
	if (lost)
		*lost += 1;
}

/* Whether submitting an event wakes the agent. Drops and audit reports do, at once. Trace
 * events do not, until an eighth of the ring is waiting: the agent also drains the ring on a
 * short timer, and a wake-up per event (each new connection makes four) would cost the pods'
 * CPUs more than the events themselves. */
static __always_inline __u64 event_wakeup(__u8 type)
{
	if (type != SLUICE_EVENT_TRACE)
		return BPF_RB_FORCE_WAKEUP;
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
	return waiting >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_event_ext(struct __sk_buff *skb, __u8 type, __u8 code, __u32 rule, __u32 identity)
{
	struct datapath_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_loss(SLUICE_LOSS_RING_FULL);
		return;
	}
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->orig_len = skb->len;
	ev->type = type;
	ev->code = code;
	ev->point = SLUICE_POINT;
	ev->pad0 = 0;
	ev->pad1 = 0;
	ev->policy_rule = rule;
	ev->peer_identity = identity;
	__u32 cap = skb->len;
	if (cap > SLUICE_EVENT_CAPTURE)
		cap = SLUICE_EVENT_CAPTURE;
	if (cap == 0 || bpf_skb_load_bytes(skb, 0, ev->data, cap))
		cap = 0;
	ev->cap_len = cap;
	bpf_ringbuf_submit(ev, event_wakeup(type));
}

static __always_inline void emit_event(struct __sk_buff *skb, __u8 type, __u8 code)
{
	emit_event_ext(skb, type, code, 0, 0);
}

/* A fixed one-second window per CPU: at most CONFIG_DROP_EVENT_RATE drop events in it. */
static __always_inline int drop_event_allowed(void)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&event_budget, &zero);
	if (!b)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - b->window_start_ns >= 1000000000ULL) {
		b->window_start_ns = now;
		b->tokens = CONFIG_DROP_EVENT_RATE;
	}
	if (b->tokens == 0) {
		count_loss(SLUICE_LOSS_RATE_LIMITED);
		return 0;
	}
	b->tokens -= 1;
	return 1;
}

static __always_inline void drop_event(struct __sk_buff *skb, __u8 reason)
{
	if (drop_event_allowed())
		emit_event(skb, SLUICE_EVENT_DROP, reason);
}

/* The flow of an IPv4/IPv6 packet and its TCP flags; 0 when the packet is not IP. */
static __always_inline int flow_of(struct __sk_buff *skb, struct flow_key *key, __u8 *tcp_flags)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	void *l4;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return 0;
		__builtin_memcpy(key->saddr, &ip->saddr, 4);
		__builtin_memcpy(key->daddr, &ip->daddr, 4);
		key->proto = ip->protocol;
		key->family = SLUICE_AF_INET;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		__builtin_memcpy(key->saddr, &ip6->saddr, 16);
		__builtin_memcpy(key->daddr, &ip6->daddr, 16);
		key->proto = ip6->nexthdr;
		key->family = SLUICE_AF_INET6;
		l4 = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if (key->proto == IPPROTO_TCP || key->proto == IPPROTO_UDP) {
		__be16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return 1;
		key->sport = ports[0];
		key->dport = ports[1];
		if (key->proto == IPPROTO_TCP) {
			__u8 *flags = l4 + 13;
			if ((void *)(flags + 1) <= data_end)
				*tcp_flags = *flags;
		}
	}
	return 1;
}

/* A trace event for a forwarded packet when the aggregation level wants it: every packet at
 * "all"; at "medium" the first packet of a flow and each TCP SYN, FIN or RST not yet seen. */
static __always_inline void trace_event(struct __sk_buff *skb, __u8 kind)
{
	if (CONFIG_MONITOR_AGGREGATION == SLUICE_MONITOR_OFF)
		return;
	if (CONFIG_MONITOR_AGGREGATION == SLUICE_MONITOR_ALL) {
		emit_event(skb, SLUICE_EVENT_TRACE, kind);
		return;
	}
	struct flow_key key = {};
	__u8 flags = 0;
	if (!flow_of(skb, &key, &flags))
		return;
	flags &= TCP_REPORTED_FLAGS;
	/* TCP needs no flow table: a connection starts with a SYN and each change of state
	 * carries SYN, FIN or RST, so the flags alone decide, and the packets in between (all of
	 * a stream's data) cost no map lookup. */
	if (key.proto == IPPROTO_TCP) {
		if (flags)
			emit_event(skb, SLUICE_EVENT_TRACE, kind);
		return;
	}
	struct flow_state *seen = bpf_map_lookup_elem(&trace_flows, &key);
	if (seen) {
		if (!(flags & ~seen->tcp_flags))
			return;
		seen->tcp_flags |= flags;
	} else {
		struct flow_state fresh = {.first_ns = bpf_ktime_get_ns(), .tcp_flags = flags};
		bpf_map_update_elem(&trace_flows, &key, &fresh, BPF_ANY);
	}
	emit_event(skb, SLUICE_EVENT_TRACE, kind);
}

#endif
