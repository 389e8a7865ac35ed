/* mptcp_lb.c: the load balancer's XDP program and every map call it makes. A segment to
 * VIP:port goes to one backend, IP-in-IP or IPv6-in-IPv6 encapsulated (Katran's model): an
 * MP_JOIN SYN by its token, any other SYN by the Maglev table, later segments by the
 * connection table. Also the backends' decapsulator (mptcp_lb_decap).
 * Built for one VIP family: -DLB_VIP_FAMILY=4 (default) or 6 (controller/lb.py passes it), so
 * each map call site names one map and the verifier can inline it. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#include "include/lb_abi.h"

#ifndef LB_VIP_FAMILY
#define LB_VIP_FAMILY 4
#endif
#if LB_VIP_FAMILY == 6
/* Key of lb_conns; outer header bytes. */
#define LB_KEY struct lb_key6
#define OUTER_LEN 40
#else
#define LB_KEY struct lb_key4
#define OUTER_LEN 20
#endif
#ifndef EVENT_PAGES
#define EVENT_PAGES 64
#endif

#define AF_INET_ 2
#define AF_INET6_ 10
#define ETH_P_IP_ 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPPROTO_TCP_ 6
#define IP_MF_ 0x2000
#define IP_OFFMASK_ 0x1fff
/* IPv6 extension headers a TCP segment to the VIP might sit behind (not handled). */
#define IP6_HOPOPTS_ 0
#define IP6_ROUTING_ 43
#define IP6_FRAGMENT_ 44
#define IP6_DSTOPTS_ 60
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define TCPOPT_EOL_ 0
#define TCPOPT_NOP_ 1
/* ADD_ADDR flag E (echo): an echo carries no HMAC. */
#define ADD_ADDR_ECHO 0x01
/* Offsets into the TCP options are < TCP_OPT_SPACE; masking with this keeps them provably
 * inside the option space for the verifier. */
#define OPT_MASK 63
/* The shortest option the LB reads: MP_JOIN on a SYN (12 bytes; MP_CAPABLE with keys is 20,
 * ADD_ADDR at least 16). Fewer option bytes left end the walk. */
#define OPT_MIN_USEFUL 12
/* No such option in struct lb_found. */
#define OPT_NONE 0xff
/* Largest option the events decode: ADD_ADDR with IPv6 address, port and HMAC. */
#define OPT_COPY_MAX 32
/* Room for the outer headers of the next-hop template: Ethernet + IPv6, 8-byte multiple. */
#define HOP_HDR_LEN 56

/* Bench builds only (bench/lb.py --breakdown), never set otherwise: -DLB_BENCH_STOP=n ends the
 * program after stage n with XDP_TX and the frame as it came, so each stage's cost shows
 * against the whole program in one test-run session. */
#define LB_STAGE_PARSE 1 /* counters, config, Ethernet .. TCP to VIP:port */
#define LB_STAGE_SCAN 2  /* the option walk */
#define LB_STAGE_STEER 3 /* the backend: token table, Maglev table or connection table */
#ifdef LB_BENCH_STOP
#define LB_STAGE(n)                                                                                \
	do {                                                                                       \
		if (LB_BENCH_STOP <= (n))                                                          \
			return XDP_TX;                                                             \
	} while (0)
#else
#define LB_STAGE(n)
#endif

/* lb_config: one struct lb_config (VIP, outer source, flags, next-hop generation). Written by
 * the controller at `lb up` and every second (hop_gen); read by XDP on every packet. */
BPF_ARRAY(lb_config, struct lb_config, 1);

/* lb_backends: backend index -> struct lb_backend. Written by the controller (add, drain);
 * read by XDP for every forwarded packet. */
BPF_ARRAY(lb_backends, struct lb_backend, LB_MAX_BACKENDS);

/* lb_ring: Maglev slot (flow hash % LB_RING_SIZE) -> backend index or LB_NO_BACKEND.
 * Written by the controller (controller/maglev.py); read by XDP for every new flow. */
BPF_ARRAY(lb_ring, __u32, LB_RING_SIZE);

/* lb_conns: the client's address and port (struct lb_key4 or lb_key6: one VIP:port per LB,
 * so the client's end names the flow) -> struct lb_conn, the backend of each flow seen.
 * Written by XDP (new flows only: a retransmitted SYN or a known flow writes nothing); read
 * by XDP; the controller reads it for status and HMAC enforcement. LRU with a free list per
 * CPU: bounded, and an insert takes no global lock. */
