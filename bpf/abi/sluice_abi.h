/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The datapath ABI: every struct and constant shared by the BPF programs and the agent.
 * This header is the single source of truth; the Rust side (crate sluice-abi) is generated from
 * it by bindgen, and bindgen's layout tests check sizes and offsets.
 *
 * Rules: fixed-width types only, explicit padding (so user space zero-initialises every byte
 * of a map key), no pointers.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#include <linux/types.h>

/* Address families in keys (same numbers as AF_INET / AF_INET6). */
#define SLUICE_AF_INET 2
#define SLUICE_AF_INET6 10

/* Host routing modes, set at load time in the CONFIG_HOST_ROUTING global. */
#define SLUICE_HOST_ROUTING_LEGACY 0 /* the node's stack routes pod traffic */
#define SLUICE_HOST_ROUTING_BPF 1    /* redirect_peer / fib_lookup + redirect_neigh */

/* The pod's gateway: link-local addresses answered by the datapath on every pod interface. */
#define SLUICE_GATEWAY_IPV4 0xA9FE0101 /* 169.254.1.1, host byte order */
/* fe80::1 as four 32-bit words, host byte order (words 1 and 2 are zero). */
#define SLUICE_GATEWAY_IPV6_WORD0 0xFE800000
#define SLUICE_GATEWAY_IPV6_WORD3 0x00000001

/* Capacity of the endpoint maps. */
#define SLUICE_MAX_ENDPOINTS 65536

/* Endpoint flags. */
#define SLUICE_EP_HAS_IPV4 (1 << 0)
#define SLUICE_EP_HAS_IPV6 (1 << 1)

/*
 * Why the datapath dropped a packet. Numbers are stable: tools and metrics name them through
 * sluice-abi's drop_reason_name(). Keep this list and that function in step (a test checks).
 */
enum sluice_drop_reason {
	SLUICE_DROP_NONE = 0,
	SLUICE_DROP_INVALID_SOURCE_MAC = 1,  /* pod sent a frame whose source MAC is not its own */
	SLUICE_DROP_INVALID_SOURCE_IP = 2,   /* pod sent a packet whose source IP is not its own */
	SLUICE_DROP_UNKNOWN_ENDPOINT = 3,    /* packet on a pod interface the agent does not know */
	SLUICE_DROP_UNSUPPORTED_L3 = 4,      /* neither IPv4, IPv6 nor ARP */
	SLUICE_DROP_MALFORMED = 5,           /* headers truncated or inconsistent */
	SLUICE_DROP_ARP_SPOOFED = 6,         /* ARP with a sender address that is not the pod's */
	SLUICE_DROP_NO_SERVICE_BACKEND = 7,  /* service without backends: answered with ICMP unreachable */
	SLUICE_DROP_NAT_NO_PORT = 8,         /* no free SNAT port for a NodePort flow to another node */
	SLUICE_DROP_CT_FULL = 9,             /* a conntrack table (service or policy) refused a new entry */
	SLUICE_DROP_POLICY_INGRESS = 10,     /* network policy of the receiving pod denied it */
	SLUICE_DROP_POLICY_EGRESS = 11,      /* network policy of the sending pod denied it */
	SLUICE_DROP_PROXY = 12,              /* layer-7 policy applies but the proxy is not listening, or the packet arrived where it cannot be redirected */
	SLUICE_DROP_REASON_MAX = 13,
};

/* What the datapath did with a packet it did not drop; index of the forward counters. */
enum sluice_forward_kind {
	SLUICE_FWD_LOCAL_ENDPOINT = 0, /* redirect_peer to a pod on this node */
	SLUICE_FWD_FIB = 1,            /* fib_lookup + redirect_neigh */
	SLUICE_FWD_STACK = 2,          /* handed to the node's stack */
	SLUICE_FWD_ARP_REPLY = 3,      /* ARP for the gateway answered */
	SLUICE_FWD_ND_REPLY = 4,       /* neighbour solicitation for the gateway answered */
	SLUICE_FWD_ICMP_REJECT = 5,    /* service without backends: ICMP unreachable sent back */
	SLUICE_FWD_KIND_MAX = 6,
};

/* Key of the `endpoints` map: a pod address. IPv4 in the first 4 bytes of addr, rest zero. */
struct endpoint_key {
	__u8 addr[16];
	__u8 family; /* SLUICE_AF_INET or SLUICE_AF_INET6 */
	__u8 pad[3];
};

