/* coupled.h: LIA (RFC 6356), OLIA (Khalili et al., CoNEXT 2012) and BALIA (Peng et al.,
 * IEEE/ACM ToN 2016) as fixed-point arithmetic the sockops program runs on every ACK of an
 * MPTCP subflow. controller/cc.py holds the same equations in floating point, documented; the
 * BPF test harness (tests/bpf/cc_harness.c) checks these against them.
 *
 * Units: windows in 1/1024 packet (W_SHIFT), RTTs in µs. The RTT unit cancels in every
 * equation, so each path's RTT enters as rho_j = rtt_min / rtt_j in 1/65536 (<= 1): with
 * y_j = w_j * rho_j (a rate in "packets per rtt_min") and a_j = w_j * rho_j^2,
 *   LIA   per acked packet: min(max_j a_j / (sum_j y_j)^2, 1 / w_i)
 *   OLIA  per acked packet: a_i / (sum_j y_j)^2 + alpha_i / w_i
 *   BALIA per acked packet: a_i / (sum_j y_j)^2 * ((1 + b_i) / 2) * ((4 + b_i) / 5),
 *         b_i = max_j y_j / y_i; on a loss w_i -= (w_i / 2) * min(b_i, 1.5)
 * Increases are returned in 1/2^20 packet per acked packet (INC_SHIFT). Pure functions: no
 * maps, no helpers, so the harness can run them through BPF_PROG_TEST_RUN. */
#ifndef MPTCPCTL_COUPLED_H
#define MPTCPCTL_COUPLED_H

#define CC_UNCOUPLED 0
#define CC_LIA 1
#define CC_OLIA 2
#define CC_BALIA 3

#define CC_SLOTS 8 /* the kernel's subflow limit per connection */
#define W_SHIFT 10
#define W_ONE (1u << W_SHIFT)
#define INC_SHIFT 20
#define RHO_SHIFT 16
#define CC_MIN_CLAMP 2
/* Windows are capped at 2^21 packets (far above any window that matters) so that they fit
 * 32 bits in 1/1024 packet and every product below fits 64 bits. */
#define CC_MAX_W ((1ull << 21) << W_SHIFT)

/* One subflow as its connection's other subflows see it (a slot of struct cc_conn). */
struct cc_slot {
	__u32 id;     /* nonzero while a subflow owns the slot: a hash of its 4-tuple */
	__u32 w;      /* coupled window, 1/1024 packet */
	__u32 rtt_us; /* smoothed RTT */
	__u32 pad;
	__u64 l1; /* OLIA: bytes acked between the last two losses */
	__u64 l2; /* OLIA: bytes acked since the last loss */
};

/* Value of the cc_conns map, keyed by the MPTCP socket. */
struct cc_conn {
	struct cc_slot sl[CC_SLOTS];
	__u64 last_cut_ns; /* when a subflow's window was last cut for a loss */
};

/* Value of the cc_params map (one entry, written by the controller). */
struct cc_params {
	__u32 algo;      /* CC_* */
	__u32 min_clamp; /* packets; 0 means CC_MIN_CLAMP */
};

/* Per-subflow state of the coupling (cc_sf map, by struct flow_key). */
struct cc_sf {
	__u64 conn;        /* key of the connection's cc_conns entry */
	__u64 bytes_acked; /* tcpi_bytes_acked at the previous ACK */
	__u32 w;           /* coupled window, 1/1024 packet */
	__u32 pushed;      /* clamp last set, packets; 0 none */
	__u32 last_ssthresh;
	__u32 slot;    /* index in cc_conn.sl */
	__u32 coupled; /* 1 once the first loss ended slow start */
	__u32 losses;  /* loss episodes seen (for status and tests) */
	__u32 merged;  /* of those, part of a sibling's congestion event: no second cut */
	__u32 sndbuf;  /* send buffer (sk_sndbuf bytes) this program last gave it; 0 none */
};

/* What every algorithm needs from the connection's live slots, i = the subflow itself. */
struct cc_sums {
	__u64 sum_y; /* sum_j w_j rho_j, window units */
	__u64 max_a; /* max_j w_j rho_j^2 */
	__u64 max_y; /* max_j w_j rho_j */
	__u64 a_i, y_i;
	__u32 n; /* live slots */
	__u32 pad;
};

/* Branch-free selection. BPF has no conditional move: every `a < b ? a : b` in a loop over the
 * slots is a fork the verifier walks separately, 2^8 and more of them per loop. These flags
 * are arithmetic 0/1 values (not 0/-1 masks: the verifier forks a state on `(x s>> 63) & y`),
 * and the empty asm keeps the compiler from turning them back into branches. Every value
 * compared here is below 2^62. */
static __always_inline __u64 cc_opaque(__u64 x)
{
	asm volatile("" : "+r"(x));
	return x;
}

/* 1 when a < b, else 0. */
static __always_inline __u64 cc_lt(__u64 a, __u64 b)
{
	return cc_opaque(cc_opaque(a - b) >> 63);
}

