/* mptcp_datapath.c: the XDP (ingress) and tc clsact (egress) entry points and every map call
 * they make. BCC rewrites map calls only in the main file, so both programs live here and
 * share one set of maps; parsing is in include/. Never drops or alters traffic. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/pkt_cls.h>

#include "include/abi.h"
#include "include/parse.h"
#include "include/mptcp_opts.h"
#include "include/csum.h"
#include "include/maps.h"

/* MP_CAPABLE flag A: "checksum required" (RFC 8684 §3.1). */
#define MPC_FLAG_CHECKSUM 0x80

/* Bench builds only (bench/datapath.py --breakdown), never set otherwise: -DBENCH_STOP=n ends
 * the per-packet path after stage n (STAGE_* below), -DBENCH_SKIP_x leaves one piece out, so
 * each piece's cost shows against the whole program in one test-run session. `keep` is made
 * to escape, so clang cannot drop the work the stage did for later stages. */
#define STAGE_CONFIG 1   /* the packet counter and the config lookup */
#define STAGE_PARSE 2    /* Ethernet .. TCP */
#define STAGE_WALK 3     /* options copied, found and decoded */
#define STAGE_SUBFLOW 4  /* the subflows entry looked up (or created) */
#define STAGE_SF_STATS 5 /* its timestamps and per-direction counts */
#define STAGE_CONN 6     /* the connection found and summed */
#ifdef BENCH_STOP
#define BENCH_STAGE(n, keep)                                                                       \
	do {                                                                                       \
		asm volatile("" ::"r"(keep) : "memory");                                           \
		if (BENCH_STOP <= (n))                                                             \
			return;                                                                    \
	} while (0)
#else
#define BENCH_STAGE(n, keep)
#endif

static __always_inline void count(__u32 idx, __u64 n)
{
#ifdef BENCH_SKIP_COUNTERS
	return;
#endif
	__u64 *v = counters.lookup(&idx);
	if (v)
		*v += n;
}

static __always_inline void emit(__u32 type, __u32 dir, __u32 ifindex, struct pkt_info *pi,
				 struct flow_key *k, struct mptcp_opt *m)
{
#ifdef BENCH_SKIP_EVENTS
	return;
#endif
	struct event *ev = events.ringbuf_reserve(sizeof(struct event));
	if (!ev) {
		count(CNT_EVENTS_LOST, 1);
		return;
	}
	ev->type = type;
	ev->ifindex = ifindex;
	ev->dir = dir;
	ev->tcp_flags = pi->tcp_flags;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	ev->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(&ev->flow, k, sizeof(*k));
	if (m)
		__builtin_memcpy(&ev->opt, m, sizeof(*m));
	else
		__builtin_memset(&ev->opt, 0, sizeof(ev->opt));
	events.ringbuf_submit(ev, 0);
}

/* CLOCK_MONOTONIC at tick resolution, for first_ns/last_ns. bpf_ktime_get_coarse_ns() only
 * moves at a tick, but it is a helper call (~20 ns under test-run on an SRSO-mitigated host),
 * while bpf_jiffies64() is inlined: so the clock is read once per jiffy per CPU. A reader that
 * sees jiffies move just before the clock does keeps that jiffy's value one tick behind. */
static __always_inline __u64 coarse_now(void)
{
	__u32 zero = 0;
	struct clock_cache *cc = clock_cache.lookup(&zero);
	if (!cc)
		return bpf_ktime_get_coarse_ns();
	__u64 j = bpf_jiffies64();
	if (cc->jiffies != j || !cc->ns) {
		cc->ns = bpf_ktime_get_coarse_ns();
		cc->jiffies = j;
	}
	return cc->ns;
}

/* The subflow as this host sees it: ingress packets come from the remote end. */
static __always_inline void make_key(struct flow_key *k, struct pkt_info *pi, __u32 dir)
{
	k->family = pi->family;
	if (dir == DIR_INGRESS) {
		k->lport = pi->dport;
		k->rport = pi->sport;
		__builtin_memcpy(k->laddr, pi->daddr, 16);
		__builtin_memcpy(k->raddr, pi->saddr, 16);
	} else {
		k->lport = pi->sport;
		k->rport = pi->dport;
		__builtin_memcpy(k->laddr, pi->saddr, 16);
		__builtin_memcpy(k->raddr, pi->daddr, 16);
	}
}

