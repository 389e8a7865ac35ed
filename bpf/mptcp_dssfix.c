/* mptcp_dssfix.c: the opt-in DSS checksum fix (`mptcpctl up --fix-dss-checksum`), a tc egress
 * program for gateways whose ALG rewrites payload bytes without changing their length. A
 * segment that carries a whole checksummed DSS mapping gets its DSS checksum recomputed when
 * its TCP checksum shows the change was deliberate; see docs/dssfix.md for what it cannot do.
 * Attached at a priority before the datapath's filter; passes every packet on (TC_ACT_UNSPEC). */
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

/* Payload bytes summed per program run: 128 x 512 = 64 KiB, a whole GSO packet. */
#define DSSFIX_MAX_CHUNKS 128
/* Subflows with their own fix counts (LRU: a flood of 4-tuples evicts, never grows). */
#ifndef DSSFIX_FLOWS
#define DSSFIX_FLOWS 4096
#endif
/* Offset of the checksum field in the TCP header. */
#define TCP_CHECK_OFF 16

/* dssfix_counters slots (mirror: controller/dssfix.py COUNTERS, same order). */
enum dssfix_counter {
	DF_CHECKED = 0,       /* segments holding a whole checksummed mapping, checked */
	DF_OK = 1,            /* ... whose DSS checksum was right: untouched */
	DF_FIXED = 2,         /* ... rewritten, their TCP checksum verified first */
	DF_FIXED_PARTIAL = 3, /* ... rewritten, TCP checksum yet to be computed (PARTIAL) */
	DF_CORRUPT = 4,  /* ... wrong DSS and wrong TCP checksum: corruption, left for MP_FAIL */
	DF_SPANNING = 5, /* segments of a mapping that spans segments: cannot be fixed here */
	DF_SKIPPED = 6,  /* mappings with a 4-byte DSN, DATA_FIN, or too large / unreadable */
	DF_MAX = 7,
};

/* What the gateway did to one subflow direction (value of dssfix_flows). */
struct dssfix_flow {
	__u64 checked;
	__u64 fixed;   /* DF_FIXED + DF_FIXED_PARTIAL */
	__u64 corrupt; /* DF_CORRUPT */
	__u64 spanning;
};

/* dssfix_counters: enum dssfix_counter -> __u64, per CPU. Written here; read (summed) by
 * controller/dssfix.py for `mptcpctl status --json`. */
BPF_PERCPU_ARRAY(dssfix_counters, __u64, DF_MAX);

/* dssfix_flows: struct flow_key (laddr/lport = the segment's source, raddr/rport = its
 * destination) -> struct dssfix_flow. Written here for segments with a checksummed mapping;
 * read by controller/dssfix.py. */
BPF_TABLE("lru_hash", struct flow_key, struct dssfix_flow, dssfix_flows, DSSFIX_FLOWS);

/* dssfix_scratch: per-CPU room for the decoded DSS option and a payload chunk (too big for
 * the 512-byte BPF stack). Written and read here only. */
struct dssfix_scratch {
	__u32 at;   /* find_dss's position (see there) */
	__u32 left; /* skb_sum's bytes to go and offset (likewise) */
	__u32 off;
	__u32 pad;
	struct mptcp_opt m;
	struct csum_buf buf;
};
BPF_PERCPU_ARRAY(dssfix_scratch, struct dssfix_scratch, 1);

static __always_inline void count(__u32 idx)
{
	__u64 *v = dssfix_counters.lookup(&idx);
	if (v)
		*v += 1;
}

/* The 16-bit sum of n bytes of the skb from offset off (memory order, as if off were even);
 * -1 if they cannot be read. Copies a chunk at a time: works on paged (GSO) skbs too. The
 * position and count live in the scratch map value, for the reason given at find_dss. */
static __always_inline int skb_sum(struct __sk_buff *skb, __u32 off, __u32 n,
				   struct dssfix_scratch *sc, __u32 *out)
{
	volatile __u32 *left = &sc->left, *at = &sc->off;
	__u64 s = 0;
	*left = n;
	*at = off;
#pragma clang loop unroll(disable)
	for (int i = 0; i < DSSFIX_MAX_CHUNKS; i++) {
		__u32 todo = *left;
		if (todo == 0)
			break;
		__u64 last = (todo > CSUM_CHUNK ? CSUM_CHUNK : todo) - 1;
		asm volatile("" : "+r"(last));
		if (last >= CSUM_CHUNK)
			return -1;
		__u32 len = last + 1;
		__u32 pos = *at;
		if (bpf_skb_load_bytes(skb, pos, sc->buf.b, len))
			return -1;
		sc->buf.b[len] = 0;
		sc->buf.b[len + 1] = 0;
		sc->buf.b[len + 2] = 0;
		__u32 words = (len + 3) & ~3u;
		long ret = bpf_csum_diff(0, 0, (__be32 *)sc->buf.b, words, (__u32)s);
		if (ret < 0)
			return -1;
		s = ret;
		*at = pos + len;
		*left = todo - len;
	}
	if (*left)
		return -1;
	*out = csum_fold16(s);
	return 0;
}