/* flag ? a : b for a 0/1 flag (wrapping arithmetic makes it exact). */
static __always_inline __u64 cc_sel(__u64 flag, __u64 a, __u64 b)
{
	return b + flag * (a - b);
}

/* 1 when a == b / when a != 0, else 0. */
static __always_inline __u64 cc_eq(__u64 a, __u64 b)
{
	return cc_lt(a ^ b, 1);
}

static __always_inline __u64 cc_nz(__u64 a)
{
	return 1 - cc_lt(a, 1);
}

/* Sums over the live slots of c (id != 0); slot `self` is subflow i. An RTT of 0 (not yet
 * measured) counts as the largest RTT of the connection. */
static __always_inline void cc_sum(const struct cc_conn *c, __u32 self, struct cc_sums *s)
{
	__u64 rmin = 1ull << 32, rmax = 0;
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 r = c->sl[j].rtt_us;
		__u64 live = cc_nz(c->sl[j].id) & cc_nz(r);
		rmin = cc_sel(live & cc_lt(r, rmin), r, rmin);
		rmax = cc_sel(live & cc_lt(rmax, r), r, rmax);
	}
	rmin *= cc_lt(rmin, 1ull << 32); /* no RTT at all: every rho is 0, so is every increase */
	__u64 sum_y = 0, max_a = 0, max_y = 0, a_i = 0, y_i = 0, n = 0;
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 live = cc_nz(c->sl[j].id);
		__u64 w = c->sl[j].w;
		w = cc_sel(cc_lt(w, CC_MAX_W), w, CC_MAX_W) * live;
		__u64 r = c->sl[j].rtt_us;
		r = cc_sel(cc_nz(r), r, rmax);
		__u64 rho = (rmin << RHO_SHIFT) / (r | cc_eq(r, 0)); /* <= 2^16: rmin <= r */
		__u64 y = (w * rho) >> RHO_SHIFT;
		__u64 a = (y * rho) >> RHO_SHIFT;
		__u64 me = cc_eq(j, self);
		sum_y += y;
		max_a = cc_sel(cc_lt(max_a, a), a, max_a);
		max_y = cc_sel(cc_lt(max_y, y), y, max_y);
		a_i += a * me;
		y_i += y * me;
		n += live;
	}
	s->sum_y = sum_y;
	s->max_a = max_a;
	s->max_y = max_y;
	s->a_i = a_i;
	s->y_i = y_i;
	s->n = n;
	s->pad = 0;
}

/* The send buffer (sk_sndbuf bytes) the connection needs across its subflows: what all of them
 * carry in twice the longer of the largest RTT and the kernel's minimum RTO (200 ms), so that
 * the data level rides out a slow path's recovery, a timeout included, without stalling the
 * others (Raiciu et al., NSDI 2012, size the buffer at 2 * sum_i(rate_i) * rtt_max when no
 * timeout is involved); twice again for the kernel's per-packet overhead (truesize ~ 2 * mss).
 * Windows in packets, mss in bytes. */
#define CC_RTO_MIN_US 200000
static __always_inline __u64 cc_conn_sndbuf(const struct cc_conn *c, __u32 mss)
{
	__u64 rmax = CC_RTO_MIN_US, pkts = 0;
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 r = c->sl[j].rtt_us;
		rmax = cc_sel(cc_nz(c->sl[j].id) & cc_lt(rmax, r), r, rmax);
	}
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 r = c->sl[j].rtt_us;
		__u64 w = (__u64)(c->sl[j].w >> W_SHIFT) * cc_nz(c->sl[j].id) * cc_nz(r);
		pkts += (w * 2 * rmax) / (r | cc_eq(r, 0));
	}
	return pkts * mss * 2;
}

/* Reno's per-ACK increase 1/w in 1/2^20 packet (w in 1/1024 packet). */
static __always_inline __u64 cc_reno_inc(__u32 w)
{
	if (w < W_ONE)
		w = W_ONE;
	return (1ull << (INC_SHIFT + W_SHIFT)) / w;
}

/* a / sum_y^2 in 1/2^20 packet per acked packet (a, sum_y in window units). */
static __always_inline __u64 cc_coupled_term(__u64 a, __u64 sum_y)
{
	if (!sum_y)
		return 0;
	/* a * 2^W_SHIFT / sum_y^2 packets; scaled by 2^INC_SHIFT. Divide in two steps so that
	 * nothing overflows: a <= sum_y <= 2^34. */
	return ((a << (INC_SHIFT + W_SHIFT - 6)) / sum_y << 6) / sum_y;
}

static __always_inline __u64 cc_lia_inc(const struct cc_sums *s, __u32 w_i)
{
	__u64 coupled = cc_coupled_term(s->max_a, s->sum_y);
	__u64 reno = cc_reno_inc(w_i);
	return coupled < reno ? coupled : reno;
}