BPF_F_TABLE("lru_hash", LB_KEY, struct lb_conn, lb_conns, LB_CONN_ENTRIES, BPF_F_NO_COMMON_LRU);

/* lb_tokens: __u32 token (of the server's key) -> backend index. Written by the controller
 * from LB_EV_KEYS events; read by XDP for MP_JOIN SYNs. Never written from the wire. */
BPF_TABLE("lru_hash", __u32, __u32, lb_tokens, LB_TOKEN_ENTRIES);

/* lb_blocked: struct lb_flow -> __u32 reason. Written by the controller when an ADD_ADDR
 * HMAC check fails (--enforce-hmac); read by XDP, which drops the flow's packets. */
BPF_TABLE("lru_hash", struct lb_flow, __u32, lb_blocked, LB_BLOCK_ENTRIES);

/* lb_counters: 0 -> struct lb_stats (a __u64 per enum lb_counter_idx), per CPU: one lookup
 * per packet. Written by XDP; read by the controller (status). */
struct lb_stats {
	__u64 c[LB_CNT_MAX];
};
BPF_PERCPU_ARRAY(lb_counters, struct lb_stats, 1);
_Static_assert((LB_CNT_MAX & (LB_CNT_MAX - 1)) == 0, "lb_count() masks with LB_CNT_MAX - 1");

/* lb_events: struct lb_event records (keys, ADD_ADDR). Written by XDP; read by the
 * controller. */
BPF_RINGBUF_OUTPUT(lb_events, EVENT_PAGES);

/* The cached way to one backend: the Ethernet and outer IP headers to put in front of the
 * client's packet, ready but for the per-packet fields (TOS / traffic class and flow label,
 * length, IPv4 checksum), with the checksum of the fixed IPv4 fields summed once. */
struct lb_hop {
	__u32 gen;     /* lb_config.hop_gen when resolved; 0: never */
	__u32 ifindex; /* egress interface; 0: the ingress one (XDP_TX) */
	__u32 mtu;     /* largest outer IP packet the egress takes */
	__u32 csum;    /* IPv4: ones' complement sum of the outer header without words 0-1 */
	__u8 hdr[HOP_HDR_LEN]; /* Ethernet header, then the outer IPv4 or IPv6 header */
};

/* lb_hops: backend index -> struct lb_hop, per CPU. Written by XDP when hop_gen moves (one
 * bpf_fib_lookup pair per backend per CPU per second, not one per packet); read by XDP. */
BPF_PERCPU_ARRAY(lb_hops, struct lb_hop, LB_MAX_BACKENDS);

/* What one segment to VIP:port is: filled by parse_vip_segment(). */
struct lb_pkt {
	__u32 saddr[4]; /* client address (IPv4: first word, the rest 0) */
	__u32 ports;    /* source and destination port as on the wire */
	__u32 opt_len;  /* bytes of TCP options */
	__u32 opt_off;  /* offset of the options from the packet start */
	__u32 l3_len;   /* the client's IP packet: total length (IPv6: payload + 40) */
	__u32 word0;    /* IPv6: version, traffic class, flow label; IPv4: TOS */
	__u8 tcp_flags;
	__u8 pad[3];
};

/* Where the options that matter sit: filled by scan_opts(). */
struct lb_found {
	__u32 token; /* MP_JOIN SYN (length 12): the token, host order */
	__u8 join;   /* 1 if token is set */
	__u8 mpc;    /* offset in the options of MP_CAPABLE with both keys, or OPT_NONE */
	__u8 addr;   /* offset in the options of a non-echo ADD_ADDR, or OPT_NONE */
	__u8 mpc_len;
	__u8 addr_len;
	__u8 pad[3];
	__u32 at;  /* scan_opts(): the walk's position, */
	__u32 len; /* the option bytes */
	__u32 off; /* and their offset in the packet */
	__u32 pad2;
};

/* lb_found: per-CPU struct lb_found for one packet. Written and read by XDP within one packet.
 * In a map value, not on the stack, so the verifier does not split its states by what the
 * option walk found at each of its steps (docs/datapath.md, "What the verifier made us do"). */
BPF_PERCPU_ARRAY(lb_found, struct lb_found, 1);

static __always_inline void lb_count(struct lb_stats *st, __u32 idx)
{
	st->c[idx & (LB_CNT_MAX - 1)] += 1;
}

