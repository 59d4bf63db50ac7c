/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Network policy: the identity of an address (ipcache), the per-endpoint policy lookup with
 * identity and port wildcards, and the policy conntrack that lets replies of allowed
 * connections through. Egress is checked in from_pod around service translation (the
 * conntrack sees the tuple the pod sent, the lookup the translated destination); ingress just
 * before a packet is handed to a pod, whoever hands it over (from_pod, from_netdev, to_pod). */
#ifndef SLUICE_LIB_POLICY_H
#define SLUICE_LIB_POLICY_H

#include "conntrack.h"
#include "counters.h"
#include "endpoints.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, SLUICE_IPCACHE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* The prefixes Kubernetes ipBlocks name -> their CIDR identity; read only for endpoints with
 * SLUICE_POLICY_F_*_BY_ADDRESS. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, SLUICE_IPBLOCK_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipblocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, SLUICE_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct policy_endpoint);
	__uint(max_entries, SLUICE_MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_endpoints SEC(".maps");

/* Its size is set by the agent at load time (policy.conntrackEntries). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct policy_ct_entry);
	__uint(max_entries, SLUICE_POLICY_CT_DEFAULT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ct SEC(".maps");

#define PCT_REFRESH_NS 1000000000ULL
#define POLICY_CONTINUE (-1)
/* Allowed through the node's layer-7 proxy (port in the scratch's proxy_port). */
#define POLICY_PROXY (-2)
/* A packet for a local pod's address that belongs to one of the proxy's upstream connections. */
#define POLICY_PROXY_REPLY (-3)

/* A packet as policy sees it: its tuple (ICMP echo: the identifier as both ports), the port
 * the lookup uses (ICMP: the type), and TCP flags. */
struct policy_pkt {
	struct ct_key t;
	__be16 port;
	__u8 tcp_flags;
	__u8 skip; /* neighbour discovery and ICMP errors: not subject to policy */
};

/* Parse an Ethernet frame; 0 when it is IPv4 or IPv6, -1 otherwise. Non-first IPv4
 * fragments and unknown protocols have ports 0; IPv6 extension headers are not walked. */
static __always_inline int policy_parse(struct __sk_buff *skb, struct policy_pkt *p)
{
	__be16 proto;
	__u32 l4;
	int first = 1;
	if (bpf_skb_load_bytes(skb, 12, &proto, 2))
		return -1;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.ihl < 5)
			return -1;
		first = !(ip.frag_off & bpf_htons(0x1FFF));
		__builtin_memcpy(p->t.saddr, &ip.saddr, 4);
		__builtin_memcpy(p->t.daddr, &ip.daddr, 4);
		p->t.proto = ip.protocol;
		p->t.family = SLUICE_AF_INET;
		l4 = ETH_HLEN + ip.ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(p->t.saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6.daddr, 16);
		p->t.proto = ip6.nexthdr;
		p->t.family = SLUICE_AF_INET6;
		l4 = ETH_HLEN + sizeof(ip6);
	} else {
		return -1;
	}
	if (!first)
		return 0;
	switch (p->t.proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)))
			return 0;
		__builtin_memcpy(&p->t.sport, hdr, 2);
		__builtin_memcpy(&p->t.dport, hdr + 2, 2);
		p->tcp_flags = hdr[13];
		p->port = p->t.dport;
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 h[2];
		if (bpf_skb_load_bytes(skb, l4, h, sizeof(h)))
			return 0;
		p->t.sport = h[0];
		p->t.dport = h[1];
		p->port = p->t.dport;
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 h[6];
		if (bpf_skb_load_bytes(skb, l4, h, sizeof(h)))
			return 0;
		__u8 type = h[0];
		p->port = bpf_htons(type);
		int v6 = p->t.proto == IPPROTO_ICMPV6;
		int echo = v6 ? (type == 128 || type == 129) : (type == 8 || type == 0);
		if (echo) {
			__builtin_memcpy(&p->t.sport, h + 4, 2);
			p->t.dport = p->t.sport;
		} else if (v6 ? (type <= 4 || (type >= 133 && type <= 137)) : (type == 3 || type == 11 || type == 12)) {
			p->skip = 1;
		}
		return 0;
	}
	default:
		return 0;
	}
}

