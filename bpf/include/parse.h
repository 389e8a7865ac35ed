/* parse.h: a cursor and one bounds-checked parser per header (Ethernet + one 802.1Q tag,
 * IPv4 with options, IPv6 with hop-by-hop/routing/destination-options headers, TCP).
 * Each parser first proves its header fits before data_end, then returns the next protocol,
 * or PARSE_STOP (not ours: pass untouched) or PARSE_BAD (malformed). No maps here. */
#ifndef MPTCPCTL_PARSE_H
#define MPTCPCTL_PARSE_H

#include "abi.h"

#define PARSE_STOP -1
#define PARSE_BAD -2

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define PROTO_TCP 6
#define IP6_HOPOPTS 0
#define IP6_ROUTING 43
#define IP6_DSTOPTS 60
#define IP_OFFMASK 0x1fff
#define IP_MF 0x2000

struct cursor {
	void *pos;
	void *end;
};

/* What the parsers learned about a TCP segment: addresses in wire order. */
struct pkt_info {
	__u8 family;
	__u8 tcp_flags;
	__u16 sport; /* network byte order */
	__u16 dport;
	__u16 payload; /* TCP payload bytes by the IP length fields */
	__u32 seq;     /* TCP sequence number, host order */
	__u32 l3_len;  /* IP total length (IPv6: payload length + 40) */
	__u32 l3_hdrs; /* bytes from the IP header to the end of the extension headers */
	__u32 tcp_off; /* offset of the TCP header from the packet start */
	__u32 opt_len; /* bytes of TCP options */
	void *opts;    /* packet pointer to the first option byte (checked before each use) */
	__u8 saddr[16];
	__u8 daddr[16];
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 proto;
};

/* Ethernet and at most one VLAN tag; returns the EtherType (host order). */
static __always_inline int parse_eth(struct cursor *c)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return PARSE_STOP;
	c->pos = eth + 1;
	__u16 proto = bpf_ntohs(eth->h_proto);
	if (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_) {
		struct vlan_hdr_ *vh = c->pos;
		if ((void *)(vh + 1) > c->end)
			return PARSE_BAD;
		c->pos = vh + 1;
		proto = bpf_ntohs(vh->proto);
	}
	return proto;
}

static __always_inline int parse_ipv4(struct cursor *c, struct pkt_info *pi)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return PARSE_BAD;
	__u32 hlen = ip->ihl * 4;
	if (ip->version != 4 || hlen < sizeof(*ip))
		return PARSE_BAD;
	if (c->pos + hlen > c->end)
		return PARSE_BAD;
	/* Later fragments carry no TCP header. */
	if (bpf_ntohs(ip->frag_off) & IP_OFFMASK)
		return PARSE_STOP;
	pi->family = 4;
	__builtin_memcpy(pi->saddr, &ip->saddr, 4);
	__builtin_memcpy(pi->daddr, &ip->daddr, 4);
	pi->l3_len = bpf_ntohs(ip->tot_len);
	pi->l3_hdrs = hlen;
	c->pos += hlen;
	return ip->protocol;
}

struct ipv6_opt_hdr_ {
	__u8 nexthdr;
	__u8 hdrlen; /* 8-octet units, not counting the first 8 */
};

static __always_inline int parse_ipv6(struct cursor *c, struct pkt_info *pi)
{
	struct ipv6hdr *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end)
		return PARSE_BAD;
	if (ip6->version != 6)
		return PARSE_BAD;
	pi->family = 6;
	__builtin_memcpy(pi->saddr, &ip6->saddr, 16);
	__builtin_memcpy(pi->daddr, &ip6->daddr, 16);
	pi->l3_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	c->pos = ip6 + 1;
	__u32 hdrs = sizeof(*ip6);
	int next = ip6->nexthdr;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_IPV6_EXT_HDRS; i++) {
		if (next != IP6_HOPOPTS && next != IP6_ROUTING && next != IP6_DSTOPTS)
			break;
		struct ipv6_opt_hdr_ *oh = c->pos;
		if ((void *)(oh + 1) > c->end)
			return PARSE_BAD;
		__u32 len = (oh->hdrlen + 1) * 8;
		if (c->pos + len > c->end)
			return PARSE_BAD;
		next = oh->nexthdr;
		c->pos += len;
		hdrs += len;
	}
	pi->l3_hdrs = hdrs;
	return next;
}

/* TCP header; the options stay for the option walk (pi->tcp_off, pi->opt_len). */
static __always_inline int parse_tcp(struct cursor *c, void *data, struct pkt_info *pi)
{
	struct tcphdr *th = c->pos;
	if ((void *)(th + 1) > c->end)
		return PARSE_BAD;
	__u32 hlen = th->doff * 4;
	if (hlen < sizeof(*th) || c->pos + hlen > c->end)
		return PARSE_BAD;
	pi->sport = th->source;
	pi->dport = th->dest;
	pi->tcp_flags = ((__u8 *)th)[13];
	pi->seq = bpf_ntohl(th->seq);
	pi->tcp_off = c->pos - data;
	pi->opt_len = hlen - sizeof(*th);
	pi->opts = th + 1;
	__u32 hdrs = pi->l3_hdrs + hlen;
	pi->payload = pi->l3_len > hdrs ? pi->l3_len - hdrs : 0;
	c->pos += hlen;
	return 0;
}

/* Ethernet to TCP. Returns 0 for a TCP segment, PARSE_STOP or PARSE_BAD otherwise. */
static __always_inline int parse_to_tcp(void *data, void *data_end, struct pkt_info *pi)
{
	struct cursor c = {.pos = data, .end = data_end};
	int proto = parse_eth(&c);
	if (proto == ETH_P_IPV4)
		proto = parse_ipv4(&c, pi);
	else if (proto == ETH_P_IPV6_)
		proto = parse_ipv6(&c, pi);
	else
		return proto == PARSE_BAD ? PARSE_BAD : PARSE_STOP;
	if (proto < 0)
		return proto;
	if (proto != PROTO_TCP)
		return PARSE_STOP;
	return parse_tcp(&c, data, pi);
}

#endif