/* murmur3_32 of the client's address (1 or 4 words) and the port pair, as loaded from the
 * packet (little-endian words); controller/maglev.flow_hash computes the same value. The VIP
 * is left out: one LB serves one VIP:port. */
static __always_inline __u32 mm_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct lb_pkt *p)
{
	__u32 h = LB_HASH_SEED;
#if LB_VIP_FAMILY == 4
	h = mm_mix(h, p->saddr[0]);
#else
#pragma clang loop unroll(full)
	for (int i = 0; i < 4; i++)
		h = mm_mix(h, p->saddr[i]);
#endif
	h = mm_mix(h, p->ports);
	h ^= LB_VIP_FAMILY == 4 ? 8 : 20;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The Maglev table's backend for a flow, or LB_NO_BACKEND. The slot is the hash scaled to
 * the table, (hash * LB_RING_SIZE) >> 32: a multiply, not a division. */
static __always_inline __u32 maglev_pick(const struct lb_pkt *p)
{
	__u32 slot = ((__u64)flow_hash(p) * LB_RING_SIZE) >> 32;
	__u32 *be = lb_ring.lookup(&slot);
	return be ? *be : LB_NO_BACKEND;
}

/* Ethernet (no VLAN tag) -> IPv4 or IPv6 (the VIP's; no extension headers) -> TCP to
 * VIP:port. 1: ours, *p filled; 0: not to VIP:port (pass); -1: to the VIP but not handled
 * (pass, counted). Reads the packet in place: no copies. */
static __always_inline int parse_vip_segment(void *data, void *data_end,
					     const struct lb_config *cfg, struct lb_pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return 0;
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		/* Tagged: only tell whether it is VIP traffic (to count it); never forwarded. */
		__be16 *inner = l3 + 2;
		if ((void *)(inner + 1) > data_end)
			return 0;
		proto = *inner;
		l3 += 4;
	}
	struct tcphdr *th;
#if LB_VIP_FAMILY == 4
	struct iphdr *ip = l3;
	if (proto != bpf_htons(ETH_P_IP_) || (void *)(ip + 1) > data_end)
		return 0;
	if (ip->daddr != *(__u32 *)cfg->vip || ip->protocol != IPPROTO_TCP_ || ip->version != 4)
		return 0;
	if (l3 != (void *)(eth + 1))
		return -1;
	__u32 hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip) || (ip->frag_off & bpf_htons(IP_OFFMASK_)))
		return 0;
	th = (void *)ip + hlen;
	p->saddr[0] = ip->saddr;
	p->l3_len = bpf_ntohs(ip->tot_len);
	p->word0 = ip->tos;
#else
	struct ipv6hdr *ip6 = l3;
	if (proto != bpf_htons(ETH_P_IPV6_) || (void *)(ip6 + 1) > data_end || ip6->version != 6)
		return 0;
	const __u64 *v = (const __u64 *)cfg->vip;
	const __u64 *a = (const __u64 *)&ip6->daddr;
	if (a[0] != v[0] || a[1] != v[1])
		return 0;
	__u8 nh = ip6->nexthdr;
	if (nh != IPPROTO_TCP_) {
		if (nh == IP6_HOPOPTS_ || nh == IP6_ROUTING_ || nh == IP6_FRAGMENT_ ||
		    nh == IP6_DSTOPTS_)
			return -1;
		return 0;
	}
	if (l3 != (void *)(eth + 1))
		return -1;
	th = (void *)(ip6 + 1);
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	p->l3_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	p->word0 = *(__u32 *)ip6;
#endif
	if ((void *)(th + 1) > data_end || th->dest != cfg->vip_port)
		return 0;
	__u32 tlen = th->doff * 4;
	if (tlen < sizeof(*th) || (void *)th + tlen > data_end)
		return 0;
	p->ports = *(__u32 *)&th->source;
	p->opt_len = tlen - sizeof(*th);
	p->opt_off = (void *)(th + 1) - data;
	p->tcp_flags = ((__u8 *)th)[13];
	return 1;
}

/* Where the walk may start: most segments open with options the LB never reads, in the
 * layouts Linux writes. Data and ACKs: NOP NOP timestamps (12 bytes). SYNs: MSS,
 * SACK-permitted + timestamps, NOP window scale (20 bytes). Anything else: 0. */
