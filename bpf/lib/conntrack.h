/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service connection tracking: the table of translated flows, one entry per direction, keyed
 * by the tuple as it arrives. The agent removes expired entries by their timeouts (TCP
 * established, closing, other protocols); LRU eviction is only the last resort. */
#ifndef SLUICE_LIB_CONNTRACK_H
#define SLUICE_LIB_CONNTRACK_H

#include "common.h"

/* Translated flows. Its size is set by the agent at load time (conntrackEntries). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, SLUICE_CT_DEFAULT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_ct SEC(".maps");

#define CT_REFRESH_NS 1000000000ULL

/* Note a packet of a tracked flow: its time (at most once a second, to keep a stream's packets
 * from writing the entry each time) and whether TCP is closing. */
static __always_inline void ct_touch(struct ct_entry *ct, __u8 tcp_flags)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - ct->last_seen_ns > CT_REFRESH_NS)
		ct->last_seen_ns = now;
	if ((tcp_flags & 0x05) && !(ct->flags & SLUICE_CT_F_CLOSING)) /* FIN or RST */
		ct->flags |= SLUICE_CT_F_CLOSING;
	if ((ct->flags & SLUICE_CT_F_REPLY) && !(ct->flags & SLUICE_CT_F_SEEN_REPLY))
		ct->flags |= SLUICE_CT_F_SEEN_REPLY;
}

/* The tuple of the other direction: source and destination swapped. */
static __always_inline void ct_reverse(struct ct_key *out, const struct ct_key *in)
{
	__builtin_memcpy(out->saddr, in->daddr, 16);
	__builtin_memcpy(out->daddr, in->saddr, 16);
	out->sport = in->dport;
	out->dport = in->sport;
	out->proto = in->proto;
	out->family = in->family;
	out->pad[0] = 0;
	out->pad[1] = 0;
}

#endif