/* The TCP pseudo-header's sum (RFC 793 / RFC 8200 §8.1) for a segment of tcp_len bytes. */
static __always_inline __u32 tcp_pseudo_sum(struct pkt_info *pi, __u32 tcp_len)
{
	__be32 tail[2] = {bpf_htonl(tcp_len), bpf_htonl(PROTO_TCP)};
	__u32 alen = pi->family == 6 ? 16 : 4;
	long a, b;
	if (alen == 16) {
		a = bpf_csum_diff(0, 0, (__be32 *)pi->saddr, 16, 0);
		b = bpf_csum_diff(0, 0, (__be32 *)pi->daddr, 16, 0);
	} else {
		a = bpf_csum_diff(0, 0, (__be32 *)pi->saddr, 4, 0);
		b = bpf_csum_diff(0, 0, (__be32 *)pi->daddr, 4, 0);
	}
	long t = bpf_csum_diff(0, 0, tail, sizeof(tail), 0);
	if (a < 0 || b < 0 || t < 0)
		return 0;
	return csum_fold16((__u64)(__u32)a + (__u32)b + (__u32)t);
}

/* The segment's DSS option, decoded into m: 1, or 0 without one, -1 if the options are
 * malformed. A loop over the option list (not mptcp_opts.h's unrolled walk: this program must
 * stay under BCC's 4096-instruction limit), one option per iteration, bounded by the 40 bytes
 * of option space; every read is a masked index into the copy. The position lives in the map
 * value (*pos), not in a register: an exact position per iteration would keep the verifier
 * from merging its states (over a million instructions explored). */
static __always_inline int find_dss(const struct opt_buf *o, __u32 optlen, struct mptcp_opt *m,
				    volatile __u32 *pos)
{
	*pos = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < TCP_OPT_SPACE; i++) {
		__u32 at = *pos;
		if (at >= optlen)
			return 0;
		__u8 kind = rd8(o, at);
		if (kind == TCPOPT_EOL_)
			return 0;
		if (kind == TCPOPT_NOP_) {
			*pos = at + 1;
			continue;
		}
		if (at + 1 >= optlen)
			return -1;
		__u32 len = rd8(o, at + 1);
		if (len < 2 || at + len > optlen)
			return -1;
		if (kind == TCPOPT_MPTCP && len >= 4 && (rd8(o, at + 2) >> 4) == MPTCP_SUB_DSS) {
			m->subtype = MPTCP_SUB_DSS;
			m->len = len;
			m->offset = at;
			return dec_dss(o, at, len, m) == WALK_OK ? 1 : -1;
		}
		*pos = at + len;
	}
	return 0;
}

/* Write the DSS checksum `fixed` (host order) into the option and update the TCP checksum
 * for that change (RFC 1624, as a diff over the aligned TCP-header words that hold the field:
 * the field may sit at an odd offset). For a CHECKSUM_PARTIAL skb bpf_l4_csum_replace leaves
 * the field alone: the checksum is computed later, over the bytes as they are then. */
static __always_inline int write_fix(struct __sk_buff *skb, __u32 tcp_off, __u32 field, __u16 fixed)
{
	__u32 word = field & ~3u; /* offsets from the TCP header */
	__u32 in = field - word;  /* 0..3 */
	__u8 old[8] = {}, new[8] = {};
	__u32 n = in == 3 ? 8 : 4;
	if (n == 8) {
		if (bpf_skb_load_bytes(skb, tcp_off + word, old, 8))
			return -1;
	} else {
		if (bpf_skb_load_bytes(skb, tcp_off + word, old, 4))
			return -1;
	}
	__builtin_memcpy(new, old, 8);
	/* Constant indexes: a computed one becomes pointer arithmetic the verifier refuses. */
	__u8 hi = fixed >> 8, lo = fixed & 0xff;
	switch (in) {
	case 0:
		new[0] = hi;
		new[1] = lo;
		break;
	case 1:
		new[1] = hi;
		new[2] = lo;
		break;
	case 2:
		new[2] = hi;
		new[3] = lo;
		break;
	default:
		new[3] = hi;
		new[4] = lo;
		break;
	}
	long diff;
	if (n == 8)
		diff = bpf_csum_diff((__be32 *)old, 8, (__be32 *)new, 8, 0);
	else
		diff = bpf_csum_diff((__be32 *)old, 4, (__be32 *)new, 4, 0);
	if (diff < 0)
		return -1;
	__be16 be = bpf_htons(fixed);
	if (bpf_skb_store_bytes(skb, tcp_off + field, &be, 2, 0))
		return -1;
	if (bpf_l4_csum_replace(skb, tcp_off + TCP_CHECK_OFF, 0, diff, 0))
		return -1;
	return 0;
}