static __always_inline __u32 walk_start(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *o = (void *)(long)ctx->data + (off & 0xff);
	if (len < 12 || (void *)(o + 12) > data_end)
		return 0;
	__u32 w0 = *(__u32 *)o;
	if (w0 == bpf_htonl(0x0101080a))
		return 12;
	if (len < 20 || (void *)(o + 20) > data_end)
		return 0;
	if ((w0 & bpf_htonl(0xffff0000)) == bpf_htonl(0x02040000) &&
	    *(__u32 *)(o + 4) == bpf_htonl(0x0402080a) &&
	    (*(__u32 *)(o + 16) & bpf_htonl(0xffffff00)) == bpf_htonl(0x01030300))
		return 20;
	return 0;
}

/* The bounded option walk (one option per step; EOL ends it, NOP advances a byte, a length
 * below 2 or past the options is malformed), reading the packet in place. Notes an MP_JOIN
 * SYN's token, MP_CAPABLE with both keys and a non-echo ADD_ADDR. 0, or -1 if malformed. */
static __always_inline int scan_opts(struct xdp_md *ctx, const struct lb_pkt *p, struct lb_found *f)
{
	/* Position, length and where the options start live in the map value, and every
	 * pointer is made afresh from ctx: the verifier sees one state per step, whatever it
	 * knew about the packet before the walk. */
	f->at = walk_start(ctx, p->opt_off, p->opt_len);
	f->len = p->opt_len;
	f->off = p->opt_off;
#pragma clang loop unroll(disable)
	for (int i = 0; i < TCP_OPT_SPACE; i++) {
		__u32 at = *(volatile __u32 *)&f->at;
		__u32 len = *(volatile __u32 *)&f->len;
		__u32 off = *(volatile __u32 *)&f->off;
		if (at + OPT_MIN_USEFUL > len)
			break;
		void *data_end = (void *)(long)ctx->data_end;
		__u8 *q = (void *)(long)ctx->data + (off & 0xff) + (at & OPT_MASK);
		if ((void *)(q + 3) > data_end)
			return -1;
		__u8 kind = q[0];
		if (kind == TCPOPT_EOL_)
			break;
		if (kind == TCPOPT_NOP_) {
			f->at = at + 1;
			continue;
		}
		__u32 olen = q[1];
		if (olen < 2 || at + olen > len)
			return -1;
		if (kind == TCPOPT_MPTCP) {
			__u8 sub = q[2] >> 4;
			if (sub == MPTCP_SUB_JOIN && olen == 12) {
				if ((void *)(q + 12) > data_end)
					return -1;
				f->token = bpf_ntohl(*(__u32 *)(q + 4));
				f->join = 1;
			} else if (sub == MPTCP_SUB_CAPABLE && olen >= 20 && olen <= 24) {
				f->mpc = at;
				f->mpc_len = olen;
			} else if (sub == MPTCP_SUB_ADD_ADDR && !(q[2] & ADD_ADDR_ECHO) &&
				   olen <= OPT_COPY_MAX) {
				f->addr = at;
				f->addr_len = olen;
			}
		}
		f->at = at + olen;
	}
	return 0;
}

/* Copy one option out of the packet (rare: events only) so the decoders read constant
 * offsets of a stack buffer. 0 on success. */
static __always_inline int copy_opt(struct xdp_md *ctx, __u32 off, __u64 len, __u8 *buf)
{
	/* Two tests with barriers: clang would fuse them into one range test on a copy of len,
	 * which tells the verifier nothing about len itself. */
	asm volatile("" : "+r"(len));
	if (len > OPT_COPY_MAX)
		return -1;
	asm volatile("" : "+r"(len));
	if (len < 4)
		return -1;
	return bpf_xdp_load_bytes(ctx, off, buf, len);
}

static __always_inline __u64 be64_at(const __u8 *b)
{
	__u64 v = 0;
#pragma clang loop unroll(full)
	for (int i = 0; i < 8; i++)
		v = (v << 8) | b[i];
	return v;
}

/* MP_CAPABLE with both keys (20, 22 or 24 bytes): version, flags, key_a, key_b. */
static __always_inline int dec_keys(struct xdp_md *ctx, __u32 off, __u32 len, struct mptcp_opt *m)
{
	__u8 b[OPT_COPY_MAX] = {};
	if ((len != 20 && len != 22 && len != 24) || copy_opt(ctx, off, len, b))
		return -1;
	m->subtype = MPTCP_SUB_CAPABLE;
	m->len = len;
	m->version = b[2] & 0x0f;
	m->flags = b[3];
	m->key_a = be64_at(b + 4);
	m->key_b = be64_at(b + 12);
	m->present = HAS_KEY_A | HAS_KEY_B;
	return 0;
}

