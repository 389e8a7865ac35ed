/* mptcp_sockops.c: the sockops program (cgroup v2) of the coupled congestion control. It
 * follows every MPTCP subflow socket of one network namespace: records its TCP state on
 * establishment and every RTT sample (in practice every ACK that acknowledges data), runs the
 * coupled algorithm of include/coupled.h on it and applies the resulting window with
 * TCP_BPF_SNDCWND_CLAMP. Plain TCP sockets and other namespaces are left alone. */
#define MPTCPCTL_SOCKOPS 1
#include <uapi/linux/bpf.h>

#include "include/abi.h"
#include "include/maps.h"
#include "include/coupled.h"

/* cc_params: one struct cc_params. Written by the controller (algorithm, CC_LIFT at `down`);
 * read on every ACK. */
BPF_ARRAY(cc_params, struct cc_params, 1);

/* cc_sf: struct flow_key -> struct cc_sf, the coupling's state of one subflow. Written and read
 * by this program only; deleted on close. */
BPF_TABLE("lru_hash", struct flow_key, struct cc_sf, cc_sf, SUBFLOW_ENTRIES);

/* cc_sf_init: per CPU, the cc_sf a new subflow starts from (kept off the 512-byte stack).
 * Written and read by this program within one call. */
BPF_PERCPU_ARRAY(cc_sf_init, struct cc_sf, 1);

/* cc_conns: __u64 MPTCP socket (its address: unique while it lives) -> struct cc_conn, every
 * subflow's coupled window and RTT as its siblings see them. Written and read by this program;
 * a subflow frees its slot on close. */
BPF_TABLE("lru_hash", __u64, struct cc_conn, cc_conns, CONN_ENTRIES);
/* cc_zero: one all-zero struct cc_conn to create cc_conns entries from (too big for the stack). */
BPF_ARRAY(cc_zero, struct cc_conn, 1);

/* Set at `down`: every clamp goes back to CLAMP_NONE on the subflow's next ACK. */
#define CC_LIFT 255
/* A flag in couple()'s result (windows stay below 2^21 packets): set the clamp again. */
#define CC_REPUSH (1u << 31)

#define SOL_TCP_ 6
#define SOL_SOCKET_ 1
#define SO_SNDBUF_ 7
#define AF_INET_ 2
#define AF_INET6_ 10

/* The subflow's MPTCP socket as a connection id, 0 if this is not a subflow of ours. */
static __always_inline __u64 ours(struct bpf_sock_ops *skops)
{
	__u32 zero = 0;
	struct cc_config *cfg = cc_config.lookup(&zero);
	if (!cfg || !cfg->netns_cookie || bpf_get_netns_cookie(skops) != cfg->netns_cookie)
		return 0;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 0;
	/* An MPTCP subflow is a TCP socket whose owner is an MPTCP socket. */
	return (__u64)bpf_skc_to_mptcp_sock(sk);
}

static __always_inline int key_of(struct bpf_sock_ops *skops, struct flow_key *k)
{
	k->lport = bpf_htons(skops->local_port);
	/* remote_port holds the network-order port in its upper 16 bits on little-endian
	 * kernels and in its lower 16 bits elsewhere; a port is never 0. */
	__u32 rp = skops->remote_port;
	k->rport = (rp & 0xffff) ? (__u16)rp : (__u16)(rp >> 16);
	if (skops->family == AF_INET_) {
		k->family = 4;
		__builtin_memcpy(k->laddr, &skops->local_ip4, 4);
		__builtin_memcpy(k->raddr, &skops->remote_ip4, 4);
		return 0;
	}
	if (skops->family == AF_INET6_) {
		k->family = 6;
		__u32 l[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
			      skops->local_ip6[3]};
		__u32 r[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
			      skops->remote_ip6[3]};
		__builtin_memcpy(k->laddr, l, 16);
		__builtin_memcpy(k->raddr, r, 16);
		return 0;
	}
	return -1;
}