/* Value of the `endpoints` (by address) and `endpoint_ifaces` (by host ifindex) maps. */
struct endpoint_info {
	__u32 ifindex;     /* host-side veth; bpf_redirect_peer target */
	__u32 identity;    /* security identity of the pod's label set */
	__u32 flags;       /* SLUICE_EP_* */
	__u32 endpoint_id; /* the agent's endpoint number */
	__u8 ipv4[4];      /* network byte order */
	__u8 ipv6[16];
	__u8 mac[6];      /* the pod interface's MAC */
	__u8 node_mac[6]; /* host-side MAC: the pod's gateway */
};

/* Which program observed a packet: the direction of counters and events. */
enum sluice_obs_point {
	SLUICE_POINT_FROM_POD = 0,    /* from_pod: what a pod sends */
	SLUICE_POINT_FROM_NETDEV = 1, /* from_netdev: what arrives on the node's uplink */
	SLUICE_POINT_TO_POD = 2,      /* to_pod: what the node's stack delivers to a pod */
	SLUICE_POINT_MAX = 3,
};

/* Monitor aggregation (CONFIG_MONITOR_AGGREGATION): which forwarded packets make events. Drop
 * events are made at every level, rate-limited per CPU. */
#define SLUICE_MONITOR_OFF 0    /* drops only */
#define SLUICE_MONITOR_MEDIUM 1 /* + the first packet of each flow and each new TCP flag */
#define SLUICE_MONITOR_ALL 2    /* + every forwarded packet */

/* Bytes of each packet copied into its event (headers, bounded). */
#define SLUICE_EVENT_CAPTURE 128
/* Entries of the flow table that decides which packets are "first" (LRU). */
#define SLUICE_TRACE_FLOWS 16384

enum sluice_event_type {
	SLUICE_EVENT_DROP = 1,  /* code: enum sluice_drop_reason */
	SLUICE_EVENT_TRACE = 2, /* code: enum sluice_forward_kind */
	SLUICE_EVENT_POLICY_AUDIT = 3, /* code: the drop reason an audit-mode policy would give */
};

/* Why an event was not delivered: index of the event_lost counters. */
enum sluice_event_loss {
	SLUICE_LOSS_RATE_LIMITED = 0, /* more drop events than CONFIG_DROP_EVENT_RATE per CPU-second */
	SLUICE_LOSS_RING_FULL = 1,    /* the ring buffer had no room: the agent is behind */
	SLUICE_LOSS_MAX = 2,
};

/* One record of the `events` ring buffer. */
struct datapath_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;      /* the device the packet arrived on */
	__u32 orig_len;     /* packet length */
	__u8 type;          /* enum sluice_event_type */
	__u8 code;          /* drop reason or forward kind */
	__u8 point;         /* enum sluice_obs_point */
	__u8 pad0;
	__u16 cap_len;      /* bytes valid in data */
	__u16 pad1;
	__u32 policy_rule;  /* policy verdicts: cookie of the entry that decided, 0 = default deny */
	__u32 peer_identity; /* policy verdicts: identity of the other end */
	__u8 data[SLUICE_EVENT_CAPTURE]; /* the packet from its Ethernet header on */
};

/* Key of the trace flow table: a flow in one direction. */
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* Value of the trace flow table: TCP flags already reported for the flow. */
struct flow_state {
	__u64 first_ns;
	__u8 tcp_flags;
	__u8 pad[7];
};

/* Per-CPU token bucket of drop events. */
struct event_budget {
	__u64 window_start_ns;
	__u64 tokens;
};

/* A packet and byte counter; values of the per-CPU counter arrays. */
struct traffic_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * The netfilter guard (guard.c): a cgroup setsockopt program that refuses iptables-legacy rule
 * installs from processes in the agent's cgroup, because pod traffic routed by the datapath
 * skips the rules those installs would add.
 */
#define SLUICE_SOL_IP 0             /* SOL_IP */
#define SLUICE_SOL_IPV6 41          /* SOL_IPV6 */
#define SLUICE_IPT_SO_SET_REPLACE 64 /* IPT_SO_SET_REPLACE and IP6T_SO_SET_REPLACE: a table install */
/* Size of the guard_events ring buffer. */
#define SLUICE_GUARD_EVENTS_BYTES (64 * 1024)

/* Index of the guard_counters per-CPU array. */
enum sluice_guard_counter {
	SLUICE_GUARD_BLOCKED = 0,     /* setsockopt calls refused */
	SLUICE_GUARD_EVENTS_LOST = 1, /* refusals not reported: guard_events was full */
	SLUICE_GUARD_COUNTER_MAX = 2,
};