/* ADD_ADDR (v1, not echo): IPv4 8/10 or IPv6 20/22 bytes (+2 port) plus an 8-byte HMAC. */
static __always_inline int dec_add_addr(struct xdp_md *ctx, __u32 off, __u32 len,
					struct mptcp_opt *m)
{
	__u8 b[OPT_COPY_MAX] = {};
	__u32 base = len - 8;
	if (len < 16 || copy_opt(ctx, off, len, b))
		return -1;
	m->subtype = MPTCP_SUB_ADD_ADDR;
	m->len = len;
	m->addr_id = b[3];
	m->present = HAS_ADDR_ID | HAS_ADDR | HAS_DATA;
	m->n = 8;
	if (base == 8 || base == 10) {
		m->version = 4;
		__builtin_memcpy(m->addr, b + 4, 4);
		if (base == 10) {
			m->port = (b[8] << 8) | b[9];
			m->present |= HAS_PORT;
			__builtin_memcpy(m->data, b + 10, 8);
		} else {
			__builtin_memcpy(m->data, b + 8, 8);
		}
	} else if (base == 20 || base == 22) {
		m->version = 6;
		__builtin_memcpy(m->addr, b + 4, 16);
		if (base == 22) {
			m->port = (b[20] << 8) | b[21];
			m->present |= HAS_PORT;
			__builtin_memcpy(m->data, b + 22, 8);
		} else {
			__builtin_memcpy(m->data, b + 20, 8);
		}
	} else {
		return -1;
	}
	return 0;
}

/* The flow as the client sent it, for events and the blocklist. */
static __always_inline void fill_flow(struct lb_flow *fl, const struct lb_pkt *p,
				      const struct lb_config *cfg)
{
	__builtin_memset(fl, 0, sizeof(*fl));
	fl->family = LB_VIP_FAMILY;
	fl->proto = IPPROTO_TCP_;
	__builtin_memcpy(&fl->sport, &p->ports, 4);
	__builtin_memcpy(fl->saddr, p->saddr, 16);
	__builtin_memcpy(fl->daddr, cfg->vip, 16);
}

/* Report one option to the controller: LB_EV_KEYS or LB_EV_ADD_ADDR. 1 if queued. */
static __always_inline int lb_emit(struct xdp_md *ctx, struct lb_stats *st, __u32 type,
				   __u32 backend, const struct lb_pkt *p,
				   const struct lb_config *cfg, const struct lb_conn *c, __u32 off,
				   __u32 len)
{
	struct lb_event *ev = lb_events.ringbuf_reserve(sizeof(struct lb_event));
	if (!ev) {
		lb_count(st, LB_CNT_EVENTS_LOST);
		return 0;
	}
	__builtin_memset(&ev->opt, 0, sizeof(ev->opt));
	int bad = type == LB_EV_KEYS ? dec_keys(ctx, off, len, &ev->opt)
				     : dec_add_addr(ctx, off, len, &ev->opt);
	if (bad) {
		lb_events.ringbuf_discard(ev, 0);
		lb_count(st, LB_CNT_MALFORMED);
		return 0;
	}
	ev->opt.offset = off - p->opt_off;
	ev->type = type;
	ev->backend = backend;
	ev->tcp_flags = p->tcp_flags;
	ev->conn_flags = c->flags;
	ev->pad = 0;
	ev->token = c->token;
	ev->ts_ns = bpf_ktime_get_ns();
	fill_flow(&ev->flow, p, cfg);
	lb_events.ringbuf_submit(ev, 0);
	return 1;
}

/* Fold a 32-bit ones' complement sum to 16 bits. */
static __always_inline __u32 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	return (sum & 0xffff) + (sum >> 16);
}

/* Resolve the way to backend `be` into *h: the next hop's MACs and interface (from the map
 * with LB_F_STATIC_NEXTHOP, else bpf_fib_lookup) and the outer header template. 0 on
 * success. Runs once per backend per hop_gen per CPU. */