/* One direction of one subflow has one writer at a time (egress runs under the subflow's
 * socket lock, ingress on the one RX queue its 4-tuple hashes to), so its counters take plain
 * adds. A connection's counters sum subflows on any CPU: atomic adds. */
static __always_inline void add_dir(struct dir_stats *d, __u32 segs, __u32 payload)
{
	d->packets += segs;
	d->bytes += payload;
}

static __always_inline void add_dir_atomic(struct dir_stats *d, __u64 segs, __u64 payload)
{
	__sync_fetch_and_add(&d->packets, segs);
	__sync_fetch_and_add(&d->bytes, payload);
}

/* A DSS mapping: count it, and a DSN below the highest seen as a data-level retransmission.
 * 4-byte DSNs are compared with serial-number arithmetic on the low 32 bits. */
static __always_inline void note_mapping(struct dir_stats *d, struct mptcp_opt *m)
{
	int first = d->dss_mappings == 0;
	__u64 hi = d->dsn_highest, dsn = m->key_b;
	d->dss_mappings++;
	if (first) {
		d->dsn_highest = dsn;
	} else if (m->present & DSN64) {
		if (dsn < hi)
			d->data_retrans++;
		else
			d->dsn_highest = dsn;
	} else {
		__s32 delta = (__u32)dsn - (__u32)hi;
		if (delta < 0)
			d->data_retrans++;
		else
			d->dsn_highest = hi + delta;
	}
}

/* The connection of a subflow, once its token is known: from an incoming MP_JOIN SYN, or
 * from the controller (subflow_token), which derives it from the MP_CAPABLE keys. The
 * controller bumps config.token_gen after writing tokens, so a subflow without one consults
 * subflow_token once per bump, not on every packet. */
static __always_inline struct conn_stats *conn_of(struct subflow_stats *s, struct flow_key *k,
						  union zero_record *zero, __u32 token_gen)
{
#ifdef BENCH_SKIP_CONN
	return 0;
#endif
	if (!(s->flags & SF_HAVE_TOKEN)) {
		if (s->token_gen == token_gen + 1)
			return 0;
		s->token_gen = token_gen + 1;
		__u32 *tok = subflow_token.lookup(k);
		if (!tok)
			return 0;
		s->token = *tok;
		s->flags |= SF_HAVE_TOKEN;
	}
	__u32 token = s->token;
	return conns.lookup_or_try_init(&token, &zero->conn);
}

/* 1 if the packet being handled is an incoming SYN seen before (note_syn_request_csum()). */
static __always_inline __u32 syn_again(void)
{
	__u32 zero = 0;
	struct pkt_notes *n = pkt_notes.lookup(&zero);
	return n ? n->syn_again : 0;
}