static __always_inline __u32 flow_id(const struct flow_key *k)
{
	__u32 a, b;
	__builtin_memcpy(&a, k->laddr + 12, 4);
	__builtin_memcpy(&b, k->raddr + 12, 4);
	__u32 id = ((__u32)k->lport << 16 | k->rport) ^ a ^ (b * 2654435761u) ^ k->laddr[0];
	return id ? id : 1;
}

/* The slot of c that subflow `id` owns, taking a free one if it has none; CC_SLOTS if full.
 * Branch-free over the slots (see coupled.h). */
static __always_inline __u32 take_slot(struct cc_conn *c, __u32 id, __u32 hint)
{
	if (hint < CC_SLOTS && c->sl[hint].id == id)
		return hint;
	__u64 found = CC_SLOTS, free = CC_SLOTS;
#pragma unroll
	for (int j = 0; j < CC_SLOTS; j++) {
		__u64 sid = c->sl[j].id;
		found = cc_sel(cc_eq(sid, id) * cc_eq(found, CC_SLOTS), j, found);
		free = cc_sel(cc_eq(sid, 0) * cc_eq(free, CC_SLOTS), j, free);
	}
	if (found < CC_SLOTS)
		return found;
	if (free < CC_SLOTS) {
		struct cc_slot *sl = &c->sl[free & (CC_SLOTS - 1)];
		__builtin_memset(sl, 0, sizeof(*sl));
		sl->id = id;
	}
	return free;
}

/* A coupled connection's send buffer is the sum of its subflows' (the kernel's
 * __mptcp_sync_sndbuf), and each subflow's is autotuned from its own window. Coupling makes a
 * congested path's window small, so its buffer shrinks, while a loss there holds up the data
 * level for a recovery (an RTO at a window of 2): the other paths then stall on a full buffer.
 * Each subflow of a connection with several is given at least its share of what the
 * connection needs (cc_conn_sndbuf); raised only, and only when below it, since SO_SNDBUF stops
 * that subflow's own autotuning (the kernel caps the value at net.core.wmem_max). */
static __always_inline void grow_sndbuf(struct bpf_sock_ops *skops, struct cc_sf *sf,
					const struct cc_conn *c, __u32 n, __u32 mss)
{
	if (n < 2 || !mss)
		return;
	__u64 want = cc_conn_sndbuf(c, mss) / n;
	if (want > (4u << 20))
		want = 4u << 20;
	if (want <= sf->sndbuf + sf->sndbuf / 4)
		return; /* within a quarter of what it has: not worth a call per ACK */
	int cur = 0;
	if (bpf_getsockopt(skops, SOL_SOCKET_, SO_SNDBUF_, &cur, sizeof(cur)) != 0)
		return;
	if (cur < 0)
		cur = 0;
	if ((__u64)cur < want) {
		int half = want / 2; /* the kernel doubles it for its bookkeeping */
		if (bpf_setsockopt(skops, SOL_SOCKET_, SO_SNDBUF_, &half, sizeof(half)) == 0)
			bpf_getsockopt(skops, SOL_SOCKET_, SO_SNDBUF_, &cur, sizeof(cur));
	}
	sf->sndbuf = cur > 0 ? cur : 0;
}

/* One ACK of the coupled algorithm: returns the window (packets) the subflow may have now, or 0
 * while it is in its first slow start (RFC 6356 couples congestion avoidance only); with
 * CC_REPUSH set when the clamp must be set again even if unchanged (to undo a kernel cut).
 *
 * A loss episode is a drop of ssthresh below the value we last saw: the kernel's Reno halved
 * (fast recovery) or restarted (timeout); ours then follows it (BALIA cuts deeper), and the
 * clamp, which also sets ssthresh, never raises it again. Between losses the coupled window
 * grows per acked packet by the algorithm's increase, but only while the kernel's own window
 * has reached it: a subflow held back by something else (recovery, the receiver, the
 * application) earns no credit it did not test. */
