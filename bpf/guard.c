// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The netfilter guard, attached at BPF_CGROUP_SETSOCKOPT on the agent's cgroup: refuses
 * iptables-legacy and ip6tables-legacy table installs (SO_SET_REPLACE) from processes in that
 * cgroup with EPERM, because pod traffic routed by the datapath skips the rules they would add.
 * Every other socket option, counter updates (SO_SET_ADD_COUNTERS) included, passes untouched.
 * Its maps are its own and not pinned: they live as long as the agent that attached it. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi/sluice_abi.h"

/* The smallest page size Linux runs with: the kernel shows a BPF program at most one page of a
 * setsockopt buffer. */
#define GUARD_MIN_PAGE_SIZE 4096

/* Refused installs (struct guard_event) for the agent's audit log. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SLUICE_GUARD_EVENTS_BYTES);
} guard_events SEC(".maps");

/* Refusals and undelivered events per CPU, by enum sluice_guard_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, SLUICE_GUARD_COUNTER_MAX);
} guard_counters SEC(".maps");

static __always_inline void count_guard(__u32 index)
{
	__u64 *c = bpf_map_lookup_elem(&guard_counters, &index);
	if (c)
		*c += 1;
}

static __always_inline int is_table_install(const struct bpf_sockopt *ctx)
{
	return (ctx->level == SLUICE_SOL_IP || ctx->level == SLUICE_SOL_IPV6) &&
	       ctx->optname == SLUICE_IPT_SO_SET_REPLACE;
}

static __always_inline void report_refusal(const struct bpf_sockopt *ctx)
{
	struct guard_event *ev = bpf_ringbuf_reserve(&guard_events, sizeof(*ev), 0);
	if (!ev) {
		count_guard(SLUICE_GUARD_EVENTS_LOST);
		return;
	}
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	ev->level = (__u32)ctx->level;
	ev->optname = (__u32)ctx->optname;
	ev->pad = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm)); /* zero-filled if it fails */
	bpf_ringbuf_submit(ev, 0);
}

SEC("cgroup/setsockopt")
int guard_setsockopt(struct bpf_sockopt *ctx)
{
	if (is_table_install(ctx)) {
		count_guard(SLUICE_GUARD_BLOCKED);
		report_refusal(ctx);
		return 0; /* EPERM; the kernel never sees the new table */
	}
	/* optlen 0 tells the kernel to use the caller's own buffer. Past a page the program only
	 * holds a truncated copy, and an unchanged optlen is then out of bounds: EFAULT before
	 * Linux 6.5, a log line after. Below a page, optlen stays as it is so that programs later
	 * in the cgroup chain still see the value. */
	if (ctx->optlen > GUARD_MIN_PAGE_SIZE)
		ctx->optlen = 0;
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
