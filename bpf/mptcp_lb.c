/* mptcp_lb.c: the load balancer's XDP program and every map call it makes. A segment to
 * VIP:port goes to one backend, IP-in-IP encapsulated (Katran's model): an MP_JOIN SYN by its
 * token, any other SYN by the Maglev table, later segments by the connection table. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>

#include "include/abi.h"
#include "include/lb_abi.h"
#include "include/parse.h"
#include "include/mptcp_opts.h"

#ifndef EVENT_PAGES
#define EVENT_PAGES 64
#endif

#define AF_INET_ 2
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
/* ADD_ADDR flag E (echo): an echo carries no HMAC. */
#define ADD_ADDR_ECHO 0x01
/* Index of "no such option" in the per-packet option search. */
#define OPT_NONE 0xff

/* lb_config: one struct lb_config (VIP, outer source, flags). Written by the controller at
 * `lb up`; read by XDP on every packet. */
BPF_ARRAY(lb_config, struct lb_config, 1);

/* lb_backends: backend index -> struct lb_backend. Written by the controller (add, drain);
 * read by XDP for every forwarded packet. */
BPF_ARRAY(lb_backends, struct lb_backend, LB_MAX_BACKENDS);

/* lb_ring: Maglev slot (flow hash % LB_RING_SIZE) -> backend index or LB_NO_BACKEND.
 * Written by the controller (controller/maglev.py); read by XDP for every new flow. */
BPF_ARRAY(lb_ring, __u32, LB_RING_SIZE);

/* lb_conns: struct lb_flow -> struct lb_conn, the backend of each flow seen. Written by XDP
 * (SYNs and table misses); read by XDP; the controller reads it for status. LRU: bounded. */
BPF_TABLE("lru_hash", struct lb_flow, struct lb_conn, lb_conns, LB_CONN_ENTRIES);

/* lb_tokens: __u32 token (of the server's key) -> backend index. Written by the controller
 * from LB_EV_KEYS events; read by XDP for MP_JOIN SYNs. Never written from the wire. */
BPF_TABLE("lru_hash", __u32, __u32, lb_tokens, LB_TOKEN_ENTRIES);

/* lb_blocked: struct lb_flow -> __u32 reason. Written by the controller when an ADD_ADDR
 * HMAC check fails (--enforce-hmac); read by XDP, which drops the flow's packets. */
BPF_TABLE("lru_hash", struct lb_flow, __u32, lb_blocked, LB_BLOCK_ENTRIES);

/* lb_counters: 0 -> struct lb_stats (a __u64 per enum lb_counter_idx), per CPU: one lookup
 * per packet. Written by XDP; read by the
 * controller (status). */
struct lb_stats {
	__u64 c[LB_CNT_MAX];
};
BPF_PERCPU_ARRAY(lb_counters, struct lb_stats, 1);
_Static_assert((LB_CNT_MAX & (LB_CNT_MAX - 1)) == 0, "lb_count() masks with LB_CNT_MAX - 1");

/* lb_events: struct lb_event records (keys, steered joins, ADD_ADDR). Written by XDP; read
 * by the controller. */
BPF_RINGBUF_OUTPUT(lb_events, EVENT_PAGES);

/* Per-packet working state: the option walk's decode and where the options that matter sit.
 * The indexes live here, not in registers, so the verifier does not split its states by them
 * (docs/datapath.md, "What the verifier made us do"). */
struct lb_work {
	struct decode_result r;
	__u32 mpc;  /* index in r.opts of MP_CAPABLE, or OPT_NONE */
	__u32 join; /* MP_JOIN */
	__u32 addr; /* ADD_ADDR without the echo flag */
	__u32 pad;
};

/* lb_scratch: per-CPU struct lb_work for one packet. Written and read by XDP within one
 * packet only. */
BPF_PERCPU_ARRAY(lb_scratch, struct lb_work, 1);

static __always_inline void lb_count(struct lb_stats *st, __u32 idx)
{
	st->c[idx & (LB_CNT_MAX - 1)] += 1;
}

