/* mptcp_opts.h: the bounded TCP option walk and one decoder per MPTCP subtype (RFC 8684 §3).
 * Works on a copy of the option bytes (struct opt_buf) so every read is a masked index into a
 * fixed buffer; a field is read only after the option's length proves it present. */
#ifndef MPTCPCTL_MPTCP_OPTS_H
#define MPTCPCTL_MPTCP_OPTS_H

#include "abi.h"

#define TCPOPT_EOL_ 0
#define TCPOPT_NOP_ 1
/* Buffer size: a power of two above TCP_OPT_SPACE, so (i & OPT_BUF_MASK) stays inside. */
#define OPT_BUF_SIZE 64
#define OPT_BUF_MASK (OPT_BUF_SIZE - 1)

/* Walk results. */
#define WALK_OK 0
#define WALK_MALFORMED 1

/* Aligned so that it can be filled and read a 4-byte word at a time (the verifier refuses
 * misaligned stack access). */
struct opt_buf {
	__u8 b[OPT_BUF_SIZE];
} __attribute__((aligned(8)));

static __always_inline __u8 rd8(const struct opt_buf *o, __u32 i)
{
	/* The barrier keeps the mask: clang would drop it as redundant, the verifier needs it. */
	asm volatile("" : "+r"(i));
	return o->b[i & OPT_BUF_MASK];
}

static __always_inline __u16 rd16(const struct opt_buf *o, __u32 i)
{
	return ((__u16)rd8(o, i) << 8) | rd8(o, i + 1);
}

static __always_inline __u32 rd32(const struct opt_buf *o, __u32 i)
{
	return ((__u32)rd16(o, i) << 16) | rd16(o, i + 2);
}

static __always_inline __u64 rd64(const struct opt_buf *o, __u32 i)
{
	return ((__u64)rd32(o, i) << 32) | rd32(o, i + 4);
}

/* Copy a constant number of bytes (unrolled: no loop for the verifier to walk). Variable-length
 * fields copy the whole OPT_DATA_LEN and say in mptcp_opt.n how many bytes are theirs. */
static __always_inline void copy_bytes(__u8 *dst, const struct opt_buf *o, __u32 i, const __u32 n)
{
#pragma clang loop unroll(full)
	for (__u32 k = 0; k < n; k++)
		dst[k] = rd8(o, i + k);
}

/* MP_CAPABLE: 4 (SYN), 12 (SYN/ACK; v0 SYN), 20 (third ACK), 22 (+ data-level length),
 * 24 (+ DSS checksum). */
static __always_inline int dec_capable(const struct opt_buf *o, __u32 at, __u32 len,
				       struct mptcp_opt *m)
{
	if (len != 4 && len != 12 && len != 20 && len != 22 && len != 24)
		return WALK_MALFORMED;
	m->version = rd8(o, at + 2) & 0x0f;
	m->flags = rd8(o, at + 3);
	if (len >= 12) {
		m->key_a = rd64(o, at + 4);
		m->present |= HAS_KEY_A;
	}
	if (len >= 20) {
		m->key_b = rd64(o, at + 12);
		m->present |= HAS_KEY_B;
	}
	if (len >= 22) {
		m->data_len = rd16(o, at + 20);
		m->present |= HAS_DATA_LEN;
	}
	if (len == 24) {
		m->checksum = rd16(o, at + 22);
		m->present |= HAS_CHECKSUM;
	}
	return WALK_OK;
}

