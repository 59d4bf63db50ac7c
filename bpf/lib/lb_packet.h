/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-packet service load balancing in tc, for traffic no local socket hook translated:
 * NodePort, external IPs and load-balancer addresses arriving on the uplink, replies of those
 * flows, and pod traffic to ClusterIPs when socket LB is off. The first packet of a flow picks
 * a backend (affinity, Maglev, or a hash of the tuple) and writes both directions into the
 * conntrack table; every later packet of either direction is rewritten from its entry. */
#ifndef SLUICE_LIB_LB_PACKET_H
#define SLUICE_LIB_LB_PACKET_H

#include "counters.h"
#include "conntrack.h"
#include "lb.h"
#include "nat.h"
#include "reject.h"

#define SNAT_PORT_MIN 40000
#define SNAT_PORT_COUNT 20000
#define SNAT_TRIES 8

/* What lb_packet did. */
enum lb_result {
	LB_NONE = 0,      /* not a service flow: untouched */
	LB_REJECT = 100,  /* internal: no backend, answer with an ICMP error (lb_packet does) */
	LB_TRANSLATED = 1, /* rewritten: route by the new destination */
	LB_NODE_SOURCE = 2, /* rewritten to leave with a node address as its source: the
			     * datapath must forward it (the stack would call it martian) */
	LB_VERDICT = 3,   /* *verdict holds the tc verdict (drop or ICMP reject sent) */
};

static __always_inline __u32 tuple_hash(const struct ct_key *t)
{
	const __u32 *s = (const __u32 *)t->saddr;
	const __u32 *d = (const __u32 *)t->daddr;
	__u32 h = s[0] ^ s[1] ^ s[2] ^ s[3];
	h = mix32(h ^ (d[0] ^ d[1] ^ d[2] ^ d[3]) * 0x9e3779b1);
	h = mix32(h ^ (((__u32)t->sport << 16) | t->dport) ^ ((__u32)t->proto << 8));
	return h;
}

static __always_inline int node_address(__u8 family, __u8 *out)
{
	__builtin_memset(out, 0, 16);
	if (family == SLUICE_AF_INET) {
		__u32 a = CONFIG_NODE_IPV4;
		__builtin_memcpy(out, &a, 4);
		return a != 0;
	}
	__u32 w[4] = {CONFIG_NODE_IPV6_0, CONFIG_NODE_IPV6_1, CONFIG_NODE_IPV6_2, CONFIG_NODE_IPV6_3};
	__builtin_memcpy(out, w, 16);
	return (w[0] | w[1] | w[2] | w[3]) != 0;
}

/* The backend for a new flow to `fe`; 0 when none. */
static __always_inline __u32 pick_backend(const struct lb_frontend *fe, const struct ct_key *t)
{
	struct lb_affinity_key akey = {};
	__u32 id = 0;
	if (fe->flags & SLUICE_LB_F_AFFINITY) {
		__builtin_memcpy(akey.client, t->saddr, 16);
		akey.set_id = fe->set_id;
		akey.family = t->family;
		id = affinity_backend(fe, &akey);
		if (id)
			return id;
	}
	__u32 h = tuple_hash(t);
	if (fe->flags & SLUICE_LB_F_MAGLEV)
		id = maglev_backend(fe, h);
	else
		id = slot_backend(fe, h % fe->count + 1);
	if (id && (fe->flags & SLUICE_LB_F_AFFINITY))
		affinity_remember(&akey, id);
	return id;
}

/* The packet an ICMP error quotes: its header and first 8 bytes of L4, old and new. */
struct icmp_quote {
	__u8 hdr[40];
	__u8 l4[8];
};

/* Per-CPU working space of the new-flow and ICMP-error paths: the entry programs also run
 * policy code in BPF-to-BPF calls, and the verifier's 512-byte limit counts the whole chain. */
struct lb_scratch {
	struct icmp_quote old, new;
	struct ct_key inner, rkey;
	struct ct_entry e, fwd, rev;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_scratch);
	__uint(max_entries, 1);
} lb_scratch SEC(".maps");

