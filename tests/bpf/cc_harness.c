/* cc_harness.c: bpf/include/coupled.h's fixed-point algorithms behind an XDP program, so the
 * tests can run them through BPF_PROG_TEST_RUN on synthetic subflow states and compare with
 * controller/cc.py. Input and output go through the one-entry `io` array. */
#include <uapi/linux/bpf.h>

#include "include/coupled.h"

struct cc_io {
	struct cc_conn conn; /* the connection's slots (in) */
	__u64 acked_fp;      /* packets acked, 1/1024 (in) */
	__u32 algo;          /* CC_* (in) */
	__u32 self;          /* the subflow's slot (in) */
	__u32 grown;         /* cc_grow(): its window after the ACKs (out) */
	__u32 balia_cut;     /* cc_balia_decrease() of its window (out) */
	__u64 sndbuf;        /* cc_conn_sndbuf() at `mss` (out) */
	__u32 mss;           /* (in) */
	__u32 pad;
};

BPF_ARRAY(io, struct cc_io, 1);

int cc_harness(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct cc_io *p = io.lookup(&zero);
	if (!p)
		return XDP_ABORTED;
	__u32 self = p->self & (CC_SLOTS - 1);
	__u32 w = p->conn.sl[self].w;
	p->grown = cc_grow(p->algo, &p->conn, self, w, p->acked_fp);
	struct cc_sums s;
	cc_sum(&p->conn, self, &s);
	p->balia_cut = cc_balia_decrease(&s, w);
	p->sndbuf = cc_conn_sndbuf(&p->conn, p->mss);
	return XDP_PASS;
}
