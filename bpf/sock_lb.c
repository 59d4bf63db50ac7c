// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Socket-level load balancing (cgroup sock_addr hooks on the node's cgroup): a connect() or an
 * unconnected sendmsg() to a service frontend is sent to a backend instead, once per
 * connection (per datagram for unconnected UDP), so no packet of the flow needs translating.
 * recvmsg() and getpeername() show the application the service address it asked for. */
#define SLUICE_POINT SLUICE_POINT_FROM_POD
#include "lib/common.h"
#include "lib/lb.h"

#define EPERM 1
#define ECONNREFUSED 111

/* What recvmsg and getpeername translate back: per socket and backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_sock_revnat_key);
	__type(value, struct lb_sock_revnat);
	__uint(max_entries, SLUICE_SOCK_REVNAT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sock_revnat SEC(".maps");

/* Translate ctx's destination if it is a frontend. Returns 1 to let the call go on, 0 to
 * refuse it (a service without backends: ECONNREFUSED at once). */
static __always_inline int sock_translate(struct bpf_sock_addr *ctx, __u8 *addr, __be16 port, __u8 family,
					  int *rewrote, struct lb_backend *out)
{
	__u8 proto = (__u8)ctx->protocol;
	struct lb_frontend *fe = lookup_frontend(addr, port, proto, family, 1);
	if (!fe)
		return 1;
	if (fe->count == 0) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	__u32 id = 0;
	struct lb_affinity_key akey = {};
	if (fe->flags & SLUICE_LB_F_AFFINITY) {
		__u64 netns = bpf_get_netns_cookie(ctx);
		__builtin_memcpy(akey.client, &netns, 8);
		akey.set_id = fe->set_id;
		id = affinity_backend(fe, &akey);
	}
	if (!id) {
		id = slot_backend(fe, bpf_get_prandom_u32() % fe->count + 1);
		if (id && (fe->flags & SLUICE_LB_F_AFFINITY))
			affinity_remember(&akey, id);
	}
	struct lb_backend *be = id ? bpf_map_lookup_elem(&lb_backends, &id) : 0;
	if (!be || be->family != family) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	*out = *be;
	*rewrote = 1;

	struct lb_sock_revnat_key key = {.cookie = bpf_get_socket_cookie(ctx), .port = be->port, .family = family};
	__builtin_memcpy(key.addr, be->addr, 16);
	struct lb_sock_revnat val = {.port = port, .family = family};
	__builtin_memcpy(val.addr, addr, 16);
	bpf_map_update_elem(&lb_sock_revnat, &key, &val, BPF_ANY);
	return 1;
}

static __always_inline int sock4_forward(struct bpf_sock_addr *ctx)
{
	__u8 addr[16] = {};
	__u32 ip = ctx->user_ip4;
	__builtin_memcpy(addr, &ip, 4);
	int rewrote = 0;
	struct lb_backend be = {};
	int ok = sock_translate(ctx, addr, (__be16)ctx->user_port, SLUICE_AF_INET, &rewrote, &be);
	if (rewrote) {
		__u32 dst;
		__builtin_memcpy(&dst, be.addr, 4);
		ctx->user_ip4 = dst;
		ctx->user_port = (__u32)be.port;
	}
	return ok;
}

static __always_inline int sock6_forward(struct bpf_sock_addr *ctx)
{
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	int rewrote = 0;
	struct lb_backend be = {};
	int ok = sock_translate(ctx, (__u8 *)a, (__be16)ctx->user_port, SLUICE_AF_INET6, &rewrote, &be);
	if (rewrote) {
		__u32 d[4];
		__builtin_memcpy(d, be.addr, 16);
		ctx->user_ip6[0] = d[0];
		ctx->user_ip6[1] = d[1];
		ctx->user_ip6[2] = d[2];
		ctx->user_ip6[3] = d[3];
		ctx->user_port = (__u32)be.port;
	}
	return ok;
}

/* The peer ctx names is a backend this socket was sent to: show the frontend instead. */
static __always_inline void sock_reverse(struct bpf_sock_addr *ctx, const __u8 *addr, __u8 family)
{
	struct lb_sock_revnat_key key = {.cookie = bpf_get_socket_cookie(ctx),
					 .port = (__be16)ctx->user_port,
					 .family = family};
	__builtin_memcpy(key.addr, addr, 16);
	struct lb_sock_revnat *fe = bpf_map_lookup_elem(&lb_sock_revnat, &key);
	if (!fe)
		return;
	if (family == SLUICE_AF_INET) {
		__u32 ip;
		__builtin_memcpy(&ip, fe->addr, 4);
		ctx->user_ip4 = ip;
	} else {
		__u32 d[4];
		__builtin_memcpy(d, fe->addr, 16);
		ctx->user_ip6[0] = d[0];
		ctx->user_ip6[1] = d[1];
		ctx->user_ip6[2] = d[2];
		ctx->user_ip6[3] = d[3];
	}
	ctx->user_port = (__u32)fe->port;
}

static __always_inline void sock4_reverse(struct bpf_sock_addr *ctx)
{
	__u8 addr[16] = {};
	__u32 ip = ctx->user_ip4;
	__builtin_memcpy(addr, &ip, 4);
	sock_reverse(ctx, addr, SLUICE_AF_INET);
}

static __always_inline void sock6_reverse(struct bpf_sock_addr *ctx)
{
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	sock_reverse(ctx, (__u8 *)a, SLUICE_AF_INET6);
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return sock4_forward(ctx); }

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return sock6_forward(ctx); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return sock4_forward(ctx); }

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return sock6_forward(ctx); }

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { sock4_reverse(ctx); return 1; }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { sock6_reverse(ctx); return 1; }

SEC("cgroup/getpeername4")
int sock_getpeername4(struct bpf_sock_addr *ctx) { sock4_reverse(ctx); return 1; }

SEC("cgroup/getpeername6")
int sock_getpeername6(struct bpf_sock_addr *ctx) { sock6_reverse(ctx); return 1; }

char LICENSE[] SEC("license") = "Dual BSD/GPL";