static __always_inline __u32 couple(struct bpf_sock_ops *skops, const struct flow_key *k, __u64 msk,
				    __u32 algo, __u32 min_clamp)
{
	__u32 repush = 0;
	__u32 cwnd = skops->snd_cwnd, ss = skops->snd_ssthresh, mss = skops->mss_cache;
	__u64 total = skops->bytes_acked;
	struct cc_sf *sf = cc_sf.lookup((struct flow_key *)k);
	if (!sf || sf->conn != msk) {
		__u32 zero = 0;
		struct cc_sf *init = cc_sf_init.lookup(&zero);
		if (!init)
			return 0;
		__builtin_memset(init, 0, sizeof(*init));
		init->conn = msk;
		init->bytes_acked = total;
		init->w = cwnd << W_SHIFT;
		init->last_ssthresh = ss;
		init->slot = CC_SLOTS;
		cc_sf.update((struct flow_key *)k, init);
		sf = cc_sf.lookup((struct flow_key *)k);
		if (!sf)
			return 0;
	}
	struct cc_conn *c = cc_conns.lookup(&msk);
	if (!c) {
		__u32 zero = 0;
		struct cc_conn *z = cc_zero.lookup(&zero);
		if (!z)
			return 0;
		cc_conns.insert(&msk, z);
		c = cc_conns.lookup(&msk);
		if (!c)
			return 0;
	}
	__u32 slot = take_slot(c, flow_id(k), sf->slot);
	if (slot >= CC_SLOTS)
		return 0; /* more subflows than the kernel allows: leave this one alone */
	sf->slot = slot;
	struct cc_slot *me = &c->sl[slot & (CC_SLOTS - 1)];

	__u64 acked = total - sf->bytes_acked;
	sf->bytes_acked = total;
	__u32 w = sf->w;
	__u32 cw = cwnd > (CC_MAX_W >> W_SHIFT) ? (CC_MAX_W >> W_SHIFT) : cwnd;
	if (ss != sf->last_ssthresh) {
		if (ss < sf->last_ssthresh) {
			__u64 now = bpf_ktime_get_ns();
			__u64 rtt_ns = (__u64)(skops->srtt_us >> 3) * 1000;
			if (sf->coupled && now - c->last_cut_ns < rtt_ns) {
				/* A sibling's window was cut less than an RTT ago: one
				 * congestion event of the connection (a shared queue
				 * overflowing drops from every subflow at once), which TCP
				 * answers with one cut. Undo the kernel's. */
				sf->merged++;

				repush = CC_REPUSH;
			} else {
				__u32 nw = ss << W_SHIFT;
				if (algo == CC_BALIA && sf->coupled) {
					struct cc_sums sums;
					cc_sum(c, slot, &sums);
					__u32 b = cc_balia_decrease(&sums, w);
					if (b < nw)
						nw = b;
				}
				w = nw;
				c->last_cut_ns = now;
			}
			sf->losses++;
			sf->coupled = 1;
			me->l1 = me->l2;
			me->l2 = 0;
		} else if ((cw << W_SHIFT) > w) {
			w = cw << W_SHIFT; /* an undo: the kernel took a spurious loss back */
		}
		sf->last_ssthresh = ss;
	} else if (!sf->coupled) {
		w = cw << W_SHIFT;
	} else if (cw + 1 >= (w >> W_SHIFT) && mss) {
		w = cc_grow(algo, c, slot, w, (acked << W_SHIFT) / mss);
		if (w > ((cw + 2) << W_SHIFT) - 1)
			w = ((cw + 2) << W_SHIFT) - 1;
	}
	me->l2 += acked;
	if (w < (min_clamp << W_SHIFT))
		w = min_clamp << W_SHIFT;
	__u32 moved = (w >> W_SHIFT) != (sf->w >> W_SHIFT);
	sf->w = w;
	me->w = w;
	me->rtt_us = skops->srtt_us >> 3;
	/* The need follows the windows: look again when this one moved by a packet. */
	if (sf->coupled && moved) {
		__u32 n = 0;
#pragma unroll
		for (int j = 0; j < CC_SLOTS; j++)
			n += cc_nz(c->sl[j].id);
		grow_sndbuf(skops, sf, c, n, mss);
	}
	return sf->coupled ? (w >> W_SHIFT) | repush : 0;
}