/* BALIA's b_i = max_j y_j / y_i in 1/1024 (>= 1024). */
static __always_inline __u64 cc_balia_b(const struct cc_sums *s)
{
	if (!s->y_i)
		return W_ONE;
	return (s->max_y << W_SHIFT) / s->y_i;
}

static __always_inline __u64 cc_balia_inc(const struct cc_sums *s, __u32 w_i)
{
	__u64 b = cc_balia_b(s);
	if (b > (1024u << W_SHIFT))
		b = 1024u << W_SHIFT; /* keeps the products below in 64 bits */
	__u64 f = ((W_ONE + b) * (4 * W_ONE + b)) / (10 * W_ONE); /* 1/1024 */
	__u64 inc = (cc_coupled_term(s->a_i, s->sum_y) * f) >> W_SHIFT;
	__u64 reno = cc_reno_inc(w_i);
	return inc < reno ? inc : reno;
}

/* BALIA's window after a loss: w - (w / 2) * min(b, 1.5). */
static __always_inline __u32 cc_balia_decrease(const struct cc_sums *s, __u32 w)
{
	__u64 b = cc_balia_b(s);
	if (b > (3 * W_ONE) / 2)
		b = (3 * W_ONE) / 2;
	__u64 cut = (((__u64)w / 2) * b) >> W_SHIFT;
	return cut >= w ? 0 : w - (__u32)cut;
}

/* OLIA: |alpha_i / w_i| in 1/2^20 packet per acked packet; *neg set when it is negative. M =
 * the paths with the largest window, B = the best paths by l^2 / rtt with l = max(l1, l2)
 * bytes; paths in B but not M get +1/(n |B\M|), paths in M get -1/(n |M|) while B\M is not
 * empty. (No signed division: BPF before v4 has none.) */
static __always_inline __u64 cc_olia_alpha_term(const struct cc_conn *c, __u32 self, __u32 n,
						int *neg)
{
	__u64 wmax = 0, qbest = 0;
	__u64 q[CC_SLOTS];
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 live = cc_nz(c->sl[j].id);
		__u64 l1 = c->sl[j].l1, l2 = c->sl[j].l2;
		__u64 l = cc_sel(cc_lt(l1, l2), l2, l1) >> 10;   /* KiB */
		l = cc_sel(cc_lt(l, 1ull << 26), l, 1ull << 26); /* l^2 fits */
		q[j] = ((l * l) / c->sl[j].rtt_us) * live;       /* rtt 0: BPF division gives 0 */
		__u64 w = c->sl[j].w * live;
		wmax = cc_sel(cc_lt(wmax, w), w, wmax);
		qbest = cc_sel(cc_lt(qbest, q[j]), q[j], qbest);
	}
	__u64 n_max = 0, n_bnm = 0, self_max = 0, self_bnm = 0, w_self = 0;
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 live = cc_nz(c->sl[j].id);
		__u64 is_max = live * cc_eq(c->sl[j].w, wmax);
		__u64 bnm = live * cc_eq(q[j], qbest) * (1 - is_max);
		__u64 me = cc_eq(j, self);
		n_max += is_max;
		n_bnm += bnm;
		self_max += is_max * me;
		self_bnm += bnm * me;
		w_self += c->sl[j].w * me;
	}
	*neg = 0;
	if (!n || !n_bnm)
		return 0;
	if (w_self < W_ONE)
		w_self = W_ONE;
	__u64 unit = (1ull << (INC_SHIFT + W_SHIFT)) / w_self; /* 1/w_i */
	if (self_bnm)
		return unit / (n * n_bnm);
	if (self_max) {
		*neg = 1;
		return unit / (n * n_max);
	}
	return 0;
}

/* The window after `acked_fp` acked packets (1/1024 packet each) of subflow `self` with
 * window w_i, never below one packet. */
static __always_inline __u32 cc_grow(__u32 algo, const struct cc_conn *c, __u32 self, __u32 w_i,
				     __u64 acked_fp)
{
	struct cc_sums s;
	cc_sum(c, self, &s);
	__u64 reno = cc_reno_inc(w_i);
	__u64 per;
	int neg = 0;
	if (algo == CC_LIA) {
		per = cc_lia_inc(&s, w_i);
	} else if (algo == CC_BALIA) {
		per = cc_balia_inc(&s, w_i);
	} else if (algo == CC_OLIA) {
		__u64 coupled = cc_coupled_term(s.a_i, s.sum_y);
		__u64 alpha = cc_olia_alpha_term(c, self, s.n, &neg);
		if (!neg) {
			per = coupled + alpha;
		} else if (alpha > coupled) {
			per = alpha - coupled;
		} else {
			per = coupled - alpha;
			neg = 0;
		}
		if (!neg && per > reno)
			per = reno;
	} else {
		per = reno;
	}
	__u64 d = (per * acked_fp) >> INC_SHIFT;
	__u64 w = w_i;
	if (neg)
		w = d + W_ONE > w ? W_ONE : w - d;
	else
		w += d;
	return w > CC_MAX_W ? (__u32)CC_MAX_W : (__u32)w;
}

#endif