/* One well-formed MPTCP option of a segment, into its subflow (and connection, if known). */
static __always_inline void account_opt(struct mptcp_opt *m, struct subflow_stats *s,
					struct conn_stats *c, struct flow_key *k,
					struct pkt_info *pi, __u32 dir, __u32 ifindex)
{
	__u32 slot = subtype_slot(m->subtype), ev = 0;
	count(CNT_OPT_BASE + slot, 1);
	s->opts[slot]++; /* shared by both directions: a rare lost count, never a wrong byte */
	switch (slot) {
	case MPTCP_SUB_CAPABLE:
		if (m->flags & MPC_FLAG_CHECKSUM)
			s->flags |= SF_CHECKSUM;
		/* key_a is always the packet sender's key, key_b the receiver's. */
		if (m->present & HAS_KEY_A) {
			if (dir == DIR_EGRESS) {
				s->local_key = m->key_a;
				s->flags |= SF_HAVE_LOCAL_KEY;
			} else {
				s->remote_key = m->key_a;
				s->flags |= SF_HAVE_REMOTE_KEY;
			}
			ev = EV_MPC_KEYS;
		}
		if (m->present & HAS_KEY_B) {
			if (dir == DIR_EGRESS) {
				s->remote_key = m->key_b;
				s->flags |= SF_HAVE_REMOTE_KEY;
			} else {
				s->local_key = m->key_b;
				s->flags |= SF_HAVE_LOCAL_KEY;
			}
		}
		break;
	case MPTCP_SUB_JOIN:
		s->flags |= SF_JOIN;
		if (!(m->present & HAS_WORD))
			break;
		/* SYN: the token names the receiver's connection. */
		ev = EV_JOIN_SYN;
		if (dir == DIR_INGRESS) {
			__u32 tok = m->word;
			/* A retransmitted SYN (and every test run) finds its token on the subflow
			 * already, which put it in subflow_token too: no lookup (~35 ns). Else a
			 * lookup first, which is far cheaper than an LRU insert. */
			if (!(s->flags & SF_HAVE_TOKEN) || s->token != tok) {
#ifndef BENCH_SKIP_TOKEN_MAP
				__u32 *old = subflow_token.lookup(k);
				if (!old || *old != tok)
					subflow_token.update(k, &tok);
#endif
			} else if (syn_again()) {
				/* The same SYN again (same ISN, same token): its event was raised.
				 */
				ev = 0;
			}
			s->token = tok;
			s->flags |= SF_HAVE_TOKEN;
		} else {
			s->remote_token = m->word;
			s->flags |= SF_HAVE_REMOTE_TOKEN;
		}
		if (m->flags & 1)
			s->flags |= SF_BACKUP;
		break;
	case MPTCP_SUB_DSS:
		if (m->present & HAS_KEY_B)
			note_mapping(&s->dir[dir & 1], m);
		break;
	case MPTCP_SUB_ADD_ADDR:
		ev = EV_ADD_ADDR;
		break;
	case MPTCP_SUB_REMOVE_ADDR:
		ev = EV_REMOVE_ADDR;
		break;
	case MPTCP_SUB_PRIO:
		if (m->flags & 1)
			s->flags |= SF_BACKUP;
		else
			s->flags &= ~SF_BACKUP;
		ev = EV_MP_PRIO;
		break;
	case MPTCP_SUB_FAIL:
		if (c)
			__sync_fetch_and_add(&c->mp_fail, 1);
		ev = EV_MP_FAIL;
		break;
	case MPTCP_SUB_FASTCLOSE:
		if (c)
			__sync_fetch_and_add(&c->fastclose, 1);
		ev = EV_FASTCLOSE;
		break;
	case MPTCP_SUB_TCPRST:
		if (c)
			__sync_fetch_and_add(&c->tcprst, 1);
		ev = EV_TCPRST;
		break;
	default:
		count(CNT_UNKNOWN, 1);
		break;
	}
	if (ev)
		emit(ev, dir, ifindex, pi, k, m);
}

/* An incoming SYN gives the peer's ISN, which DSS checksums need (absolute sequence numbers of
 * mappings); it is stored here rather than in the DSS checksum program, which saves SYNs a
 * tail call, a re-parse and a second subflow lookup. A SYN carrying the ISN already held is a
 * retransmission (pkt_notes.syn_again). Incoming data on a subflow that uses checksums (with
 * the flags as they stood before this packet) asks mptcp_xdp to tail-call the DSS checksum
 * program. All without a branch, the notes left in a per-CPU map: a branch here refines
 * values that stay live through the option loop, and the verifier then walks the loop once
 * per outcome (+190,000 to +310,000 instructions verified). */
