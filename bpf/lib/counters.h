/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict helpers: every drop is counted by reason, every forward by kind. */
#ifndef SLUICE_LIB_COUNTERS_H
#define SLUICE_LIB_COUNTERS_H

#include "maps.h"

static __always_inline void count(void *map, __u32 index, struct __sk_buff *skb)
{
	struct traffic_counter *c = bpf_map_lookup_elem(map, &index);
	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
}

/* Count the drop and return the tc verdict for it. */
static __always_inline int drop(struct __sk_buff *skb, enum sluice_drop_reason reason)
{
	count(&drop_counters, reason, skb);
	return TC_ACT_SHOT;
}

/* Count a forwarding decision; returns `verdict` unchanged for tail use. */
static __always_inline int forwarded(struct __sk_buff *skb, enum sluice_forward_kind kind, int verdict)
{
	count(&fwd_counters, kind, skb);
	return verdict;
}

static __always_inline int to_stack(struct __sk_buff *skb)
{
	return forwarded(skb, SLUICE_FWD_STACK, TC_ACT_OK);
}

#endif