/* Egress, first half (before service translation): what the pod sent, against its conntrack.
 * `state`: 0 not IP or not subject, 1 new, 2 established (re-checked), 3 reply, 4 reply to a
 * connection the proxy opened (for the proxy). */
struct policy_egress {
	struct policy_pkt p;
	__u8 state;
	__u8 pad[7];
};

/* Per-CPU working space of the policy code: the from-pod program is close to the 512-byte
 * stack limit with service translation inlined, so packets and keys live here. */
struct policy_scratch {
	struct policy_egress eg; /* from policy_egress_begin to policy_egress_end */
	struct policy_pkt pkt;
	struct ct_key key;
	struct policy_key pkey;
	struct ipcache_key ikey;
	__be16 proxy_port; /* of the entry that decided the last lookup; 0 when not proxied */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_scratch);
	__uint(max_entries, 1);
} policy_scratch SEC(".maps");

static __always_inline struct policy_scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&policy_scratch, &zero);
}


static __always_inline struct ipcache_key *address_key(struct policy_scratch *sc, __u8 family, const __u8 *addr)
{
	struct ipcache_key *k = &sc->ikey;
	k->prefixlen = 32 + (family == SLUICE_AF_INET ? 32 : 128);
	k->family = family;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	__builtin_memcpy(k->addr, addr, 16);
	return k;
}

static __always_inline __u32 identity_of(struct policy_scratch *sc, __u8 family, const __u8 *addr)
{
	struct ipcache_entry *e = bpf_map_lookup_elem(&ipcache, address_key(sc, family, addr));
	return e ? e->identity : SLUICE_IDENTITY_WORLD;
}

/* The identity of the longest ipBlock prefix holding the address; 0 under none. */
static __always_inline __u32 ipblock_of(struct policy_scratch *sc, __u8 family, const __u8 *addr)
{
	struct ipcache_entry *e = bpf_map_lookup_elem(&ipblocks, address_key(sc, family, addr));
	return e ? e->identity : 0;
}

/* The verdict of the endpoint's entries for (identity, proto, port): the stronger of the
 * longest matches for the identity and for any identity; 0 on a miss in both. */
static __always_inline __u8 policy_lookup(struct policy_scratch *sc, __u32 endpoint_id, __u8 direction, __u8 revision,
					  __u32 identity, __u8 proto, __be16 port, __u32 *rule)
{
	struct policy_key *k = &sc->pkey;
	k->prefixlen = SLUICE_POLICY_FULL_BITS;
	k->endpoint_id = endpoint_id;
	k->identity = identity;
	k->direction = direction;
	k->revision = revision;
	k->pad = 0;
	k->proto = proto;
	k->port = port;
	k->pad2[0] = k->pad2[1] = 0;
	__u8 verdict = 0;
	struct policy_entry *e = bpf_map_lookup_elem(&policy, k);
	if (e) {
		verdict = e->verdict;
		*rule = e->rule;
		sc->proxy_port = e->proxy_port;
	}
	k->identity = SLUICE_IDENTITY_ANY;
	e = bpf_map_lookup_elem(&policy, k);
	if (e && e->verdict > verdict) {
		verdict = e->verdict;
		*rule = e->rule;
		sc->proxy_port = e->proxy_port;
	}
	return verdict;
}

/* The endpoint's entries by address for the peer: its ipblocks identity's longest match; 0 when
 * the peer is under no ipBlock prefix or nothing matches. Called only after a miss by identity. */
static __always_inline __u8 policy_lookup_by_address(struct policy_scratch *sc, __u32 endpoint_id, __u8 direction, __u8 revision,
						     const struct policy_pkt *p, const __u8 *peer, __u32 *rule)
{
	__u32 block = ipblock_of(sc, p->t.family, peer);
	if (!block)
		return 0;
	struct policy_key *k = &sc->pkey;
	k->prefixlen = SLUICE_POLICY_FULL_BITS;
	k->endpoint_id = endpoint_id;
	k->identity = block;
	k->direction = direction | SLUICE_POLICY_BY_ADDRESS;
	k->revision = revision;
	k->pad = 0;
	k->proto = p->t.proto;
	k->port = p->port;
	k->pad2[0] = k->pad2[1] = 0;
	struct policy_entry *e = bpf_map_lookup_elem(&policy, k);
	if (!e)
		return 0;
	*rule = e->rule;
	sc->proxy_port = e->proxy_port;
	return e->verdict;
}

