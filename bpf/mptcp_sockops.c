/* mptcp_sockops.c: the sockops program (cgroup v2) of the coupled congestion control. It
 * follows every MPTCP subflow socket of one network namespace: records its TCP state on
 * establishment and every RTT sample, and applies the window clamp the controller computed
 * (TCP_BPF_SNDCWND_CLAMP). Plain TCP sockets and other namespaces are left alone. */
#define MPTCPCTL_SOCKOPS 1
#include <uapi/linux/bpf.h>

#include "include/abi.h"
#include "include/maps.h"

#define SOL_TCP_ 6
#define AF_INET_ 2
#define AF_INET6_ 10

static __always_inline int ours(struct bpf_sock_ops *skops)
{
	__u32 zero = 0;
	struct cc_config *cfg = cc_config.lookup(&zero);
	if (!cfg || !cfg->netns_cookie || bpf_get_netns_cookie(skops) != cfg->netns_cookie)
		return 0;
	struct bpf_sock *sk = skops->sk;
	/* An MPTCP subflow is a TCP socket whose owner is an MPTCP socket. */
	return sk && bpf_skc_to_mptcp_sock(sk) != 0;
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

/* Record the subflow's state; apply the controller's clamp when it changed. */
static __always_inline void record(struct bpf_sock_ops *skops, struct flow_key *k)
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
	__u32 *want = cwnd_clamp.lookup(k);
	if (want && *want && *want != st.clamp) {
		int val = *want;
		if (bpf_setsockopt(skops, SOL_TCP_, TCP_BPF_SNDCWND_CLAMP, &val, sizeof(val)) == 0)
			st.clamp = *want;
	}
	tcp_state.update(k, &st);
}

int mptcp_sockops(struct bpf_sock_ops *skops)
{
	struct flow_key k = {};
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (!ours(skops) || key_of(skops, &k))
			break;
		bpf_sock_ops_cb_flags_set(skops,
					  BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG);
		record(skops, &k);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		/* Sockets another namespace's daemon enabled get here too: check again. */
		if (ours(skops) && key_of(skops, &k) == 0)
			record(skops, &k);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE && key_of(skops, &k) == 0)
			tcp_state.delete(&k);
		break;
	}
	return 1;
}