static __always_inline void set_clamp(struct bpf_sock_ops *skops, struct sf_tcp_state *st,
				      const struct flow_key *k, __u32 val)
{
	int v = val;
	if (bpf_setsockopt(skops, SOL_TCP_, TCP_BPF_SNDCWND_CLAMP, &v, sizeof(v)) != 0)
		return;
	st->clamp = val;
	/* The kernel set ssthresh to the clamp as well: not a loss. */
	struct cc_sf *sf = cc_sf.lookup((struct flow_key *)k);
	if (sf) {
		sf->pushed = val;
		sf->last_ssthresh = val;
	}
}

/* Forget a closing subflow: free its slot in the connection, drop its state. */
static __always_inline void forget(const struct flow_key *k)
{
	struct cc_sf *sf = cc_sf.lookup((struct flow_key *)k);
	if (sf) {
		__u64 msk = sf->conn;
		struct cc_conn *c = cc_conns.lookup(&msk);
		if (c && sf->slot < CC_SLOTS) {
			struct cc_slot *me = &c->sl[sf->slot & (CC_SLOTS - 1)];
			if (me->id == flow_id(k))
				__builtin_memset(me, 0, sizeof(*me));
			__u64 live = 0;
#pragma unroll
			for (int j = 0; j < CC_SLOTS; j++)
				live |= c->sl[j].id;
			if (!live)
				cc_conns.delete(&msk);
		}
		cc_sf.delete((struct flow_key *)k);
	}
	tcp_state.delete((struct flow_key *)k);
}

/* Record the subflow's state, run the coupled algorithm, apply a changed clamp. A clamp the
 * controller wrote into cwnd_clamp is an upper bound on top (CLAMP_NONE there lifts ours). */
static __always_inline void record(struct bpf_sock_ops *skops, struct flow_key *k, __u64 msk)
{
	struct sf_tcp_state st = {};
	struct sf_tcp_state *old = tcp_state.lookup(k);
	if (old)
		st.clamp = old->clamp;
	st.bytes_acked = skops->bytes_acked;
	st.updated_ns = bpf_ktime_get_ns();
	st.snd_cwnd = skops->snd_cwnd;
	st.snd_ssthresh = skops->snd_ssthresh;
	st.srtt_us = skops->srtt_us >> 3;
	st.mss = skops->mss_cache;
	st.packets_out = skops->packets_out;
	st.total_retrans = skops->total_retrans;
	st.state = skops->state;
	__u32 zero = 0;
	struct cc_params *p = cc_params.lookup(&zero);
	__u32 algo = p ? p->algo : CC_UNCOUPLED;
	__u32 target = 0;
	__u32 repush = 0;
	if (algo == CC_LIFT) {
		if (st.clamp && st.clamp != CLAMP_NONE)
			target = CLAMP_NONE;
	} else if (algo != CC_UNCOUPLED) {
		__u32 min_clamp = p && p->min_clamp ? p->min_clamp : CC_MIN_CLAMP;
		target = couple(skops, k, msk, algo, min_clamp);
		repush = target & CC_REPUSH;
		target &= ~CC_REPUSH;
	}
	__u32 *want = cwnd_clamp.lookup(k);
	if (want && *want && (!target || *want < target || *want == CLAMP_NONE))
		target = *want;
	/* Setting the clamp again also puts ssthresh back to it: a cut the kernel made is undone.
	 */
	if (target && (target != st.clamp || repush))
		set_clamp(skops, &st, k, target);
	tcp_state.update(k, &st);
}

int mptcp_sockops(struct bpf_sock_ops *skops)
{
	struct flow_key k = {};
	__u64 msk;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		msk = ours(skops);
		if (!msk || key_of(skops, &k))
			break;
		bpf_sock_ops_cb_flags_set(skops,
					  BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG);
		record(skops, &k, msk);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		/* Sockets another namespace's daemon enabled get here too: check again. */
		msk = ours(skops);
		if (msk && key_of(skops, &k) == 0)
			record(skops, &k, msk);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE && key_of(skops, &k) == 0)
			forget(&k);
		break;
	}
	return 1;
}