static __always_inline void note_syn_request_csum(struct subflow_stats *s, struct pkt_info *pi,
						  __u32 sf_flags)
{
	_Static_assert(TCP_FLAG_SYN == 1 << 1 && SF_CHECKSUM == 1 << 6 &&
			   SF_HAVE_PEER_ISN == 1 << 7 && CSUM_IDLE == 0,
		       "shifts and masks below");
	__u32 syn = (pi->tcp_flags & TCP_FLAG_SYN) >> 1;
	__u32 keep = syn - 1; /* all ones unless this is a SYN */
	/* 0 iff the ISN held is this segment's sequence number; the barrier keeps clang from
	 * turning the test below into a compare, which is a branch in BPF. */
	__u64 isn_diff = s->peer_isn ^ pi->seq;
	asm volatile("" : "+r"(isn_diff));
	__u32 same_isn = (isn_diff - 1) >> 63;
	__u32 had_isn = (sf_flags & SF_HAVE_PEER_ISN) >> 7;
	s->peer_isn = (s->peer_isn & keep) | (pi->seq & ~keep);
	s->flags |= syn << 7;
	s->csum.state &= keep;
	__u32 zero = 0;
	struct pkt_notes *n = pkt_notes.lookup(&zero);
	if (!n)
		return;
	n->syn_again = syn & had_isn & same_isn;
	__u32 has_data = (pi->payload + 0xffff) >> 16; /* payload is 16 bits: 1 unless it is 0 */
	__u32 csum_on = (sf_flags & SF_CHECKSUM) >> 6;
	n->csum_pending = has_data & csum_on & (keep & 1);
}

/* Per-subflow and per-connection accounting of a well-formed segment with MPTCP options.
 * Incoming data on a subflow that uses checksums goes on to the DSS checksum program. */
static __always_inline void account(struct decode_result *r, struct pkt_info *pi, __u32 dir,
				    __u32 segs, __u32 ifindex, __u32 token_gen)
{
	struct flow_key k = {};
	make_key(&k, pi, dir);
	__u32 idx0 = 0;
	union zero_record *zero = zero_record.lookup(&idx0);
	if (!zero)
		return;
	struct subflow_stats *s = subflows.lookup_or_try_init(&k, &zero->subflow);
	if (!s)
		return;
	BENCH_STAGE(STAGE_SUBFLOW, s);
#ifdef BENCH_SKIP_TIME
	__u64 now = 1;
#else
	__u64 now = coarse_now();
#endif
	if (!s->first_ns)
		s->first_ns = now;
	s->last_ns = now;
	s->ifindex = ifindex;
	add_dir(&s->dir[dir & 1], segs, pi->payload);
	if (dir == DIR_INGRESS)
		note_syn_request_csum(s, pi, s->flags);
	BENCH_STAGE(STAGE_SF_STATS, s);

	struct conn_stats *c = conn_of(s, &k, zero, token_gen);
	if (c) {
		if (!c->first_ns)
			c->first_ns = now;
		c->last_ns = now;
		__u32 d = dir & 1;
		if (s->conn_summed[d]) {
			add_dir_atomic(&c->dir[d], segs, pi->payload);
		} else {
			/* The first packet since the token became known: the connection gets what
			 * the subflow carried before it too (this packet included). */
			add_dir_atomic(&c->dir[d], s->dir[d].packets, s->dir[d].bytes);
			s->conn_summed[d] = 1;
		}
		/* Checksums are a connection's choice, made in MP_CAPABLE: its joins (MP_JOIN
		 * has no such flag) learn it here, and their data is checked from then on. */
		s->flags |= c->flags & SF_CHECKSUM;
		if ((s->flags & SF_CHECKSUM) && !(c->flags & SF_CHECKSUM))
			c->flags |= SF_CHECKSUM; /* the only bit: a racing writer sets the same */
	}
	BENCH_STAGE(STAGE_CONN, c);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MAX_DECODED_OPTS; i++) {
		if (i >= r->nopts)
			break;
		account_opt(&r->opts[i], s, c, &k, pi, dir, ifindex);
	}
}

/* Where this packet's decode goes: the exported slot when `mptcpctl decode` asked for it,
 * else a per-CPU scratch copy. */