/* One record of the guard_events ring buffer: a refused table install (40 bytes). */
struct guard_event {
	__u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 pid;          /* thread group id (the process id) of the caller */
	__u32 level;        /* SLUICE_SOL_IP or SLUICE_SOL_IPV6 */
	__u32 optname;      /* SLUICE_IPT_SO_SET_REPLACE */
	__u8 comm[16];      /* the caller's command name, NUL-terminated (TASK_COMM_LEN) */
	__u32 pad;
};

/*
 * Services: frontends (service address, port, protocol) -> backend sets -> backends.
 *
 * A frontend's value names its backend set and which half ("revision") of the set's slots and
 * Maglev table is live. The agent writes a new set into the other half, then flips every
 * frontend of the set with one map update each, so a reader never sees a half-written set.
 */
#define SLUICE_MAX_FRONTENDS 65536
#define SLUICE_MAX_BACKENDS 65536
#define SLUICE_MAX_SLOTS 262144     /* backend slots, both revisions, every set */
#define SLUICE_MAX_BACKENDS_PER_SET 65535
#define SLUICE_MAGLEV_CHUNK 1024    /* backend ids per lb_maglev value */
#define SLUICE_MAGLEV_DEFAULT_SIZE 16381
#define SLUICE_MAX_MAGLEV_CHUNKS 65536
#define SLUICE_CT_DEFAULT_ENTRIES 262144
#define SLUICE_AFFINITY_ENTRIES 65536
#define SLUICE_SOCK_REVNAT_ENTRIES 262144

/* Where a frontend applies. The datapath looks up Internal first for traffic from the node's
 * pods and processes, then External; traffic from the uplink uses External only. */
#define SLUICE_LB_SCOPE_EXTERNAL 0
#define SLUICE_LB_SCOPE_INTERNAL 1

/* Frontend flags. */
#define SLUICE_LB_F_NODEPORT (1 << 0)   /* a NodePort on one of this node's addresses */
#define SLUICE_LB_F_EXTERNAL (1 << 1)   /* an external IP or load-balancer ingress address */
#define SLUICE_LB_F_LOCAL_ONLY (1 << 2) /* externalTrafficPolicy Local: no SNAT, client kept */
#define SLUICE_LB_F_AFFINITY (1 << 3)   /* sessionAffinity ClientIP */
#define SLUICE_LB_F_MAGLEV (1 << 4)     /* per-packet selection by the set's Maglev table */

/* Key of `lb_frontends`. */
struct lb_frontend_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__be16 port;
	__u8 proto;  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 family; /* SLUICE_AF_INET or SLUICE_AF_INET6 */
	__u8 scope;  /* SLUICE_LB_SCOPE_* */
	__u8 pad[3];
};

/* Value of `lb_frontends`: where its backends are. */
struct lb_frontend {
	__u32 set_id;             /* key of the set in lb_slots and lb_maglev */
	__u16 count;              /* backends for new connections: slots 1..count */
	__u16 flags;              /* SLUICE_LB_F_* */
	__u32 affinity_timeout_s; /* sessionAffinity ClientIP timeout */
	__u8 revision;            /* live half of the set's slots and Maglev table: 0 or 1 */
	__u8 pad[3];
};

/* Key of `lb_slots`: slot 1..count of a set's live revision -> backend id. */
struct lb_slot_key {
	__u32 set_id;
	__u16 slot;
	__u8 revision;
	__u8 pad;
};

/* Key of `lb_maglev`: one chunk of a set's Maglev table (CONFIG_MAGLEV_SIZE entries). */
struct lb_maglev_key {
	__u32 set_id;
	__u16 chunk; /* entry / SLUICE_MAGLEV_CHUNK */
	__u8 revision;
	__u8 pad;
};

/* Value of `lb_maglev`: backend ids of SLUICE_MAGLEV_CHUNK consecutive table entries. */
struct lb_maglev_chunk {
	__u32 backend_ids[SLUICE_MAGLEV_CHUNK];
};

/* Backend flags. */
#define SLUICE_LB_BE_LOCAL (1 << 0)       /* a pod on this node */
#define SLUICE_LB_BE_TERMINATING (1 << 1) /* kept for established flows; no new connections */

/* Value of `lb_backends` (key: __u32 backend id, never 0). */
struct lb_backend {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u8 flags; /* SLUICE_LB_BE_* */
	__u8 pad[3];
};

/* Key of `lb_affinity`: a client of a set. Socket LB names the client by its network
 * namespace cookie (family 0), per-packet LB by its address. */