static __always_inline int same16(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

/* murmur3_32 over the 9 words of (saddr, daddr, sport|dport); controller/maglev.flow_hash
 * computes the same value. */
static __always_inline __u32 mm_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct lb_flow *f)
{
	__u32 w[9];
	__builtin_memcpy(w, f->saddr, 16);
	__builtin_memcpy(&w[4], f->daddr, 16);
	__builtin_memcpy(&w[8], &f->sport, 4);
	__u32 h = LB_HASH_SEED;
#pragma clang loop unroll(full)
	for (int i = 0; i < 9; i++)
		h = mm_mix(h, w[i]);
	h ^= 36;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The Maglev table's backend for a new flow, or LB_NO_BACKEND. */
static __always_inline __u32 maglev_pick(const struct lb_flow *f)
{
	__u32 slot = flow_hash(f) % LB_RING_SIZE;
	__u32 *be = lb_ring.lookup(&slot);
	return be ? *be : LB_NO_BACKEND;
}

/* Report one option to the controller; 1 if the event was queued. */
static __always_inline int lb_emit(struct lb_stats *st, __u32 type, __u32 backend,
				   struct pkt_info *pi, struct lb_flow *f, struct mptcp_opt *m)
{
	struct lb_event *ev = lb_events.ringbuf_reserve(sizeof(struct lb_event));
	if (!ev) {
		lb_count(st, LB_CNT_EVENTS_LOST);
		return 0;
	}
	ev->type = type;
	ev->backend = backend;
	ev->tcp_flags = pi->tcp_flags;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	ev->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(&ev->flow, f, sizeof(*f));
	__builtin_memcpy(&ev->opt, m, sizeof(*m));
	lb_events.ringbuf_submit(ev, 0);
	return 1;
}

static __always_inline __u16 ip_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
#pragma clang loop unroll(full)
	for (int i = 0; i < (int)sizeof(*ip) / 2; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Where an encapsulated frame goes: MACs and egress interface (0: back out, XDP_TX). */
struct next_hop {
	__u8 smac[6];
	__u8 dmac[6];
	__u32 ifindex;
};

/* The next hop toward a backend: from the map (LB_F_STATIC_NEXTHOP, used by test runs) or
 * from the kernel's FIB and neighbour table. 0 on success. */
static __always_inline int next_hop(struct xdp_md *ctx, struct lb_config *cfg,
				    struct lb_backend *be, __u32 outer_len, struct next_hop *nh)
{
	if (cfg->flags & LB_F_STATIC_NEXTHOP) {
		__builtin_memcpy(nh->smac, cfg->smac, 6);
		__builtin_memcpy(nh->dmac, be->mac, 6);
		nh->ifindex = be->ifindex;
		return 0;
	}
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET_;
	fib.l4_protocol = LB_IPIP_PROTO;
	fib.tot_len = outer_len;
	fib.ifindex = ctx->ingress_ifindex;
	__builtin_memcpy(&fib.ipv4_src, cfg->src, 4);
	__builtin_memcpy(&fib.ipv4_dst, be->addr, 4);
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	__builtin_memcpy(nh->smac, fib.smac, 6);
	__builtin_memcpy(nh->dmac, fib.dmac, 6);
	nh->ifindex = fib.ifindex == ctx->ingress_ifindex ? 0 : fib.ifindex;
	return 0;
}

/* Put an outer IPv4 header (LB -> backend, protocol 4) and a new Ethernet header in front of
 * the client's IP packet and send it on. Returns the XDP verdict. */
static __always_inline int encap_and_send(struct xdp_md *ctx, struct lb_stats *st,
					  struct lb_config *cfg, struct lb_backend *be,
					  __u32 inner_len, __u8 tos)
{
	struct next_hop nh = {};
	__u32 outer_len = inner_len + sizeof(struct iphdr);
	if (next_hop(ctx, cfg, be, outer_len, &nh)) {
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
	__u32 saddr, daddr;
	__builtin_memcpy(&saddr, cfg->src, 4);
	__builtin_memcpy(&daddr, be->addr, 4);
	if (bpf_xdp_adjust_head(ctx, 0 - (int)sizeof(struct iphdr)))
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *outer = data + sizeof(struct ethhdr);
	if ((void *)(outer + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, nh.dmac, 6);
	__builtin_memcpy(eth->h_source, nh.smac, 6);
	eth->h_proto = bpf_htons(ETH_P_IPV4);
	outer->version = 4;
	outer->ihl = 5;
	outer->tos = tos;
	outer->tot_len = bpf_htons(outer_len);
	outer->id = 0;
	outer->frag_off = 0;
	outer->ttl = LB_OUTER_TTL;
	outer->protocol = LB_IPIP_PROTO;
	outer->check = 0;
	outer->saddr = saddr;
	outer->daddr = daddr;
	outer->check = ip_csum(outer);
	lb_count(st, LB_CNT_FORWARDED);
#ifdef LB_BENCH_RESTORE
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + sizeof(orig) > data_end)
		return XDP_DROP;
	__builtin_memcpy(data, &orig, sizeof(orig));
#endif
	if (nh.ifindex == 0)
		return XDP_TX;
	return bpf_redirect(nh.ifindex, 0);
}

/* The commonest segment of a connection carries [NOP NOP timestamps] DSS [padding] and nothing
 * the LB acts on: recognise it without the full walk. Anything else takes the walk. */
static __always_inline int only_dss(const struct opt_buf *o, __u32 optlen)
{
	__u32 at = 0;
	if (optlen >= 12 && rd8(o, 0) == TCPOPT_NOP_ && rd8(o, 1) == TCPOPT_NOP_ &&
	    rd8(o, 2) == 8 && rd8(o, 3) == 10)
		at = 12;
	if (at + 4 > optlen || rd8(o, at) != TCPOPT_MPTCP || rd8(o, at + 2) >> 4 != MPTCP_SUB_DSS)
		return 0;
	__u32 end = at + rd8(o, at + 1);
	if (end > optlen || end + 4 <= optlen)
		return 0;
#pragma clang loop unroll(full)
	for (__u32 k = 0; k < 3; k++) {
		if (end + k < optlen && rd8(o, end + k) > TCPOPT_NOP_)
			return 0;
	}
	return 1;
}

/* Decode the segment's MPTCP options into the per-CPU scratch record; NULL if it has none that
 * matter (or they are malformed: counted, then the segment is steered as plain TCP). */
static __always_inline struct lb_work *decode_opts(struct xdp_md *ctx, struct lb_stats *st,
						   struct pkt_info *pi, int syn)
{
	__u64 optlen = pi->opt_len;
	if (optlen > TCP_OPT_SPACE)
		return 0;
	/* Keep clang from fusing the two bounds into one test the verifier cannot follow. */
	asm volatile("" : "+r"(optlen));
	if (optlen < 4)
		return 0;
	__u32 zero = 0;
	struct lb_work *w = lb_scratch.lookup(&zero);
	if (!w)
		return 0;
	struct opt_buf ob = {};
	if (bpf_xdp_load_bytes(ctx, pi->tcp_off + 20, ob.b, optlen))
		return 0;
	if (!syn && only_dss(&ob, optlen))
		return 0;
	struct decode_result *r = &w->r;
	if (walk_options(&ob, optlen, r) != WALK_OK) {
		lb_count(st, LB_CNT_MALFORMED);
		return 0;
	}
	if (!r->nopts)
		return 0;
	/* Which options matter here: MP_CAPABLE (keys), MP_JOIN (token), ADD_ADDR. */
	w->mpc = OPT_NONE;
	w->join = OPT_NONE;
	w->addr = OPT_NONE;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MAX_DECODED_OPTS; i++) {
		if (i >= r->nopts)
			break;
		__u8 sub = r->opts[i].subtype;
		if (sub == MPTCP_SUB_CAPABLE)
			w->mpc = i;
		else if (sub == MPTCP_SUB_JOIN)
			w->join = i;
		else if (sub == MPTCP_SUB_ADD_ADDR && !(r->opts[i].flags & ADD_ADDR_ECHO))
			w->addr = i;
	}
	return w;
}

static __always_inline struct mptcp_opt *opt_at(struct lb_work *w, __u32 i)
{
	if (i >= MAX_DECODED_OPTS)
		return 0;
	return &w->r.opts[i];
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
	struct pkt_info pi = {};
	if (parse_to_tcp(data, data_end, &pi) != 0)
		return XDP_PASS;
	if (pi.family != cfg->family || pi.dport != cfg->vip_port || !same16(pi.daddr, cfg->vip))
		return XDP_PASS;
	lb_count(st, LB_CNT_VIP);
	/* IPv4 without a VLAN tag only: the outer header goes right after the Ethernet header. */
	if (pi.family != 4 || pi.tcp_off != sizeof(struct ethhdr) + pi.l3_hdrs) {
		lb_count(st, LB_CNT_NOT_HANDLED);
		return XDP_PASS;
	}
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	__u8 tos = ip->tos;

	struct lb_flow flow = {};
	flow.family = pi.family;
	flow.proto = PROTO_TCP;
	flow.sport = pi.sport;
	flow.dport = pi.dport;
	__builtin_memcpy(flow.saddr, pi.saddr, 16);
	__builtin_memcpy(flow.daddr, pi.daddr, 16);
	__u32 flags = cfg->flags;
	if ((flags & LB_F_ENFORCE_HMAC) && lb_blocked.lookup(&flow)) {
		lb_count(st, LB_CNT_BLOCKED);
		return XDP_DROP;
	}

	int syn = (pi.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
	struct lb_work *w = decode_opts(ctx, st, &pi, syn);

	/* Pick the backend. */
	__u32 backend = LB_NO_BACKEND;
	if (syn) {
		struct lb_conn conn = {};
		struct mptcp_opt *jo = w ? opt_at(w, w->join) : 0;
		if (jo && (jo->present & HAS_WORD) && !(flags & LB_F_NO_TOKEN_STEERING)) {
			__u32 token = jo->word;
			__u32 *be = lb_tokens.lookup(&token);
			if (be) {
				backend = *be;
				lb_count(st, LB_CNT_JOIN_HIT);
				lb_emit(st, LB_EV_JOIN, backend, &pi, &flow, jo);
			} else if (flags & LB_F_UNKNOWN_JOIN_HASH) {
				backend = maglev_pick(&flow);
				lb_count(st, LB_CNT_JOIN_HASHED);
			} else {
				lb_count(st, LB_CNT_JOIN_UNKNOWN);
				return XDP_DROP;
			}
			conn.flags = LB_CONN_JOIN;
		} else {
			backend = maglev_pick(&flow);
			lb_count(st, LB_CNT_NEW_FLOW);
		}
		conn.backend = backend;
		if (backend != LB_NO_BACKEND)
			lb_conns.update(&flow, &conn);
	} else {
		struct lb_conn *c = lb_conns.lookup(&flow);
		if (c) {
			backend = c->backend;
			lb_count(st, LB_CNT_CONN_HIT);
		} else {
			/* A flow we missed the SYN of (LB restart, LRU eviction): hash it. */
			struct lb_conn conn = {};
			backend = maglev_pick(&flow);
			conn.backend = backend;
			lb_count(st, LB_CNT_NEW_FLOW);
			if (backend != LB_NO_BACKEND)
				lb_conns.update(&flow, &conn);
		}
	}
	struct lb_backend *be = lb_backends.lookup(&backend);
	if (!be || !(be->flags & LB_BE_IN_USE)) {
		lb_count(st, LB_CNT_NO_BACKEND);
		return XDP_DROP;
	}

	/* Tell the controller what it needs: the keys (once per flow) and ADD_ADDRs. */
	struct mptcp_opt *mo = w ? opt_at(w, w->mpc) : 0;
	if (mo && (mo->present & (HAS_KEY_A | HAS_KEY_B)) == (HAS_KEY_A | HAS_KEY_B)) {
		struct lb_conn *c = lb_conns.lookup(&flow);
		if (c && !(c->flags & LB_CONN_KEYS_SENT) &&
		    lb_emit(st, LB_EV_KEYS, backend, &pi, &flow, mo)) {
			c->flags |= LB_CONN_KEYS_SENT;
			lb_count(st, LB_CNT_KEYS);
		}
	}
	struct mptcp_opt *ao = w ? opt_at(w, w->addr) : 0;
	if (ao) {
		lb_emit(st, LB_EV_ADD_ADDR, backend, &pi, &flow, ao);
		lb_count(st, LB_CNT_ADD_ADDR);
	}
	return encap_and_send(ctx, st, cfg, be, pi.l3_len, tos);
}

/* mptcp_lb_decap: a backend's decapsulation where the kernel has no ipip device (`lb
 * backend-setup --decap xdp`): an IPv4 packet carrying IPv4 (protocol 4, no IP options) loses
 * its outer header and goes up the stack as the client sent it. No map calls. */
int mptcp_lb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IPV4) || ip->protocol != LB_IPIP_PROTO ||
	    ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFMASK)))
		return XDP_PASS;
	struct ethhdr copy;
	__builtin_memcpy(&copy, eth, sizeof(copy));
	if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct iphdr)))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth, &copy, sizeof(copy));
	return XDP_PASS;
}