static __always_inline struct decode_result *result_slot(int *export, __u32 *token_gen)
{
	__u32 zero = 0;
	struct config *cfg = config.lookup(&zero);
	*export = cfg && cfg->export_decode;
	*token_gen = cfg ? cfg->token_gen : 0;
	/* Two call sites, each naming one map, so the verifier inlines both lookups. Written as
	 * `export ? out : scratch`, clang may make it one call with the map chosen at run time,
	 * which the verifier leaves as a helper call (~20 ns in bench builds that stop early). */
	struct decode_result *r = decode_scratch.lookup(&zero);
	if (*export)
		r = decode_out.lookup(&zero);
	return r;
}

static __always_inline void export_header(struct decode_result *r, struct pkt_info *pi)
{
	r->parsed = 1;
	r->family = pi->family;
	r->tcp_flags = pi->tcp_flags;
	r->sport = bpf_ntohs(pi->sport);
	r->dport = bpf_ntohs(pi->dport);
	r->payload = pi->payload;
	__builtin_memcpy(r->saddr, pi->saddr, 16);
	__builtin_memcpy(r->daddr, pi->daddr, 16);
}

/* The TCP options (optlen bytes, a multiple of 4, at most 40) into ob, a 4-byte word at a time
 * straight from the packet, zeroes after them. parse_tcp() proved the whole TCP header is in
 * the linear part; each word is proven again at a constant offset, which the verifier follows
 * cheaply. `zero` is 0 read from a map, so the verifier sees the same ob whatever optlen was
 * (a known 0 would leave it ten different stacks, and the walk verified ten times).
 * Non-zero if a word is not there (never, after parse_tcp()). */
static __always_inline int copy_opts(struct opt_buf *ob, __u8 *p, void *data_end, __u32 optlen,
				     __u32 zero)
{
#pragma clang loop unroll(full)
	for (__u32 k = 0; k < OPT_BUF_SIZE; k += 4) {
		__u32 w = zero;
		if (k < optlen) {
			if ((void *)(p + k + 4) > data_end)
				return -1;
			w = *(__u32 *)(p + k);
		}
		*(__u32 *)&ob->b[k] = w;
	}
	return 0;
}

/* The whole per-packet path, shared by both programs (dir is a constant after inlining). */
static __always_inline void handle(void *data, void *data_end, __u32 dir, __u32 segs, __u32 ifindex)
{
	count(CNT_PACKETS, 1);
	int export = 0;
	__u32 token_gen = 0;
	struct decode_result *r = result_slot(&export, &token_gen);
	if (!r)
		return;
	BENCH_STAGE(STAGE_CONFIG, r);
	if (export) {
		r->parsed = 0;
		r->malformed = 0;
		r->nopts = 0;
	}
	struct pkt_info pi = {};
	int rc = parse_to_tcp(data, data_end, &pi);
	if (rc == PARSE_STOP) {
		count(CNT_NOT_PARSED, 1);
		return;
	}
	if (rc == PARSE_BAD) {
		count(CNT_MALFORMED, 1);
		if (export)
			r->malformed = 1;
		return;
	}
	count(CNT_TCP, 1);
	BENCH_STAGE(STAGE_PARSE, &pi);
	if (export)
		export_header(r, &pi);
	/* TCP options come in 4-byte words: 4..40 bytes, or none. */
	__u64 optlen = pi.opt_len;
	if (optlen > TCP_OPT_SPACE)
		return;
	/* Keep clang from fusing the two bounds into one test the verifier cannot follow. */
	asm volatile("" : "+r"(optlen));
	if (optlen < 4)
		return;
	/* The commonest segment of all, NOP NOP timestamps and nothing else, holds no MPTCP:
	 * leave before copying and walking its options. */
	__be32 *first = pi.opts;
	if (optlen == 12 && (void *)(first + 1) <= data_end && *first == bpf_htonl(0x0101080a))
		return;
	struct opt_buf ob;
	__u32 idx0 = 0;
	union zero_record *zr = zero_record.lookup(&idx0);
	if (!zr || copy_opts(&ob, pi.opts, data_end, optlen, *(__u32 *)zr))
		return;
	int walk = walk_options(&ob, optlen, r);
	if (walk != WALK_OK) {
		count(CNT_MALFORMED, 1);
		if (export)
			r->malformed = 1;
		struct flow_key k = {};
		make_key(&k, &pi, dir);
		emit(EV_MALFORMED, dir, ifindex, &pi, &k, 0);
		return;
	}
	BENCH_STAGE(STAGE_WALK, r);
	if (r->nopts == 0)
		return;
	count(CNT_MPTCP, 1);
	account(r, &pi, dir, segs, ifindex, token_gen);
}