/* MP_JOIN: SYN 12 (token, nonce), SYN/ACK 16 (64-bit HMAC, nonce), ACK 24 (160-bit HMAC). */
static __always_inline int dec_join(const struct opt_buf *o, __u32 at, __u32 len,
				    struct mptcp_opt *m)
{
	if (len == 12) {
		m->flags = rd8(o, at + 2) & 0x01;
		m->addr_id = rd8(o, at + 3);
		m->word = rd32(o, at + 4);
		m->nonce = rd32(o, at + 8);
		m->present |= HAS_ADDR_ID | HAS_WORD | HAS_NONCE;
	} else if (len == 16) {
		m->flags = rd8(o, at + 2) & 0x01;
		m->addr_id = rd8(o, at + 3);
		copy_bytes(m->data, o, at + 4, 8);
		m->n = 8;
		m->nonce = rd32(o, at + 12);
		m->present |= HAS_ADDR_ID | HAS_DATA | HAS_NONCE;
	} else if (len == 24) {
		copy_bytes(m->data, o, at + 4, 20);
		m->n = 20;
		m->present |= HAS_DATA;
	} else {
		return WALK_MALFORMED;
	}
	return WALK_OK;
}

/* DSS: the flags decide the length exactly; a mapping may carry a 2-byte checksum. */
static __always_inline int dec_dss(const struct opt_buf *o, __u32 at, __u32 len,
				   struct mptcp_opt *m)
{
	__u8 f = rd8(o, at + 3) & 0x1f;
	__u32 need = 4, i = at + 4;
	m->flags = f;
	if (f & DSS_FLAG_A)
		need += (f & DSS_FLAG_a) ? 8 : 4;
	if (f & DSS_FLAG_M)
		need += ((f & DSS_FLAG_m) ? 8 : 4) + 4 + 2;
	if (len != need && !((f & DSS_FLAG_M) && len == need + 2))
		return WALK_MALFORMED;
	if (f & DSS_FLAG_A) {
		if (f & DSS_FLAG_a) {
			m->key_a = rd64(o, i);
			m->present |= ACK64;
			i += 8;
		} else {
			m->key_a = rd32(o, i);
			i += 4;
		}
		m->present |= HAS_KEY_A;
	}
	if (f & DSS_FLAG_M) {
		if (f & DSS_FLAG_m) {
			m->key_b = rd64(o, i);
			m->present |= DSN64;
			i += 8;
		} else {
			m->key_b = rd32(o, i);
			i += 4;
		}
		m->word = rd32(o, i);
		m->data_len = rd16(o, i + 4);
		m->present |= HAS_KEY_B | HAS_WORD | HAS_DATA_LEN;
		if (len == need + 2) {
			m->checksum = rd16(o, i + 6);
			m->present |= HAS_CHECKSUM;
		}
	}
	return WALK_OK;
}

/* ADD_ADDR (v1): E flag; IPv4 8/10 or IPv6 20/22 (+2 port) plus an 8-byte HMAC unless E. */
static __always_inline int dec_add_addr(const struct opt_buf *o, __u32 at, __u32 len,
					struct mptcp_opt *m)
{
	__u8 echo = rd8(o, at + 2) & 0x01;
	__u32 base = len, alen;
	if (!echo)
		base -= 8; /* the HMAC; a too-short len wraps and fails below */
	if (base == 8 || base == 10)
		alen = 4;
	else if (base == 20 || base == 22)
		alen = 16;
	else
		return WALK_MALFORMED;
	m->flags = echo;
	m->version = alen == 4 ? 4 : 6;
	m->addr_id = rd8(o, at + 3);
	if (alen == 4)
		copy_bytes(m->addr, o, at + 4, 4);
	else
		copy_bytes(m->addr, o, at + 4, 16);
	m->present |= HAS_ADDR_ID | HAS_ADDR;
	if (base == 4 + alen + 2) {
		m->port = rd16(o, at + 4 + alen);
		m->present |= HAS_PORT;
	}
	if (!echo) {
		copy_bytes(m->data, o, at + base, 8);
		m->n = 8;
		m->present |= HAS_DATA;
	}
	return WALK_OK;
}

/* REMOVE_ADDR: one or more address ids after the subtype byte. */
static __always_inline int dec_remove_addr(const struct opt_buf *o, __u32 at, __u32 len,
					   struct mptcp_opt *m)
{
	if (len < 4)
		return WALK_MALFORMED;
	m->n = len - 3;
	copy_bytes(m->data, o, at + 3, OPT_DATA_LEN);
	m->present |= HAS_DATA;
	return WALK_OK;
}