/* Decide a packet in one direction of an endpoint that its mode subjects to policy: returns
 * POLICY_CONTINUE to let it pass (audit verdicts reported), POLICY_PROXY to let it pass
 * through the proxy, or the drop verdict. `peer` is the other end's address (the source for
 * ingress, the destination for egress). */
static __always_inline int policy_decide(struct __sk_buff *skb, struct policy_scratch *sc, const struct policy_endpoint *pe,
					 __u32 endpoint_id, __u8 direction, __u32 identity, const struct policy_pkt *p,
					 const __u8 *peer)
{
	__u8 mode = direction == SLUICE_POLICY_INGRESS ? pe->ingress_mode : pe->egress_mode;
	if (mode == SLUICE_POLICY_MODE_NONE)
		return POLICY_CONTINUE;
	__u32 rule = 0;
	sc->proxy_port = 0;
	__u8 verdict = policy_lookup(sc, endpoint_id, direction, pe->revision, identity, p->t.proto, p->port, &rule);
	__u8 by_address = direction == SLUICE_POLICY_INGRESS ? SLUICE_POLICY_F_INGRESS_BY_ADDRESS : SLUICE_POLICY_F_EGRESS_BY_ADDRESS;
	if (!verdict && (pe->flags & by_address))
		verdict = policy_lookup_by_address(sc, endpoint_id, direction, pe->revision, p, peer, &rule);
	if (!verdict)
		verdict = mode == SLUICE_POLICY_MODE_ENFORCE ? SLUICE_POLICY_DENY
			: mode == SLUICE_POLICY_MODE_AUDIT   ? SLUICE_POLICY_AUDIT
							     : SLUICE_POLICY_ALLOW;
	__u8 reason = direction == SLUICE_POLICY_INGRESS ? SLUICE_DROP_POLICY_INGRESS : SLUICE_DROP_POLICY_EGRESS;
	if (verdict == SLUICE_POLICY_DENY) {
		count(&drop_counters, SLUICE_POINT * SLUICE_DROP_REASON_MAX + reason, skb);
		if (drop_event_allowed())
			emit_event_ext(skb, SLUICE_EVENT_DROP, reason, rule, identity);
		return TC_ACT_SHOT;
	}
	if (verdict == SLUICE_POLICY_AUDIT && drop_event_allowed())
		emit_event_ext(skb, SLUICE_EVENT_POLICY_AUDIT, reason, rule, identity);
	return sc->proxy_port ? POLICY_PROXY : POLICY_CONTINUE;
}

static __always_inline void pct_touch(struct policy_ct_entry *e, __u8 tcp_flags, int reply)
{
	__u64 now = bpf_ktime_get_ns();
	if (now - e->last_seen_ns > PCT_REFRESH_NS)
		e->last_seen_ns = now;
	if ((tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) && !(e->flags & SLUICE_PCT_F_CLOSING))
		e->flags |= SLUICE_PCT_F_CLOSING;
	if (reply && !(e->flags & SLUICE_PCT_F_SEEN_REPLY))
		e->flags |= SLUICE_PCT_F_SEEN_REPLY;
}

/* Track a new flow. The table is an LRU hash: when full, the kernel evicts the least recently
 * used entry, so this fails only when no entry can be reclaimed at once (or when the pinned map
 * is a plain hash). A flow that cannot be tracked is dropped as conntrack full: passed on
 * untracked, its replies would meet the pod's policy as new flows. */
static __always_inline int pct_create(struct __sk_buff *skb, const struct ct_key *k, __u8 origin)
{
	struct policy_ct_entry e = {};
	e.last_seen_ns = bpf_ktime_get_ns();
	e.flags = origin;
	if (bpf_map_update_elem(&policy_ct, k, &e, BPF_ANY))
		return drop(skb, SLUICE_DROP_CT_FULL);
	return POLICY_CONTINUE;
}

/* A bare SYN opens a new connection even if an old entry of the tuple remains. */
static __always_inline int is_bare_syn(const struct policy_pkt *p)
{
	return p->t.proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | 0x10)) == TCP_FLAG_SYN;
}

static __always_inline void pkt_clear(struct policy_pkt *p)
{
	__builtin_memset(p, 0, sizeof(*p));
}

/* Up the node's stack to a socket of the proxy: the mark makes the node's policy routing
 * deliver the packet locally whatever its destination. */