int mptcp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	handle(data, data_end, DIR_INGRESS, 1, ctx->ingress_ifindex);
	__u32 zero = 0;
	struct pkt_notes *n = pkt_notes.lookup(&zero);
	if (n && n->csum_pending) {
		n->csum_pending = 0;
		dss_csum_progs.call(ctx, DSS_CSUM_PROG); /* returns only if the slot is empty */
	}
	return XDP_PASS;
}

int mptcp_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	handle(data, data_end, DIR_EGRESS, segs, skb->ifindex);
	return TC_ACT_OK;
}

/* --- DSS checksums (tail-called from mptcp_xdp) ---------------------------------------------- */

/* A mapping that cannot be checked: counted once, then its remaining segments are ignored. */
static __always_inline void csum_give_up(struct dss_csum *st)
{
	st->state = CSUM_SKIP;
	st->unverifiable++;
	count(CNT_DSS_CSUM_UNVERIFIABLE, 1);
}

/* The mapping is complete: fold in the pseudo-header with the received checksum (a match
 * sums to 0xffff), count, and raise EV_DSS_CSUM_BAD on a mismatch. */
static __always_inline void csum_finish(struct dss_csum *st, struct flow_key *k,
					struct pkt_info *pi, __u32 ifindex)
{
	__u32 total =
	    csum_add16(st->sum, csum_pseudo(st->dsn, st->subflow_seq, st->data_len, st->csum));
	st->state = CSUM_DONE;
	if (total == 0xffff) {
		st->verified++;
		count(CNT_DSS_CSUM_OK, 1);
		return;
	}
	st->bad++;
	count(CNT_DSS_CSUM_BAD, 1);
	struct event *ev = events.ringbuf_reserve(sizeof(struct event));
	if (!ev) {
		count(CNT_EVENTS_LOST, 1);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_DSS_CSUM_BAD;
	ev->ifindex = ifindex;
	ev->dir = DIR_INGRESS;
	ev->tcp_flags = pi->tcp_flags;
	ev->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(&ev->flow, k, sizeof(*k));
	ev->opt.subtype = MPTCP_SUB_DSS;
	ev->opt.present = HAS_KEY_B | HAS_WORD | HAS_DATA_LEN | HAS_CHECKSUM | DSN64;
	ev->opt.key_b = st->dsn;
	ev->opt.word = st->subflow_seq;
	ev->opt.data_len = st->data_len;
	ev->opt.checksum = st->csum;
	/* What the field should have held: the complement of the sum with it zeroed. */
	__u32 zeroed = csum_add16(st->sum, csum_pseudo(st->dsn, st->subflow_seq, st->data_len, 0));
	ev->opt.nonce = bpf_ntohs((__u16)~zeroed);
	events.ringbuf_submit(ev, 0);
}

/* A new mapping with a checksum on this segment: open it, or give up on it. */
static __always_inline int csum_open(struct dss_csum *st, struct subflow_stats *s,
				     struct mptcp_opt *m)
{
	if (st->state == CSUM_OPEN && st->dsn == m->key_b && st->subflow_seq == m->word &&
	    st->data_len == m->data_len)
		return 0; /* the same mapping, repeated on a later segment */
/* -DCSUM_RECHECK (bench/dsscsum.py only): check the same mapping again on every run. */
#ifndef CSUM_RECHECK
	if ((st->state == CSUM_SKIP || st->state == CSUM_DONE) && st->dsn == m->key_b &&
	    st->subflow_seq == m->word)
		return -1; /* given up on, or checked already: a retransmission */
#endif
	if (st->state == CSUM_OPEN)
		csum_give_up(st); /* the previous mapping never completed */
	st->state = CSUM_IDLE;
	st->dsn = m->key_b;
	st->subflow_seq = m->word;
	st->data_len = m->data_len;
	st->csum = m->checksum;
	st->done = 0;
	st->sum = 0;
	/* The pseudo-header needs all 64 bits of the DSN; a 4-byte DSN leaves the top unknown.
	 * A zero length is an infinite mapping (fallback), DATA_FIN's extra byte is not data. */
	if (!(m->present & DSN64) || !(s->flags & SF_HAVE_PEER_ISN) || m->data_len == 0 ||
	    (m->flags & DSS_FLAG_F)) {
		csum_give_up(st);
		return -1;
	}
	st->start_seq = s->peer_isn + m->word;
	st->state = CSUM_OPEN;
	return 0;
}

/* The part of this segment's payload that falls in the open mapping, summed in. */
static __always_inline void csum_segment(struct xdp_md *ctx, struct dss_csum *st, void *data,
					 void *payload, void *data_end, __u32 seq, __u32 len)
{
	__s32 delta = seq - (st->start_seq + st->done);
	if (delta < 0)
		return; /* bytes already summed (a retransmission): nothing new */
	if (delta > 0) {
		csum_give_up(st); /* bytes of the mapping went by unseen */
		return;
	}
	__u32 n = st->data_len - st->done;
	if (n > len)
		n = len;
	__u32 part = 0, zero = 0;
	struct csum_buf *buf = csum_scratch.lookup(&zero);
	if (!buf || csum_payload(ctx, data, payload, data_end, n, buf, &part)) {
		csum_give_up(st);
		return;
	}
	if (st->done & 1)
		part = csum_swap16(part);
	st->sum = csum_add16(st->sum, part);
	st->done += n;
}

/* The first DSS mapping this packet's decode holds, or 0. */
static __always_inline struct mptcp_opt *find_mapping(struct decode_result *r)
{
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MAX_DECODED_OPTS; i++) {
		if (i >= r->nopts)
			break;
		struct mptcp_opt *m = &r->opts[i];
		if (m->subtype == MPTCP_SUB_DSS && (m->present & HAS_KEY_B))
			return m;
	}
	return 0;
}

