/* lb_abi.h: structs and constants of the load balancer (bpf/mptcp_lb.c) shared with Python.
 * No maps, no helpers. Mirror: controller/lb_abi.py — update both (tests/unit/test_lb_abi.py
 * compiles this file and compares every constant and struct layout with the mirror). */
#ifndef MPTCPCTL_LB_ABI_H
#define MPTCPCTL_LB_ABI_H

#include "abi.h"

/* Maglev lookup table size: a prime well above 100 x the backend count (Maglev paper §3.4). */
#define LB_RING_SIZE 65537
/* Backend slots; struct lb_backend index = the backend's id for the life of an `lb up`. */
#define LB_MAX_BACKENDS 64
/* Ring entry and map value meaning "no backend". */
#define LB_NO_BACKEND 0xffffffff
/* Seed of the flow hash (murmur3 over struct lb_flow; controller/maglev.flow_hash mirrors). */
#define LB_HASH_SEED 0x4d505443
/* Connection table entries (LRU, per family): client address and port -> backend. The three
 * table sizes can be set with -D (bench/fuzz_lb.py builds with small ones). */
#ifndef LB_CONN_ENTRIES
#define LB_CONN_ENTRIES 262144
#endif
/* Token table entries (LRU): token -> backend; written by the controller only. */
#ifndef LB_TOKEN_ENTRIES
#define LB_TOKEN_ENTRIES 65536
#endif
/* Blocklist entries (LRU): 5-tuples whose ADD_ADDR HMAC failed (--enforce-hmac). */
#ifndef LB_BLOCK_ENTRIES
#define LB_BLOCK_ENTRIES 16384
#endif
/* Outer header added in front of the client's packet: IPv4 protocol 4 (IP-in-IP) for an
 * IPv4 VIP, IPv6 next header 41 (IPv6-in-IPv6) for an IPv6 VIP; TTL / hop limit. */
#define LB_IPIP_PROTO 4
#define LB_IP6IP6_PROTO 41
#define LB_OUTER_TTL 64

/* struct lb_config.flags */
enum lb_flags {
	LB_F_UNKNOWN_JOIN_HASH = 1 << 0, /* an unknown-token MP_JOIN SYN is hashed, not dropped */
	LB_F_ENFORCE_HMAC = 1 << 1,      /* drop packets of 5-tuples in lb_blocked */
	LB_F_NO_TOKEN_STEERING = 1 << 2, /* debug: treat MP_JOIN SYNs like any new flow */
	LB_F_STATIC_NEXTHOP = 1 << 3,    /* use lb_backend.mac/ifindex, not bpf_fib_lookup */
};

/* struct lb_backend.flags */
enum lb_backend_flags {
	LB_BE_IN_USE = 1 << 0,   /* slot holds a backend (new flows may still avoid it) */
	LB_BE_DRAINING = 1 << 1, /* removed from the Maglev table; existing flows still go there */
};

/* Per-CPU counters: index of the lb_counters map. */
enum lb_counter_idx {
	LB_CNT_PACKETS = 0,      /* every packet the program saw */
	LB_CNT_VIP = 1,          /* TCP segments to VIP:port */
	LB_CNT_FORWARDED = 2,    /* encapsulated and sent (XDP_TX or redirect) */
	LB_CNT_NEW_FLOW = 3,     /* a backend picked by the Maglev table */
	LB_CNT_CONN_HIT = 4,     /* a backend found in the connection table */
	LB_CNT_JOIN_HIT = 5,     /* an MP_JOIN SYN steered by its token */
	LB_CNT_JOIN_UNKNOWN = 6, /* an MP_JOIN SYN with an unknown token, dropped */
	LB_CNT_JOIN_HASHED = 7,  /* an MP_JOIN SYN with an unknown token, hashed (option) */
	LB_CNT_BLOCKED = 8,      /* dropped: 5-tuple blocklisted after an HMAC failure */
	LB_CNT_NO_BACKEND = 9,   /* dropped: no backend for the flow (empty table) */
	LB_CNT_FIB_FAIL = 10,    /* dropped: no route or neighbour to the backend, or too big */
	LB_CNT_MALFORMED = 11,   /* VIP segments with broken MPTCP options (forwarded anyway) */
	LB_CNT_EVENTS_LOST = 12, /* ring buffer full */
	LB_CNT_KEYS = 13,        /* MP_CAPABLE keys reported to the controller */
	LB_CNT_ADD_ADDR = 14,    /* ADD_ADDR options reported to the controller */
	LB_CNT_NOT_HANDLED = 15, /* VIP segments passed: VLAN-tagged, IPv6 extension headers */
	LB_CNT_MAX = 16,
};

