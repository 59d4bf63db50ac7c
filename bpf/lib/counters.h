/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict helpers: every drop is counted by reason and reported as an event, every forward is
 * counted by kind and traced as the monitor level asks. Counters are per observation point. */
#ifndef SLUICE_LIB_COUNTERS_H
#define SLUICE_LIB_COUNTERS_H

#include "maps.h"
#include "events.h"

static __always_inline void count(void *map, __u32 index, struct __sk_buff *skb)
{
	struct traffic_counter *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
}

/* Count the drop, report it, and return the tc verdict for it. */
static __always_inline int drop(struct __sk_buff *skb, enum sluice_drop_reason reason)
{
	count(&drop_counters, SLUICE_POINT * SLUICE_DROP_REASON_MAX + reason, skb);
	drop_event(skb, reason);
	return TC_ACT_SHOT;
}

/* Count a forwarding decision and trace it; returns `verdict` unchanged for tail use. */
static __always_inline int forwarded(struct __sk_buff *skb, enum sluice_forward_kind kind, int verdict)
{
	count(&fwd_counters, SLUICE_POINT * SLUICE_FWD_KIND_MAX + kind, skb);
	trace_event(skb, kind);
	return verdict;
}

static __always_inline int to_stack(struct __sk_buff *skb)
{
	return forwarded(skb, SLUICE_FWD_STACK, TC_ACT_OK);
}

#endif