/* Track and translate the first packet of a flow to a frontend. */
static __noinline int lb_new_flow(struct __sk_buff *skb, struct lb_pkt *p, const struct lb_frontend *fe,
			       int from_uplink, int *verdict)
{
	__u16 count = fe->count;
	if (count == 0)
		return LB_REJECT;
	__u32 id = pick_backend(fe, &p->t);
	struct lb_backend *be = id ? bpf_map_lookup_elem(&lb_backends, &id) : 0;
	if (!be)
		return LB_REJECT;
	int snat = from_uplink && (fe->flags & (SLUICE_LB_F_NODEPORT | SLUICE_LB_F_EXTERNAL)) &&
		   !(fe->flags & SLUICE_LB_F_LOCAL_ONLY) && !(be->flags & SLUICE_LB_BE_LOCAL);
	__u32 zero = 0;
	struct lb_scratch *sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!sc) {
		*verdict = drop(skb, SLUICE_DROP_MALFORMED);
		return LB_VERDICT;
	}
	struct ct_entry *fwd = &sc->fwd, *rev = &sc->rev;
	__builtin_memset(fwd, 0, sizeof(*fwd));
	__builtin_memset(rev, 0, sizeof(*rev));
	fwd->backend_id = rev->backend_id = id;
	fwd->set_id = rev->set_id = fe->set_id;
	fwd->flags = SLUICE_CT_F_NEW_DST;
	rev->flags = SLUICE_CT_F_REPLY | SLUICE_CT_F_NEW_SRC;
	fwd->last_seen_ns = rev->last_seen_ns = bpf_ktime_get_ns();
	__builtin_memcpy(fwd->new_daddr, be->addr, 16);
	fwd->new_dport = be->port;
	__builtin_memcpy(rev->new_saddr, p->t.daddr, 16);
	rev->new_sport = p->t.dport;

	/* The reply tuple: from the backend to the client, or to this node when SNAT'd. */
	struct ct_key *rkey = &sc->rkey;
	__builtin_memset(rkey, 0, sizeof(*rkey));
	__builtin_memcpy(rkey->saddr, be->addr, 16);
	rkey->sport = be->port;
	rkey->proto = p->t.proto;
	rkey->family = p->t.family;
	if (!snat) {
		__builtin_memcpy(rkey->daddr, p->t.saddr, 16);
		rkey->dport = p->t.sport;
		if (bpf_map_update_elem(&lb_ct, rkey, rev, BPF_ANY)) {
			*verdict = drop(skb, SLUICE_DROP_CT_FULL);
			return LB_VERDICT;
		}
	} else {
		__u8 node[16];
		if (!node_address(p->t.family, node)) {
			*verdict = drop(skb, SLUICE_DROP_NAT_NO_PORT);
			return LB_VERDICT;
		}
		rev->flags |= SLUICE_CT_F_NEW_DST;
		__builtin_memcpy(rev->new_daddr, p->t.saddr, 16);
		rev->new_dport = p->t.sport;
		__builtin_memcpy(rkey->daddr, node, 16);
		__u32 start = tuple_hash(&p->t);
		int ok = 0;
#pragma unroll
		for (int i = 0; i < SNAT_TRIES; i++) {
			rkey->dport = bpf_htons(SNAT_PORT_MIN + (start + i * 7919) % SNAT_PORT_COUNT);
			if (!bpf_map_update_elem(&lb_ct, rkey, rev, BPF_NOEXIST)) {
				ok = 1;
				break;
			}
		}
		if (!ok) {
			*verdict = drop(skb, SLUICE_DROP_NAT_NO_PORT);
			return LB_VERDICT;
		}
		fwd->flags |= SLUICE_CT_F_NEW_SRC;
		__builtin_memcpy(fwd->new_saddr, node, 16);
		fwd->new_sport = rkey->dport;
	}
	if (bpf_map_update_elem(&lb_ct, &p->t, fwd, BPF_ANY)) {
		bpf_map_delete_elem(&lb_ct, rkey);
		*verdict = drop(skb, SLUICE_DROP_CT_FULL);
		return LB_VERDICT;
	}
	if (nat_apply(skb, p, fwd)) {
		*verdict = drop(skb, SLUICE_DROP_MALFORMED);
		return LB_VERDICT;
	}
	return snat ? LB_NODE_SOURCE : LB_TRANSLATED;
}

/* Is this ICMP / ICMPv6 message an error that quotes a packet? */
static __always_inline int icmp_is_error(const struct lb_pkt *p)
{
	if (p->t.proto == IPPROTO_ICMP)
		return p->icmp_type == 3 || p->icmp_type == 11 || p->icmp_type == 12;
	return p->t.proto == IPPROTO_ICMPV6 && p->icmp_type >= 1 && p->icmp_type <= 4;
}