static __always_inline int resolve_hop(struct xdp_md *ctx, const struct lb_config *cfg,
				       const struct lb_backend *be, struct lb_hop *h)
{
	__u8 smac[6], dmac[6];
	__u32 ifindex, mtu = 0xffff;
	if (cfg->flags & LB_F_STATIC_NEXTHOP) {
		__builtin_memcpy(smac, cfg->smac, 6);
		__builtin_memcpy(dmac, be->mac, 6);
		ifindex = be->ifindex;
	} else {
		struct bpf_fib_lookup fib = {};
#if LB_VIP_FAMILY == 4
		fib.family = AF_INET_;
		fib.l4_protocol = LB_IPIP_PROTO;
		__builtin_memcpy(&fib.ipv4_src, cfg->src, 4);
		__builtin_memcpy(&fib.ipv4_dst, be->addr, 4);
#else
		fib.family = AF_INET6_;
		fib.l4_protocol = LB_IP6IP6_PROTO;
		__builtin_memcpy(fib.ipv6_src, cfg->src, 16);
		__builtin_memcpy(fib.ipv6_dst, be->addr, 16);
#endif
		fib.ifindex = ctx->ingress_ifindex;
		/* First the path MTU: a length no path takes makes the lookup report it. */
		struct bpf_fib_lookup probe = fib;
		probe.tot_len = 0xffff;
		long rc = bpf_fib_lookup(ctx, &probe, sizeof(probe), 0);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
			mtu = probe.mtu_result;
		else if (rc != BPF_FIB_LKUP_RET_SUCCESS)
			return -1;
		/* Then the next hop with its neighbour entry. */
		fib.tot_len = OUTER_LEN;
		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
			return -1;
		__builtin_memcpy(smac, fib.smac, 6);
		__builtin_memcpy(dmac, fib.dmac, 6);
		ifindex = fib.ifindex == ctx->ingress_ifindex ? 0 : fib.ifindex;
	}
	__builtin_memset(h->hdr, 0, sizeof(h->hdr));
	struct ethhdr *eth = (void *)h->hdr;
	__builtin_memcpy(eth->h_dest, dmac, 6);
	__builtin_memcpy(eth->h_source, smac, 6);
#if LB_VIP_FAMILY == 4
	eth->h_proto = bpf_htons(ETH_P_IP_);
	struct iphdr *ip = (void *)(h->hdr + sizeof(*eth));
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = LB_OUTER_TTL;
	ip->protocol = LB_IPIP_PROTO;
	__builtin_memcpy(&ip->saddr, cfg->src, 4);
	__builtin_memcpy(&ip->daddr, be->addr, 4);
	/* Words 2-9 never change per packet (id 0, no fragment, TTL, protocol, addresses; the
	 * checksum word is 0 here): sum them once. */
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma clang loop unroll(full)
	for (int i = 2; i < 10; i++)
		sum += w[i];
	h->csum = csum_fold32(sum);
#else
	eth->h_proto = bpf_htons(ETH_P_IPV6_);
	struct ipv6hdr *ip6 = (void *)(h->hdr + sizeof(*eth));
	ip6->version = 6;
	ip6->nexthdr = LB_IP6IP6_PROTO;
	ip6->hop_limit = LB_OUTER_TTL;
	__builtin_memcpy(&ip6->saddr, cfg->src, 16);
	__builtin_memcpy(&ip6->daddr, be->addr, 16);
	h->csum = 0;
#endif
	h->ifindex = ifindex;
	h->mtu = mtu;
	h->gen = cfg->hop_gen;
	return 0;
}

/* Put the cached outer headers in front of the client's IP packet (one adjust_head, direct
 * stores of the template) and send it on. Returns the XDP verdict. */