struct lb_affinity_key {
	__u8 client[16];
	__u32 set_id;
	__u8 family;
	__u8 pad[3];
};

/* Value of `lb_affinity`. */
struct lb_affinity {
	__u64 last_used_ns;
	__u32 backend_id;
	__u32 pad;
};

/* Key of `lb_sock_revnat`: a socket and the backend it was sent to, so that recvmsg and
 * getpeername show the service address instead. */
struct lb_sock_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

/* Value of `lb_sock_revnat`: the frontend the application asked for. */
struct lb_sock_revnat {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

/*
 * Service conntrack (`lb_ct`): one entry per direction of a translated flow, keyed by the tuple
 * as it arrives, saying how to rewrite it. Forward entries (client -> frontend) rewrite the
 * destination to the backend and, for NodePort flows to another node, the source to this
 * node; reply entries (backend -> client or node) undo that.
 */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport; /* ICMP echo: the identifier in both */
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

#define SLUICE_CT_F_REPLY (1 << 0)     /* a reply entry */
#define SLUICE_CT_F_NEW_SRC (1 << 1)   /* rewrite the source to new_saddr/new_sport */
#define SLUICE_CT_F_NEW_DST (1 << 2)   /* rewrite the destination to new_daddr/new_dport */
#define SLUICE_CT_F_SEEN_REPLY (1 << 3) /* the flow has carried a reply */
#define SLUICE_CT_F_CLOSING (1 << 4)   /* TCP FIN or RST seen: short timeout */

struct ct_entry {
	__u64 last_seen_ns; /* bpf_ktime_get_ns(), refreshed at most once a second */
	__u8 new_saddr[16];
	__u8 new_daddr[16];
	__be16 new_sport;
	__be16 new_dport;
	__u32 backend_id;
	__u32 set_id;
	__u8 flags; /* SLUICE_CT_F_* */
	__u8 pad[3];
};

/*
 * XDP on the uplink (xdp_netdev.c): established NodePort / load-balancer flows SNAT'd to a
 * backend on another node are translated and sent back out before the kernel allocates an skb;
 * when asked, packets to a NodePort on this node that no frontend matches are dropped.
 */
enum sluice_xdp_counter {
	SLUICE_XDP_FORWARDED = 0,         /* translated and transmitted from XDP */
	SLUICE_XDP_DROPPED_NO_FRONTEND = 1, /* NodePort range of a node address, no frontend */
	SLUICE_XDP_COUNTER_MAX = 2,
};

/*
 * Network policy. The `ipcache` (LPM trie) maps every pod address, node address and policy CIDR
 * to a security identity; addresses under no prefix are world. The `policy` LPM trie holds the
 * entries of every local endpoint: (endpoint, identity, direction, revision) fully matched, then
 * protocol and destination port by prefix, so one entry covers a protocol, a port range or
 * everything. A packet is looked up twice, with the peer's identity and with
 * SLUICE_IDENTITY_ANY, and the stronger verdict wins (deny > audit > allow); a miss in both
 * follows the endpoint's mode. `policy_endpoints` holds each endpoint's modes and the revision
 * its entries are read under: the agent writes a new revision whole, then flips it.
 *
 * Kubernetes NetworkPolicy ipBlocks match every address in the block, pods' and nodes' too,
 * which the peer's identity cannot tell (an identity is shared by every pod of a label set).
 * `ipblocks` (an LPM trie like the ipcache, holding only the prefixes ipBlocks name, cidr and
 * except alike) gives an address the identity of its longest such prefix. An endpoint whose
 * policy in a direction has ipBlock rules carries SLUICE_POLICY_F_*_BY_ADDRESS; when both
 * identity lookups miss, its packets are looked up once more with the ipblocks identity of the
 * peer's address, among the entries of direction | SLUICE_POLICY_BY_ADDRESS. Those entries are
 * allows only (NetworkPolicy has no deny), so asking them only on a miss gives the union of the
 * allows; an endpoint without the flag never reads the ipblocks map.
 */
#define SLUICE_IPCACHE_ENTRIES 262144
#define SLUICE_IPBLOCK_ENTRIES 65536
#define SLUICE_POLICY_ENTRIES 262144
#define SLUICE_POLICY_CT_DEFAULT_ENTRIES 262144
#define SLUICE_IDENTITY_WORLD 2
#define SLUICE_IDENTITY_ANY 0

struct ipcache_key {
	__u32 prefixlen; /* 32 (family and pad) + the address prefix length */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_entry {
	__u32 identity;
	__u32 pad;
};

#define SLUICE_POLICY_INGRESS 0
#define SLUICE_POLICY_EGRESS 1
/* Or'ed into a direction: entries keyed by the peer's ipblocks identity, not its identity. */
#define SLUICE_POLICY_BY_ADDRESS 2
/* Bits of struct policy_key after prefixlen that are always matched; then 8 of protocol and
 * 16 of port. */
#define SLUICE_POLICY_FIXED_BITS 88
#define SLUICE_POLICY_FULL_BITS 112

struct policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 identity; /* peer identity or SLUICE_IDENTITY_ANY */
	__u8 direction; /* SLUICE_POLICY_INGRESS / _EGRESS, | SLUICE_POLICY_BY_ADDRESS */
	__u8 revision;  /* 0 or 1: the endpoint's current one is in policy_endpoints */
	__u8 pad;
	__u8 proto;     /* IP protocol */
	__be16 port;    /* destination port; ICMP/ICMPv6: the type */
	__u8 pad2[2];
};

#define SLUICE_POLICY_ALLOW 1
#define SLUICE_POLICY_AUDIT 2 /* allowed and reported: an audit-mode policy would deny it */
#define SLUICE_POLICY_DENY 3

struct policy_entry {
	__u8 verdict; /* SLUICE_POLICY_ALLOW / _AUDIT / _DENY */
	__u8 pad;
	__be16 proxy_port; /* an allow whose rules all carry layer-7 rules: the node proxy's port */
	__u32 rule;   /* cookie naming the policy rules behind the entry (agent's table) */
};

#define SLUICE_POLICY_MODE_NONE 0          /* not selected: no lookup, everything allowed */
#define SLUICE_POLICY_MODE_ENFORCE 1       /* a miss is denied */
#define SLUICE_POLICY_MODE_AUDIT 2         /* a miss is reported and allowed */
#define SLUICE_POLICY_MODE_DEFAULT_ALLOW 3 /* a miss is allowed */

/* Flags of policy_endpoint: the direction has entries by address (ipBlock rules). */
#define SLUICE_POLICY_F_INGRESS_BY_ADDRESS (1 << 0)
#define SLUICE_POLICY_F_EGRESS_BY_ADDRESS (1 << 1)

struct policy_endpoint {
	__u8 ingress_mode; /* SLUICE_POLICY_MODE_* */
	__u8 egress_mode;
	__u8 revision;
	__u8 flags; /* SLUICE_POLICY_F_*, flipped with the revision */
};

/*
 * Policy connection tracking (`policy_ct`): every flow of a local pod, keyed by its tuple as the
 * pod sees it, oriented from the pod (saddr is the pod's address). A reply of a flow the pod
 * opened (ORIGIN_EGRESS) or accepted (ORIGIN_INGRESS) passes without a policy lookup; packets
 * in the opening direction are checked on every packet, so a policy change stops established
 * connections it no longer allows.
 */
#define SLUICE_PCT_F_ORIGIN_EGRESS (1 << 0)
#define SLUICE_PCT_F_ORIGIN_INGRESS (1 << 1)
#define SLUICE_PCT_F_CLOSING (1 << 2)
#define SLUICE_PCT_F_SEEN_REPLY (1 << 3)
/* Written by the node's proxy for each upstream connection it opens from a local pod's address
 * (oriented from that pod): packets of the tuple towards the pod belong to the proxy. */
#define SLUICE_PCT_F_PROXY (1 << 4)
/* Set on a local pod's entry for a connection the proxy opened to it (FROM_PROXY): the pod's
 * replies belong to the proxy, whichever node the client's address is on. */
#define SLUICE_PCT_F_PROXY_UPSTREAM (1 << 5)

struct policy_ct_entry {
	__u64 last_seen_ns;
	__u8 flags; /* SLUICE_PCT_F_* */
	__u8 pad[7];
};

/*
 * The layer-7 proxy. A connection that policy redirects gets its packets marked TO_PROXY and
 * assigned to the proxy's listener (127.0.0.1 / ::1 at the port in the policy entry); the
 * node's policy routing delivers packets with that mark locally, whatever their destination.
 * The proxy marks its upstream sockets FROM_PROXY: the datapath lets such packets past the
 * policy redirect that sent their client to the proxy.
 */
#define SLUICE_MARK_MASK 0x0000ff00
#define SLUICE_MARK_TO_PROXY 0x00005100
#define SLUICE_MARK_FROM_PROXY 0x00005200

#endif /* SLUICE_ABI_H */