/* Fold a 64-bit one's-complement sum to 16 bits (not complemented). */
static __always_inline __u16 csum_fold64(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* An ICMP error about a translated flow: the quoted packet is the flow as the backend saw it
 * (client or node -> backend), so its reverse is a reply tuple in lb_ct. The error is
 * translated as the reply would be (outer source and quoted destination become the service,
 * and for SNAT'd flows the outer destination and quoted source become the client again), with
 * the quoted IPv4 header and UDP checksums and the ICMP checksum kept right. The quoted TCP
 * checksum lies beyond the 8 bytes every error carries and is left as it is. */
static __noinline int lb_icmp_error(struct __sk_buff *skb, struct lb_pkt *p, int *verdict)
{
	int v4 = p->t.family == SLUICE_AF_INET;
	__u32 inner_off = p->l4_off + 8;
	__u32 hlen = v4 ? 20 : 40;
	__u32 zero = 0;
	struct lb_scratch *sc = bpf_map_lookup_elem(&lb_scratch, &zero);
	if (!sc)
		return LB_NONE;
	struct icmp_quote *old = &sc->old, *new = &sc->new;
	__builtin_memset(old, 0, sizeof(*old));
	if (bpf_skb_load_bytes(skb, inner_off, old->hdr, v4 ? 20 : 40))
		return LB_NONE;
	if (v4 && old->hdr[0] != 0x45)
		return LB_NONE;
	if (bpf_skb_load_bytes(skb, inner_off + hlen, old->l4, 8))
		return LB_NONE;
	struct ct_key *inner = &sc->inner;
	__builtin_memset(inner, 0, sizeof(*inner));
	__u32 a_off = v4 ? 12 : 8, alen = v4 ? 4 : 16;
	inner->proto = v4 ? old->hdr[9] : old->hdr[6];
	if (inner->proto != IPPROTO_TCP && inner->proto != IPPROTO_UDP)
		return LB_NONE;
	inner->family = p->t.family;
	if (v4) {
		__builtin_memcpy(inner->saddr, old->hdr + 12, 4);
		__builtin_memcpy(inner->daddr, old->hdr + 16, 4);
	} else {
		__builtin_memcpy(inner->saddr, old->hdr + 8, 16);
		__builtin_memcpy(inner->daddr, old->hdr + 24, 16);
	}
	__builtin_memcpy(&inner->sport, old->l4, 2);
	__builtin_memcpy(&inner->dport, old->l4 + 2, 2);
	struct ct_key *rkey = &sc->rkey;
	ct_reverse(rkey, inner);
	struct ct_entry *found = bpf_map_lookup_elem(&lb_ct, rkey);
	if (!found || !(found->flags & SLUICE_CT_F_REPLY))
		return LB_NONE;
	struct ct_entry *e = &sc->e;
	*e = *found;

	/* The quoted packet, translated: destination -> the service; source -> the client. */
	*new = *old;
	if (v4) {
		__builtin_memcpy(new->hdr + 16, e->new_saddr, 4);
		if (e->flags & SLUICE_CT_F_NEW_DST)
			__builtin_memcpy(new->hdr + 12, e->new_daddr, 4);
		new->hdr[10] = 0;
		new->hdr[11] = 0;
		__u16 c = csum_fold(bpf_csum_diff(0, 0, (__be32 *)new->hdr, 20, 0));
		__builtin_memcpy(new->hdr + 10, &c, 2);
	} else {
		__builtin_memcpy(new->hdr + 24, e->new_saddr, 16);
		if (e->flags & SLUICE_CT_F_NEW_DST)
			__builtin_memcpy(new->hdr + 8, e->new_daddr, 16);
	}
	__builtin_memcpy(new->l4 + 2, &e->new_sport, 2);
	if (e->flags & SLUICE_CT_F_NEW_DST)
		__builtin_memcpy(new->l4, &e->new_dport, 2);
	__u16 udp_csum;
	__builtin_memcpy(&udp_csum, old->l4 + 6, 2);
	if (inner->proto == IPPROTO_UDP && (udp_csum || !v4)) {
		/* The quoted UDP checksum covers the pseudo-header: addresses and ports moved. */
		__s64 d = bpf_csum_diff((__be32 *)(old->hdr + a_off), 2 * alen, (__be32 *)(new->hdr + a_off), 2 * alen, 0);
		d = bpf_csum_diff((__be32 *)old->l4, 4, (__be32 *)new->l4, 4, (__u32)d);
		__u16 c = ~csum_fold64((__u64)(__u16)~udp_csum + (__u32)d);
		if (!c)
			c = 0xffff;
		__builtin_memcpy(new->l4 + 6, &c, 2);
	}
	/* The ICMP checksum covers the quote (and, for ICMPv6, the outer addresses, handled by
	 * nat_addr below). */
	__s64 diff = bpf_csum_diff((__be32 *)old->hdr, hlen, (__be32 *)new->hdr, hlen, 0);
	diff = bpf_csum_diff((__be32 *)old->l4, 8, (__be32 *)new->l4, 8, (__u32)diff);
	if (bpf_skb_store_bytes(skb, inner_off, new->hdr, v4 ? 20 : 40, 0) ||
	    bpf_skb_store_bytes(skb, inner_off + hlen, new->l4, 8, 0) ||
	    bpf_l4_csum_replace(skb, p->l4_off + 2, 0, (__u32)diff, 0))
		goto malformed;

	/* The outer header: from the service if the backend sent it; to the client if SNAT'd. */
	if (e->flags & SLUICE_CT_F_NEW_DST) {
		if (nat_addr(skb, p, 1, p->t.daddr, e->new_daddr))
			goto malformed;
	}
	const __u32 *os = (const __u32 *)p->t.saddr, *be = (const __u32 *)inner->daddr;
	if (os[0] == be[0] && os[1] == be[1] && os[2] == be[2] && os[3] == be[3]) {
		if (nat_addr(skb, p, 0, p->t.saddr, e->new_saddr))
			goto malformed;
	}
	return LB_NODE_SOURCE;
malformed:
	*verdict = drop(skb, SLUICE_DROP_MALFORMED);
	return LB_VERDICT;
}

/* Service translation of one packet. `from_uplink`: it arrived on the node's uplink (external
 * scope only, NodePort SNAT applies); otherwise it comes from a pod on this node. */
static __always_inline int lb_packet(struct __sk_buff *skb, int from_uplink, int *verdict)
{
	struct lb_pkt p = {};
	if (lb_parse(skb, &p))
		return LB_NONE;
	if (icmp_is_error(&p))
		return lb_icmp_error(skb, &p, verdict);
	if (p.t.proto != IPPROTO_TCP && p.t.proto != IPPROTO_UDP)
		return LB_NONE;

	struct ct_entry *ct = bpf_map_lookup_elem(&lb_ct, &p.t);
	if (ct) {
		if (!(ct->flags & SLUICE_CT_F_REPLY)) {
			/* A flow whose backend is gone starts over: the new backend answers a
			 * TCP segment it does not know with a reset, so the client learns at once. */
			__u32 id = ct->backend_id;
			if (!bpf_map_lookup_elem(&lb_backends, &id)) {
				bpf_map_delete_elem(&lb_ct, &p.t);
				goto new_flow;
			}
		}
		ct_touch(ct, p.tcp_flags);
		__u32 zero = 0;
		struct lb_scratch *sc = bpf_map_lookup_elem(&lb_scratch, &zero);
		if (!sc)
			return LB_NONE;
		struct ct_entry *copy = &sc->e;
		*copy = *ct;
		if (nat_apply(skb, &p, copy)) {
			*verdict = drop(skb, SLUICE_DROP_MALFORMED);
			return LB_VERDICT;
		}
		/* Replies leave with the service address as their source, which may be a node
		 * address (NodePort); SNAT'd requests leave with the node's. */
		if ((copy->flags & SLUICE_CT_F_REPLY) || (copy->flags & SLUICE_CT_F_NEW_SRC))
			return LB_NODE_SOURCE;
		return LB_TRANSLATED;
	}
new_flow:
	/* With socket LB on, a pod's connections reach tc already translated and miss here. */
	{
		struct lb_frontend *fe = lookup_frontend(p.t.daddr, p.t.dport, p.t.proto, p.t.family, !from_uplink);
		if (!fe)
			return LB_NONE;
		struct lb_frontend f = *fe;
		int r = lb_new_flow(skb, &p, &f, from_uplink, verdict);
		if (r == LB_REJECT) {
			*verdict = reject(skb, &p);
			return LB_VERDICT;
		}
		return r;
	}
}

#endif