static __always_inline int encap_and_send(struct xdp_md *ctx, struct lb_stats *st,
					  const struct lb_config *cfg, __u32 backend,
					  const struct lb_pkt *p)
{
	struct lb_backend *be = lb_backends.lookup(&backend);
	if (!be || !(be->flags & LB_BE_IN_USE)) {
		lb_count(st, LB_CNT_NO_BACKEND);
		return XDP_DROP;
	}
	struct lb_hop *h = lb_hops.lookup(&backend);
	if (!h)
		return XDP_DROP;
	if (h->gen != cfg->hop_gen && resolve_hop(ctx, cfg, be, h)) {
		lb_count(st, LB_CNT_FIB_FAIL);
		return XDP_DROP;
	}
	__u32 l3_len = p->l3_len;
	if (l3_len + OUTER_LEN > h->mtu) {
		lb_count(st, LB_CNT_FIB_FAIL);
		return XDP_DROP;
	}
#ifdef LB_BENCH_RESTORE
	/* bench/lb.py only: test-run repeats on one buffer, so put the frame back as it came. */
	struct ethhdr orig;
	if ((void *)(long)ctx->data + sizeof(orig) > (void *)(long)ctx->data_end)
		return XDP_DROP;
	__builtin_memcpy(&orig, (void *)(long)ctx->data, sizeof(orig));
#endif
	if (bpf_xdp_adjust_head(ctx, -OUTER_LEN))
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(struct ethhdr) + OUTER_LEN > data_end)
		return XDP_DROP;
	__u64 *d = data;
	const __u64 *t = (const __u64 *)h->hdr;
	/* Ethernet and the first 18 bytes of the outer header. */
	d[0] = t[0];
	d[1] = t[1];
	d[2] = t[2];
	d[3] = t[3];
#if LB_VIP_FAMILY == 4
	*(__u16 *)(data + 32) = *(const __u16 *)(h->hdr + 32);
	/* Version/IHL, TOS and total length in one store, and their checksum words summed from
	 * registers (reading back what was just stored would stall on store forwarding). */
	__u16 w0 = bpf_htons(0x4500 | (p->word0 & 0xff));
	__u16 w1 = bpf_htons(l3_len + OUTER_LEN);
	struct iphdr *o4 = data + sizeof(struct ethhdr);
	((__u16 *)o4)[0] = w0;
	((__u16 *)o4)[1] = w1;
	o4->check = ~csum_fold32(h->csum + w0 + w1);
#else
	d[4] = t[4];
	d[5] = t[5];
	*(__u32 *)(data + 48) = *(const __u32 *)(h->hdr + 48);
	*(__u16 *)(data + 52) = *(const __u16 *)(h->hdr + 52);
	struct ipv6hdr *o6 = data + sizeof(struct ethhdr);
	/* Version, traffic class and flow label as the client sent them. */
	*(__u32 *)o6 = p->word0;
	o6->payload_len = bpf_htons(l3_len);
#endif
	lb_count(st, LB_CNT_FORWARDED);
	__u32 ifindex = h->ifindex;
#ifdef LB_BENCH_RESTORE
	if (bpf_xdp_adjust_head(ctx, OUTER_LEN))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(orig) > data_end)
		return XDP_DROP;
	__builtin_memcpy(data, &orig, sizeof(orig));
#endif
	if (ifindex == 0)
		return XDP_TX;
	return bpf_redirect(ifindex, 0);
}