static __always_inline int to_proxy_stack(struct __sk_buff *skb)
{
	/* The whole mark, written as one 32-bit store (the context allows no narrower write). */
	__u32 mark = SLUICE_MARK_TO_PROXY;
	asm volatile("" : "+r"(mark));
	skb->mark = mark;
	return TC_ACT_OK;
}

/* Assign a packet redirected to the proxy to the proxy's socket for its flow: the connection
 * the proxy accepted for it, else (a new flow) the listener at loopback:port. The accepted
 * connection keeps the packet's addresses, so the proxy learns the original destination as
 * its local address. Valid at tc ingress only. */
static __noinline __attribute__((unused)) int redirect_to_proxy(struct __sk_buff *skb, const struct policy_pkt *p, __be16 port)
{
	struct bpf_sock_tuple tuple = {};
	__u32 len;
	int v4 = p->t.family == SLUICE_AF_INET;
	/* Only TCP ports carry layer-7 rules (validation); anything else is never let past them. */
	if (p->t.proto != IPPROTO_TCP)
		return drop(skb, SLUICE_DROP_PROXY);
	if (v4) {
		__builtin_memcpy(&tuple.ipv4.saddr, p->t.saddr, 4);
		__builtin_memcpy(&tuple.ipv4.daddr, p->t.daddr, 4);
		tuple.ipv4.sport = p->t.sport;
		tuple.ipv4.dport = p->t.dport;
		len = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, p->t.saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, p->t.daddr, 16);
		tuple.ipv6.sport = p->t.sport;
		tuple.ipv6.dport = p->t.dport;
		len = sizeof(tuple.ipv6);
	}
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
	if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
		bpf_sk_release(sk);
		sk = 0;
	}
	if (!sk) {
		if (v4) {
			tuple.ipv4.daddr = bpf_htonl(0x7f000001);
			tuple.ipv4.dport = port;
		} else {
			__builtin_memset(tuple.ipv6.daddr, 0, 16);
			tuple.ipv6.daddr[3] = bpf_htonl(1);
			tuple.ipv6.dport = port;
		}
		sk = bpf_skc_lookup_tcp(skb, &tuple, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return drop(skb, SLUICE_DROP_PROXY);
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return drop(skb, SLUICE_DROP_PROXY);
	return to_proxy_stack(skb);
}

static __noinline __attribute__((unused)) void policy_egress_begin(struct __sk_buff *skb)
{
	struct policy_scratch *sc = scratch();
	if (!sc)
		return;
	struct policy_egress *eg = &sc->eg;
	pkt_clear(&eg->p);
	eg->state = 0;
	if (policy_parse(skb, &eg->p) || eg->p.skip)
		return;
	struct policy_ct_entry *e = bpf_map_lookup_elem(&policy_ct, &eg->p.t);
	if (!e || is_bare_syn(&eg->p)) {
		eg->state = 1;
		return;
	}
	int reply = !!(e->flags & SLUICE_PCT_F_ORIGIN_INGRESS);
	pct_touch(e, eg->p.tcp_flags, reply);
	eg->state = reply ? ((e->flags & SLUICE_PCT_F_PROXY_UPSTREAM) ? 4 : 3) : 2;
}

/* Egress, second half (after service translation): the policy of the sending endpoint for
 * the destination the packet now has; a new flow that passes is tracked. */
static __noinline __attribute__((unused)) int policy_egress_end(struct __sk_buff *skb, const struct endpoint_info *ep,
									int translated)
{
	struct policy_scratch *sc = scratch();
	if (!sc)
		return POLICY_CONTINUE;
	struct policy_egress *eg = &sc->eg;
	if (eg->state == 4)
		return POLICY_PROXY_REPLY;
	if (eg->state == 0 || eg->state == 3)
		return POLICY_CONTINUE;
	__u32 endpoint_id = ep->endpoint_id;
	struct policy_endpoint *pe = bpf_map_lookup_elem(&policy_endpoints, &endpoint_id);
	if (pe && pe->egress_mode != SLUICE_POLICY_MODE_NONE) {
		/* The destination the packet has now: parsed again only if translation moved it. */
		struct policy_pkt *now = &eg->p;
		if (translated) {
			now = &sc->pkt;
			pkt_clear(now);
			if (policy_parse(skb, now))
				return POLICY_CONTINUE;
		}
		__u32 id = identity_of(sc, now->t.family, now->t.daddr);
		int v = policy_decide(skb, sc, pe, endpoint_id, SLUICE_POLICY_EGRESS, id, now, now->t.daddr);
		if (v == POLICY_PROXY) {
			if (eg->state == 1 && pct_create(skb, &eg->p.t, SLUICE_PCT_F_ORIGIN_EGRESS) != POLICY_CONTINUE)
				return TC_ACT_SHOT;
			return redirect_to_proxy(skb, now, sc->proxy_port);
		}
		if (v != POLICY_CONTINUE)
			return v;
	}
	if (eg->state == 1)
		return pct_create(skb, &eg->p.t, SLUICE_PCT_F_ORIGIN_EGRESS);
	return POLICY_CONTINUE;
}

/* Ingress of a local endpoint: the packet as the pod will receive it. */
static __noinline int policy_ingress(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	struct policy_scratch *sc = scratch();
	if (!sc)
		return POLICY_CONTINUE;
	struct policy_pkt *p = &sc->pkt;
	pkt_clear(p);
	if (policy_parse(skb, p) || p->skip)
		return POLICY_CONTINUE;
	struct ct_key *k = &sc->key;
	ct_reverse(k, &p->t); /* oriented from the pod */
	struct policy_ct_entry *e = bpf_map_lookup_elem(&policy_ct, k);
	int syn = is_bare_syn(p);
	if (e && (e->flags & SLUICE_PCT_F_PROXY)) {
		pct_touch(e, p->tcp_flags, 1);
		return POLICY_PROXY_REPLY;
	}
	if (e && !syn && (e->flags & SLUICE_PCT_F_ORIGIN_EGRESS)) {
		pct_touch(e, p->tcp_flags, 1);
		return POLICY_CONTINUE;
	}
	__u32 endpoint_id = ep->endpoint_id;
	struct policy_endpoint *pe = bpf_map_lookup_elem(&policy_endpoints, &endpoint_id);
	int proxy = 0;
	int from_proxy = (skb->mark & SLUICE_MARK_MASK) == SLUICE_MARK_FROM_PROXY;
	if (pe && pe->ingress_mode != SLUICE_POLICY_MODE_NONE) {
		__u32 id = identity_of(sc, p->t.family, p->t.saddr);
		int v = policy_decide(skb, sc, pe, endpoint_id, SLUICE_POLICY_INGRESS, id, p, p->t.saddr);
		/* The proxy's own upstream connection passes: its client went through the proxy. */
		if (v == POLICY_PROXY && !from_proxy)
			proxy = 1;
		else if (v != POLICY_CONTINUE && v != POLICY_PROXY)
			return v;
	}
	if (proxy) {
		/* The pod never sees this flow (the proxy answers it); tracked all the same, so that
		 * its later packets are decided and redirected like the first. */
		if (!e || syn) {
			if (pct_create(skb, k, SLUICE_PCT_F_ORIGIN_INGRESS) != POLICY_CONTINUE)
				return TC_ACT_SHOT;
		} else {
			pct_touch(e, p->tcp_flags, 0);
		}
		return POLICY_PROXY;
	}
	if (e && !syn)
		pct_touch(e, p->tcp_flags, 0);
	else
		return pct_create(skb, k, SLUICE_PCT_F_ORIGIN_INGRESS | (from_proxy ? SLUICE_PCT_F_PROXY_UPSTREAM : 0));
	return POLICY_CONTINUE;
}

/* Hand a packet to a pod on this node if the pod's ingress policy lets it in; to the node's
 * proxy if it must pass through it or belongs to one of the proxy's upstream connections. */
static __always_inline int deliver_to_endpoint(struct __sk_buff *skb, struct ethhdr *unused, const struct endpoint_info *ep)
{
	int v = policy_ingress(skb, ep);
	if (v == POLICY_PROXY) {
		struct policy_scratch *sc = scratch();
		if (!sc)
			return TC_ACT_SHOT;
		return redirect_to_proxy(skb, &sc->pkt, sc->proxy_port);
	}
	if (v == POLICY_PROXY_REPLY)
		return to_proxy_stack(skb);
	if (v != POLICY_CONTINUE)
		return v;
	struct ethhdr *eth = skb_data(skb);
	if ((void *)(eth + 1) > skb_data_end(skb))
		return TC_ACT_SHOT;
	return redirect_to_endpoint(skb, eth, ep);
}

#endif