/* MP_PRIO: 3 (this subflow) or 4 (with address id). */
static __always_inline int dec_prio(const struct opt_buf *o, __u32 at, __u32 len,
				    struct mptcp_opt *m)
{
	if (len != 3 && len != 4)
		return WALK_MALFORMED;
	m->flags = rd8(o, at + 2) & 0x01;
	if (len == 4) {
		m->addr_id = rd8(o, at + 3);
		m->present |= HAS_ADDR_ID;
	}
	return WALK_OK;
}

/* MP_FAIL (12): 64-bit DSN. MP_FASTCLOSE (12): receiver's key. */
static __always_inline int dec_fail_fastclose(const struct opt_buf *o, __u32 at, __u32 len,
					      struct mptcp_opt *m)
{
	if (len != 12)
		return WALK_MALFORMED;
	if (m->subtype == MPTCP_SUB_FAIL) {
		m->key_b = rd64(o, at + 4);
		m->present |= HAS_KEY_B;
	} else {
		m->key_a = rd64(o, at + 4);
		m->present |= HAS_KEY_A;
	}
	return WALK_OK;
}

/* MP_TCPRST (4): U V W T flags, reason code. */
static __always_inline int dec_tcprst(const struct opt_buf *o, __u32 at, __u32 len,
				      struct mptcp_opt *m)
{
	if (len != 4)
		return WALK_MALFORMED;
	m->flags = rd8(o, at + 2) & 0x0f;
	m->reason = rd8(o, at + 3);
	return WALK_OK;
}

/* One MPTCP option at offset `at` (kind byte) with length `len` (>= 2, fits the options). */
static __always_inline int dec_mptcp(const struct opt_buf *o, __u32 at, __u32 len,
				     struct mptcp_opt *m)
{
	m->len = len;
	m->offset = at;
	if (len < 3) {
		m->subtype = MPTCP_SUB_UNKNOWN;
		return WALK_MALFORMED;
	}
	m->subtype = rd8(o, at + 2) >> 4;
	switch (m->subtype) {
	case MPTCP_SUB_CAPABLE:
		return dec_capable(o, at, len, m);
	case MPTCP_SUB_JOIN:
		return dec_join(o, at, len, m);
	case MPTCP_SUB_DSS:
		return dec_dss(o, at, len, m);
	case MPTCP_SUB_ADD_ADDR:
		return dec_add_addr(o, at, len, m);
	case MPTCP_SUB_REMOVE_ADDR:
		return dec_remove_addr(o, at, len, m);
	case MPTCP_SUB_PRIO:
		return dec_prio(o, at, len, m);
	case MPTCP_SUB_FAIL:
	case MPTCP_SUB_FASTCLOSE:
		return dec_fail_fastclose(o, at, len, m);
	case MPTCP_SUB_TCPRST:
		return dec_tcprst(o, at, len, m);
	default:
		copy_bytes(m->data, o, at, OPT_DATA_LEN);
		m->n = len;
		m->present |= HAS_DATA;
		return WALK_OK;
	}
}

/* Index into per-subtype counters: the wire subtype, or MPTCP_SUB_UNKNOWN. */
static __always_inline __u32 subtype_slot(__u8 subtype)
{
	return subtype < MPTCP_SUB_UNKNOWN ? subtype : MPTCP_SUB_UNKNOWN;
}

/* Pass 1, the bounded option walk: a step per byte position of the option space (unrolled,
 * so every read has a constant offset); only the step where the next option starts acts.
 * EOL ends the walk, NOP advances one byte; a length below 2 or past the options ends it as
 * malformed. Records each MPTCP option's offset and length in r->span_*; decodes nothing.
 * Counts live in the map value, not in registers, so the verifier does not split its states
 * by how many options a packet has. */
