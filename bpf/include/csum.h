/* csum.h: ones'-complement sums for the DSS checksum (RFC 8684 §3.3.1): payload bytes straight
 * from the packet with bpf_csum_diff in bounded chunks, 16-bit folding, the odd-offset byte
 * swap, and the DSS pseudo-header. Sums stay in memory byte order throughout. No maps here. */
#ifndef MPTCPCTL_CSUM_H
#define MPTCPCTL_CSUM_H

#include "abi.h"
#include "parse.h"

/* bpf_csum_diff takes at most 512 bytes per call (its scratch area is one BPF stack). */
#define CSUM_CHUNK 512
/* Chunks per segment: 8 x 512 = 4096 bytes, more than a 1500-byte MTU or the linear part
 * of any XDP frame (one page); payloads larger than CSUM_MAX_BYTES are unverifiable. */
#define CSUM_MAX_CHUNKS 8
/* Chunks summed in place before copying takes over: a 1500-byte MTU's whole chunks. */
#define CSUM_DIRECT_CHUNKS 2
#define CSUM_MAX_BYTES (CSUM_CHUNK * CSUM_MAX_CHUNKS + CSUM_CHUNK - 1)
#define TCP_FLAG_SYN 0x02

/* A 32-bit partial sum folded to 16 bits (not complemented). */
static __always_inline __u32 csum_fold16(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s;
}

static __always_inline __u32 csum_add16(__u32 a, __u32 b)
{
	return csum_fold16((__u64)a + b);
}

/* A sum of bytes that start at an odd offset of the covered data: swap its two bytes. */
static __always_inline __u32 csum_swap16(__u32 s)
{
	return ((s & 0xff) << 8) | (s >> 8);
}

/* Room for one chunk copied out of the packet, plus three bytes of zero padding. */
struct csum_buf {
	__u8 b[CSUM_CHUNK + 4];
};

/* The 16-bit sum of n payload bytes from packet pointer p (memory order, as if p were at an
 * even offset); -1 if n is too large or the bytes are not in the packet. Whole 512-byte
 * chunks in the linear part are summed in place (unrolled: each chunk's packet offset is a
 * constant the verifier can follow); the rest, the tail and anything in XDP frags, is copied
 * into buf with bpf_xdp_load_bytes, a chunk at a time, and summed there. */
static __always_inline int csum_payload(struct xdp_md *ctx, void *data, void *p, void *end, __u32 n,
					struct csum_buf *buf, __u32 *out)
{
	__u64 s = 0;
	long ret;
	if (n > CSUM_MAX_BYTES)
		return -1;
#pragma unroll
	for (int i = 0; i < CSUM_DIRECT_CHUNKS; i++) {
		if (n < CSUM_CHUNK || p + CSUM_CHUNK > end)
			break;
		ret = bpf_csum_diff(0, 0, p, CSUM_CHUNK, (__u32)s);
		if (ret < 0)
			return -1;
		s = ret;
		p += CSUM_CHUNK;
		n -= CSUM_CHUNK;
	}
	__u32 off = p - data;
#pragma clang loop unroll(disable)
	for (int i = 0; i <= CSUM_MAX_CHUNKS; i++) {
		if (n == 0)
			break;
		__u64 last = (n > CSUM_CHUNK ? CSUM_CHUNK : n) - 1;
		/* 1..CSUM_CHUNK as one unsigned test clang cannot fuse away from the verifier. */
		asm volatile("" : "+r"(last));
		if (last >= CSUM_CHUNK)
			return -1;
		__u32 len = last + 1;
		if (bpf_xdp_load_bytes(ctx, off, buf->b, len))
			return -1;
		/* Only the last piece can end off a word: pad it with zeroes, as the checksum
		 * pads an odd length. */
		buf->b[len] = 0;
		buf->b[len + 1] = 0;
		buf->b[len + 2] = 0;
		__u32 words = (len + 3) & ~3u;
		ret = bpf_csum_diff(0, 0, (__be32 *)buf->b, words, (__u32)s);
		if (ret < 0)
			return -1;
		s = ret;
		off += len;
		n -= len;
	}
	if (n)
		return -1;
	*out = csum_fold16(s);
	return 0;
}

/* The DSS pseudo-header as it is summed (RFC 8684 §3.3.1): 64-bit DSN, relative subflow
 * sequence number, data-level length, and the checksum field (zero when computing; the
 * received value when checking, so that a match sums to 0xffff). */
struct dss_pseudo_hdr {
	__be64 dsn;
	__be32 subflow_seq;
	__be16 data_len;
	__be16 csum;
};

static __always_inline __u32 csum_pseudo(__u64 dsn, __u32 ssn, __u16 len, __u16 csum)
{
	struct dss_pseudo_hdr h = {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
		.dsn = __builtin_bswap64(dsn),
#else
		.dsn = dsn,
#endif
		.subflow_seq = bpf_htonl(ssn),
		.data_len = bpf_htons(len),
		.csum = bpf_htons(csum),
	};
	long ret = bpf_csum_diff(0, 0, (__be32 *)&h, sizeof(h), 0);
	return ret < 0 ? 0 : csum_fold16(ret);
}

/* Ethernet to TCP again, for the tail-called program: the TCP header and the first payload
 * byte as packet pointers (the main program already proved the packet well-formed). */
static __always_inline struct tcphdr *csum_parse(void *data, void *data_end, struct pkt_info *pi,
						 void **payload)
{
	struct cursor c = {.pos = data, .end = data_end};
	int proto = parse_eth(&c);
	if (proto == ETH_P_IPV4)
		proto = parse_ipv4(&c, pi);
	else if (proto == ETH_P_IPV6_)
		proto = parse_ipv6(&c, pi);
	else
		return 0;
	if (proto != PROTO_TCP)
		return 0;
	struct tcphdr *th = c.pos;
	if (parse_tcp(&c, data, pi) != 0)
		return 0;
	if ((void *)(th + 1) > data_end)
		return 0;
	*payload = c.pos;
	return th;
}

#endif
