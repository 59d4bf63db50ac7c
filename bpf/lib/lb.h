/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing shared by the socket hooks and the per-packet path: the service
 * tables, frontend lookup, and backend selection (random slot, Maglev, client affinity). */
#ifndef SLUICE_LIB_LB_H
#define SLUICE_LIB_LB_H

#include "common.h"

/* Service frontends: (address, port, protocol, scope) -> backend set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend);
	__uint(max_entries, SLUICE_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_frontends SEC(".maps");

/* Backend slots of each set, both revisions: (set, revision, slot) -> backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_slot_key);
	__type(value, __u32);
	__uint(max_entries, SLUICE_MAX_SLOTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_slots SEC(".maps");

/* Maglev tables of the sets that have external frontends, in chunks. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_maglev_key);
	__type(value, struct lb_maglev_chunk);
	__uint(max_entries, SLUICE_MAX_MAGLEV_CHUNKS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_maglev SEC(".maps");

/* Backends by id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(max_entries, SLUICE_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_backends SEC(".maps");

/* sessionAffinity ClientIP: the backend each client last used, per set. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, SLUICE_AFFINITY_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_affinity SEC(".maps");

static __always_inline struct lb_frontend *lookup_frontend(const __u8 *addr, __be16 port, __u8 proto,
							   __u8 family, int internal)
{
	struct lb_frontend_key key = {};
	__builtin_memcpy(key.addr, addr, 16);
	key.port = port;
	key.proto = proto;
	key.family = family;
	if (internal) {
		key.scope = SLUICE_LB_SCOPE_INTERNAL;
		struct lb_frontend *fe = bpf_map_lookup_elem(&lb_frontends, &key);
		if (fe)
			return fe;
	}
	key.scope = SLUICE_LB_SCOPE_EXTERNAL;
	return bpf_map_lookup_elem(&lb_frontends, &key);
}

/* The backend in slot `slot` (1-based) of the frontend's live revision; 0 when absent. */
static __always_inline __u32 slot_backend(const struct lb_frontend *fe, __u32 slot)
{
	struct lb_slot_key key = {.set_id = fe->set_id, .slot = (__u16)slot, .revision = fe->revision};
	__u32 *id = bpf_map_lookup_elem(&lb_slots, &key);
	return id ? *id : 0;
}

/* Maglev: the table entry `hash % CONFIG_MAGLEV_SIZE` of the frontend's set; 0 when absent. */
static __always_inline __u32 maglev_backend(const struct lb_frontend *fe, __u32 hash)
{
	__u32 entry = hash % CONFIG_MAGLEV_SIZE;
	struct lb_maglev_key key = {.set_id = fe->set_id,
				    .chunk = (__u16)(entry / SLUICE_MAGLEV_CHUNK),
				    .revision = fe->revision};
	struct lb_maglev_chunk *chunk = bpf_map_lookup_elem(&lb_maglev, &key);
	if (!chunk)
		return 0;
	__u32 i = entry % SLUICE_MAGLEV_CHUNK;
	if (i >= SLUICE_MAGLEV_CHUNK)
		return 0;
	return chunk->backend_ids[i];
}

/* The backend a client keeps under sessionAffinity ClientIP, if still valid; 0 otherwise. */
static __always_inline __u32 affinity_backend(const struct lb_frontend *fe, const struct lb_affinity_key *key)
{
	struct lb_affinity *a = bpf_map_lookup_elem(&lb_affinity, key);
	if (!a)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (now - a->last_used_ns > (__u64)fe->affinity_timeout_s * 1000000000ULL)
		return 0;
	/* Only a backend that still takes new connections. */
	__u32 id = a->backend_id;
	struct lb_backend *be = bpf_map_lookup_elem(&lb_backends, &id);
	if (!be || (be->flags & SLUICE_LB_BE_TERMINATING))
		return 0;
	a->last_used_ns = now;
	return id;
}

static __always_inline void affinity_remember(const struct lb_affinity_key *key, __u32 backend_id)
{
	struct lb_affinity v = {.last_used_ns = bpf_ktime_get_ns(), .backend_id = backend_id};
	bpf_map_update_elem(&lb_affinity, key, &v, BPF_ANY);
}

/* A 32-bit mix (murmur3's finaliser) so that hash % size spreads well. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

#endif