static __always_inline int find_mptcp(const struct opt_buf *o, __u32 optlen,
				      struct decode_result *r)
{
	__u32 next = 0;
	r->nspans = 0;
#pragma clang loop unroll(full)
	for (__u32 at = 0; at < TCP_OPT_SPACE; at++) {
		if (at == next && at < optlen) {
			__u8 kind = o->b[at];
			if (kind == TCPOPT_EOL_)
				return WALK_OK;
			if (kind == TCPOPT_NOP_) {
				next = at + 1;
			} else {
				if (at + 1 >= optlen)
					return WALK_MALFORMED;
				__u32 len = o->b[at + 1];
				if (len < 2 || at + len > optlen)
					return WALK_MALFORMED;
				if (kind == TCPOPT_MPTCP) {
					__u32 n = r->nspans;
					if (n >= MAX_DECODED_OPTS)
						return WALK_MALFORMED;
					r->span_at[n & 15] = at;
					r->span_len[n & 15] = len;
					r->nspans = n + 1;
				}
				next = at + len;
			}
		}
	}
	return WALK_OK;
}

/* The option layouts Linux gives nearly every MPTCP segment: one MPTCP option, after NOP NOP
 * timestamps (data and ACKs), after MSS, SACK-permitted, timestamps, NOP, window scale (SYN and
 * SYN/ACK), or alone; then at most 3 bytes of NOP/EOL padding. Records its span as find_mptcp()
 * would and returns 1; returns 0 for anything else, which find_mptcp() decides. Straight code
 * instead of find_mptcp()'s 40 steps (~20 ns). ob is 8-byte aligned: whole words compared. */
static __always_inline int find_common(const struct opt_buf *o, __u32 optlen,
				       struct decode_result *r)
{
	const __u32 *w = (const __u32 *)o->b;
	__u32 at = 0;
	if (optlen >= 16 && w[0] == bpf_htonl(0x0101080a))
		at = 12; /* NOP NOP TS(10) */
	else if (optlen >= 24 && (w[0] & bpf_htonl(0xffff0000)) == bpf_htonl(0x02040000) &&
		 w[1] == bpf_htonl(0x0402080a) &&
		 (w[4] & bpf_htonl(0xffffff00)) == bpf_htonl(0x01030300))
		at = 20; /* MSS(4) SACK_PERM(2) TS(10) NOP WS(3) */
	if (o->b[at & OPT_BUF_MASK] != TCPOPT_MPTCP)
		return 0;
	__u32 len = o->b[(at + 1) & OPT_BUF_MASK];
	__u32 end = at + len;
	if (len < 2 || end > optlen || end + 3 < optlen)
		return 0;
#pragma clang loop unroll(full)
	for (__u32 k = 0; k < 3; k++) {
		if (end + k < optlen && rd8(o, end + k) > TCPOPT_NOP_)
			return 0;
	}
	r->span_at[0] = at;
	r->span_len[0] = len;
	r->nspans = 1;
	return 1;
}

/* Walk `optlen` option bytes and decode the MPTCP options into r->opts[0..r->nopts) (pass 2:
 * one decoder call per option found). r->nopts counts only the options decoded before a
 * malformed one. Returns WALK_MALFORMED if any length broke the rules. */
static __always_inline int walk_options(const struct opt_buf *o, __u32 optlen,
					struct decode_result *r)
{
	int result = WALK_OK;
	if (!find_common(o, optlen, r))
		result = find_mptcp(o, optlen, r);
	r->nopts = 0;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < MAX_DECODED_OPTS; i++) {
		if (i >= r->nspans)
			break;
		struct mptcp_opt *m = &r->opts[i];
		__builtin_memset(m, 0, sizeof(*m));
		if (dec_mptcp(o, r->span_at[i & 15], r->span_len[i & 15], m) != WALK_OK)
			return WALK_MALFORMED;
		r->nopts = i + 1;
	}
	return result;
}

#endif