static __always_inline void dss_csum_check(struct xdp_md *ctx, void *data, void *data_end)
{
	struct pkt_info pi = {};
	void *payload = 0;
	struct tcphdr *th = csum_parse(data, data_end, &pi, &payload);
	if (!th)
		return;
	struct flow_key k = {};
	make_key(&k, &pi, DIR_INGRESS);
	struct subflow_stats *s = subflows.lookup(&k);
	if (!s)
		return;
	__u32 seq = bpf_ntohl(th->seq);
	struct dss_csum *st = &s->csum;
	if (pi.tcp_flags & TCP_FLAG_SYN)
		return; /* mptcp_xdp recorded its ISN (note_syn_request_csum) */
	if (!(s->flags & SF_CHECKSUM) || !pi.payload)
		return;
	int export = 0;
	__u32 token_gen = 0;
	struct decode_result *r = result_slot(&export, &token_gen);
	if (!r)
		return;
	struct mptcp_opt *m = find_mapping(r);
	if (m && (m->present & HAS_CHECKSUM)) {
		if (csum_open(st, s, m))
			return;
	}
	if (st->state != CSUM_OPEN)
		return;
	csum_segment(ctx, st, data, payload, data_end, seq, pi.payload);
	if (st->state == CSUM_OPEN && st->done == st->data_len)
		csum_finish(st, &k, &pi, ctx->ingress_ifindex);
}

/* Tail-called by mptcp_xdp (slot DSS_CSUM_PROG of dss_csum_progs) after its accounting:
 * records the peer's ISN from SYNs and checks the DSS checksums of subflows that use them. */
int mptcp_dss_csum(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	dss_csum_check(ctx, data, data_end);
	return XDP_PASS;
}