static __always_inline void note_flow(struct pkt_info *pi, int checked, int fixed, int corrupt,
				      int spanning)
{
	struct flow_key k = {};
	k.family = pi->family;
	k.lport = pi->sport;
	k.rport = pi->dport;
	__builtin_memcpy(k.laddr, pi->saddr, 16);
	__builtin_memcpy(k.raddr, pi->daddr, 16);
	struct dssfix_flow zero = {};
	struct dssfix_flow *f = dssfix_flows.lookup_or_try_init(&k, &zero);
	if (!f)
		return;
	__sync_fetch_and_add(&f->checked, checked);
	__sync_fetch_and_add(&f->fixed, fixed);
	__sync_fetch_and_add(&f->corrupt, corrupt);
	__sync_fetch_and_add(&f->spanning, spanning);
}

static __always_inline void dssfix(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct pkt_info pi = {};
	if (parse_to_tcp(data, data_end, &pi) != 0 || pi.payload == 0)
		return;
	__u64 optlen = pi.opt_len;
	if (optlen > TCP_OPT_SPACE)
		return;
	asm volatile("" : "+r"(optlen));
	if (optlen < 4)
		return;
	__u32 zero = 0;
	struct dssfix_scratch *sc = dssfix_scratch.lookup(&zero);
	if (!sc)
		return;
	struct opt_buf ob = {};
	__u32 opt_off = pi.tcp_off + 20;
	if (bpf_skb_load_bytes(skb, opt_off, ob.b, optlen))
		return;
	struct mptcp_opt *m = &sc->m;
	__builtin_memset(m, 0, sizeof(*m));
	if (find_dss(&ob, optlen, m, &sc->at) != 1)
		return;
	if (!(m->present & HAS_KEY_B) || !(m->present & HAS_CHECKSUM))
		return; /* no mapping, or checksums are off on this connection */
	if (!(m->present & DSN64) || (m->flags & DSS_FLAG_F) || m->data_len == 0) {
		count(DF_SKIPPED);
		return;
	}
	/* Only a mapping that starts and ends in this segment: the receiver checks a mapping
	 * against the checksum of its first segment, which may already have gone by. */
	if (m->data_len != pi.payload) {
		count(DF_SPANNING);
		note_flow(&pi, 0, 0, 0, 1);
		return;
	}
	count(DF_CHECKED);
	__u32 tcp_hlen = 20 + optlen;
	__u32 payload_sum = 0;
	if (skb_sum(skb, pi.tcp_off + tcp_hlen, pi.payload, sc, &payload_sum)) {
		count(DF_SKIPPED);
		return;
	}
	__u32 zeroed = csum_add16(payload_sum, csum_pseudo(m->key_b, m->word, m->data_len, 0));
	__u16 want = bpf_ntohs((__u16)~zeroed); /* sums are in memory order, the option in host */
	if (want == m->checksum) {
		count(DF_OK);
		note_flow(&pi, 1, 0, 0, 0);
		return;
	}
	/* Deliberate or corruption? The TCP checksum over the segment as it is now says. */
	__u32 hdr_sum = 0;
	if (skb_sum(skb, pi.tcp_off, tcp_hlen, sc, &hdr_sum)) {
		count(DF_SKIPPED);
		return;
	}
	__u32 tcp_len = tcp_hlen + pi.payload;
	__u32 pseudo = tcp_pseudo_sum(&pi, tcp_len);
	__u32 total = csum_add16(csum_add16(hdr_sum, payload_sum), pseudo);
	__u16 check = 0; /* memory order, like the sums */
	if (bpf_skb_load_bytes(skb, pi.tcp_off + TCP_CHECK_OFF, &check, 2))
		return;
	int partial = 0;
	if (total != 0xffff) {
		/* CHECKSUM_PARTIAL (a local or veth sender's offload): the field holds only the
		 * pseudo-header's sum; the checksum is computed after us, over the bytes then. */
		if (check != pseudo) {
			count(DF_CORRUPT);
			note_flow(&pi, 1, 0, 1, 0);
			return;
		}
		partial = 1;
	}
	/* The DSS option's checksum is its last two bytes. */
	__u32 field = 20 + m->offset + m->len - 2;
	if (write_fix(skb, pi.tcp_off, field, want)) {
		count(DF_SKIPPED);
		return;
	}
	count(partial ? DF_FIXED_PARTIAL : DF_FIXED);
	note_flow(&pi, 1, 1, 0, 0);
}

/* tc egress: never drops or delays; rewrites only as described above. TC_ACT_UNSPEC, not
 * TC_ACT_OK: in direct-action mode OK ends the filter chain, and the datapath's egress filter
 * (the next priority) must still see every packet. At the chain's end UNSPEC passes it. */
int mptcp_dssfix(struct __sk_buff *skb)
{
	dssfix(skb);
	return TC_ACT_UNSPEC;
}