/* Ring buffer event types (struct lb_event.type). */
enum lb_event_type {
	LB_EV_KEYS = 1,     /* MP_CAPABLE with both keys: opt.key_a client, opt.key_b server */
	LB_EV_ADD_ADDR = 3, /* ADD_ADDR client -> server: opt.addr_id/addr/port/data (HMAC) */
};

/* A TCP flow as the client sent it: client address and port first. Addresses are 16 bytes
 * (IPv4 in the first 4, the rest zero), ports in network byte order. Events and lb_blocked. */
struct lb_flow {
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* 6 */
	__u16 pad;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Keys of the connection tables. One VIP:port per LB, so the client's end names the flow;
 * small keys hash fast (an 8-byte key costs a third of a 40-byte one). */
struct lb_key4 {
	__u32 saddr; /* client address, network byte order */
	__u16 sport; /* client port, network byte order */
	__u16 pad;
};

struct lb_key6 {
	__u8 saddr[16];
	__u16 sport;
	__u16 pad;
	__u32 pad2;
};

/* Value of the connection tables. */
struct lb_conn {
	__u32 backend; /* index into lb_backends */
	__u32 flags;   /* enum lb_conn_flags */
	__u32 token;   /* LB_CONN_JOIN: the token the join SYN carried */
	__u32 pad;
};

/* struct lb_conn.flags */
enum lb_conn_flags {
	LB_CONN_KEYS_SENT = 1 << 0, /* the MP_CAPABLE keys of this flow were reported */
	LB_CONN_JOIN = 1 << 1,      /* the flow began with an MP_JOIN SYN (token is valid) */
};

/* One backend slot. */
struct lb_backend {
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
	__u8 family;   /* 4 or 6, the VIP's */
	__u8 flags;    /* enum lb_backend_flags */
	__u8 mac[6];   /* LB_F_STATIC_NEXTHOP: next-hop MAC */
	__u32 ifindex; /* LB_F_STATIC_NEXTHOP: egress ifindex, 0 = XDP_TX */
	__u32 pad;
};

/* Value of the lb_config map (one entry, written by the controller). */
struct lb_config {
	__u8 vip[16];   /* IPv4 in the first 4 bytes */
	__u8 src[16];   /* outer source: the LB's address toward the backends */
	__u16 vip_port; /* network byte order */
	__u8 family;    /* 4 or 6 */
	__u8 pad0;
	__u32 flags;  /* enum lb_flags */
	__u8 smac[6]; /* LB_F_STATIC_NEXTHOP: source MAC of encapsulated frames */
	__u8 pad1[2];
	__u32 hop_gen; /* bumped by the controller: XDP re-resolves its cached next hops */
	__u32 pad2;
};

/* Ring buffer record for the controller. */
struct lb_event {
	__u32 type;    /* enum lb_event_type */
	__u32 backend; /* backend the packet went to */
	__u8 tcp_flags;
	__u8 conn_flags; /* enum lb_conn_flags of the flow */
	__u16 pad;
	__u32 token; /* LB_CONN_JOIN in conn_flags: the connection's token */
	__u64 ts_ns;
	struct lb_flow flow;
	struct mptcp_opt opt; /* the decoded option (include/mptcp_opts.h) */
};

#endif