int mptcp_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct lb_stats *st = lb_counters.lookup(&zero);
	if (!st)
		return XDP_PASS;
	lb_count(st, LB_CNT_PACKETS);
	struct lb_config *cfg = lb_config.lookup(&zero);
	if (!cfg)
		return XDP_PASS;
	struct lb_pkt p = {};
	int ours = parse_vip_segment(data, data_end, cfg, &p);
	if (ours <= 0) {
		if (ours < 0) {
			lb_count(st, LB_CNT_VIP);
			lb_count(st, LB_CNT_NOT_HANDLED);
		}
		return XDP_PASS;
	}
	lb_count(st, LB_CNT_VIP);
	LB_STAGE(LB_STAGE_PARSE);

	__u32 flags = cfg->flags;
	if (flags & LB_F_ENFORCE_HMAC) {
		struct lb_flow fl;
		fill_flow(&fl, &p, cfg);
		if (lb_blocked.lookup(&fl)) {
			lb_count(st, LB_CNT_BLOCKED);
			return XDP_DROP;
		}
	}

	struct lb_found *f = lb_found.lookup(&zero);
	if (!f)
		return XDP_PASS;
	f->join = 0;
	f->mpc = OPT_NONE;
	f->addr = OPT_NONE;
	if (scan_opts(ctx, &p, f)) {
		/* Steered as plain TCP. */
		lb_count(st, LB_CNT_MALFORMED);
		f->join = 0;
		f->mpc = OPT_NONE;
		f->addr = OPT_NONE;
	}
	LB_STAGE(LB_STAGE_SCAN);

	LB_KEY key = {};
	__builtin_memcpy(&key.saddr, p.saddr, sizeof(key.saddr));
	__builtin_memcpy(&key.sport, &p.ports, 2);
	int syn = (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	__u32 backend;
	struct lb_conn *c = lb_conns.lookup(&key);
	if (syn) {
		struct lb_conn want = {};
		if (f->join && !(flags & LB_F_NO_TOKEN_STEERING)) {
			__u32 token = f->token;
			__u32 *be = lb_tokens.lookup(&token);
			if (be) {
				want.backend = *be;
				want.flags = LB_CONN_JOIN;
				want.token = token;
				lb_count(st, LB_CNT_JOIN_HIT);
			} else if (flags & LB_F_UNKNOWN_JOIN_HASH) {
				want.backend = maglev_pick(&p);
				lb_count(st, LB_CNT_JOIN_HASHED);
			} else {
				lb_count(st, LB_CNT_JOIN_UNKNOWN);
				return XDP_DROP;
			}
		} else {
			want.backend = maglev_pick(&p);
			lb_count(st, LB_CNT_NEW_FLOW);
		}
		backend = want.backend;
		if (backend == LB_NO_BACKEND) {
			lb_count(st, LB_CNT_NO_BACKEND);
			return XDP_DROP;
		}
		/* A retransmitted SYN finds its entry as it left it: write nothing. A reused
		 * 5-tuple (keys already reported) starts afresh, in place. */
		if (!c) {
			lb_conns.update(&key, &want);
		} else if (c->backend != want.backend || c->flags != want.flags ||
			   c->token != want.token) {
			c->backend = want.backend;
			c->flags = want.flags;
			c->token = want.token;
		}
	} else if (c) {
		backend = c->backend;
		lb_count(st, LB_CNT_CONN_HIT);
	} else {
		/* A flow we missed the SYN of (LB restart, LRU eviction): hash it. */
		struct lb_conn want = {};
		want.backend = maglev_pick(&p);
		backend = want.backend;
		lb_count(st, LB_CNT_NEW_FLOW);
		if (backend == LB_NO_BACKEND) {
			lb_count(st, LB_CNT_NO_BACKEND);
			return XDP_DROP;
		}
		lb_conns.update(&key, &want);
	}
	LB_STAGE(LB_STAGE_STEER);

	/* Tell the controller what it needs: the keys (once per flow) and ADD_ADDRs. */
	__u32 mpc = f->mpc, addr = f->addr;
	if (mpc != OPT_NONE || addr != OPT_NONE) {
		if (!c)
			c = lb_conns.lookup(&key);
		if (c) {
			if (mpc != OPT_NONE && !(c->flags & LB_CONN_KEYS_SENT) &&
			    lb_emit(ctx, st, LB_EV_KEYS, backend, &p, cfg, c, p.opt_off + mpc,
				    f->mpc_len)) {
				c->flags |= LB_CONN_KEYS_SENT;
				lb_count(st, LB_CNT_KEYS);
			}
			if (addr != OPT_NONE && lb_emit(ctx, st, LB_EV_ADD_ADDR, backend, &p, cfg,
							c, p.opt_off + addr, f->addr_len))
				lb_count(st, LB_CNT_ADD_ADDR);
		}
	}
	return encap_and_send(ctx, st, cfg, backend, &p);
}

/* mptcp_lb_decap: a backend's decapsulation where the kernel has no ipip / ip6tnl device
 * (`lb backend-setup --decap xdp`): IPv4 carrying IPv4 (protocol 4, no IP options, not a
 * fragment) or IPv6 carrying IPv6 (next header 41) loses its outer header and goes up the
 * stack as the client sent it. Either family whatever LB_VIP_FAMILY says. No map calls. */
int mptcp_lb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	int strip;
	if (eth->h_proto == bpf_htons(ETH_P_IP_)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		if (ip->version != 4 || ip->protocol != LB_IPIP_PROTO || ip->ihl != 5 ||
		    (ip->frag_off & bpf_htons(IP_MF_ | IP_OFFMASK_)))
			return XDP_PASS;
		strip = sizeof(struct iphdr);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6_)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		if (ip6->version != 6 || ip6->nexthdr != LB_IP6IP6_PROTO)
			return XDP_PASS;
		strip = sizeof(struct ipv6hdr);
	} else {
		return XDP_PASS;
	}
	struct ethhdr copy;
	__builtin_memcpy(&copy, eth, sizeof(copy));
	if (bpf_xdp_adjust_head(ctx, strip))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth, &copy, sizeof(copy));
	return XDP_PASS;
}
