/* abi.h: structs, enums and sizes shared by the BPF programs and the controller.
 * No maps, no helpers. Mirror: controller/abi.py — update both (tests/unit/test_abi.py
 * parses this file and compares every constant and struct layout with the mirror). */
#ifndef MPTCPCTL_ABI_H
#define MPTCPCTL_ABI_H

/* Bump on any change below; pins live under /sys/fs/bpf/mptcpctl/v<ABI>/. */
#define MPTCPCTL_ABI 3

/* TCP option kind assigned to MPTCP (RFC 8684 §3). */
#define TCPOPT_MPTCP 30
/* TCP option space: 60-byte maximum header minus the 20-byte fixed part. */
#define TCP_OPT_SPACE 40
/* Most MPTCP options one segment can hold: 40 bytes / 3 (shortest, MP_PRIO). */
#define MAX_DECODED_OPTS 13
/* IPv6 extension headers skipped before giving up on finding TCP. */
#define MAX_IPV6_EXT_HDRS 4
/* Bytes kept of an option's variable part: a 20-byte HMAC, 37 REMOVE_ADDR ids, raw UNKNOWN. */
#define OPT_DATA_LEN 40

/* MPTCP option subtypes as on the wire (RFC 8684 §3, IANA "MPTCP Option Subtypes"). */
enum mptcp_subtype {
	MPTCP_SUB_CAPABLE = 0,
	MPTCP_SUB_JOIN = 1,
	MPTCP_SUB_DSS = 2,
	MPTCP_SUB_ADD_ADDR = 3,
	MPTCP_SUB_REMOVE_ADDR = 4,
	MPTCP_SUB_PRIO = 5,
	MPTCP_SUB_FAIL = 6,
	MPTCP_SUB_FASTCLOSE = 7,
	MPTCP_SUB_TCPRST = 8,
	/* 0x9..0xf: not decoded; counted and exported as UNKNOWN. */
	MPTCP_SUB_UNKNOWN = 9,
	MPTCP_SUB_SLOTS = 10,
};

/* struct mptcp_opt.present: which fields of the decoded option are valid. */
enum opt_present {
	HAS_KEY_A = 1 << 0,    /* key_a */
	HAS_KEY_B = 1 << 1,    /* key_b */
	HAS_WORD = 1 << 2,     /* word */
	HAS_NONCE = 1 << 3,    /* nonce */
	HAS_DATA_LEN = 1 << 4, /* data_len */
	HAS_CHECKSUM = 1 << 5, /* checksum */
	HAS_PORT = 1 << 6,     /* port */
	HAS_ADDR_ID = 1 << 7,  /* addr_id */
	HAS_DATA = 1 << 8,     /* data[0..n) */
	HAS_ADDR = 1 << 9,     /* addr (4 or 16 bytes, by version) */
	ACK64 = 1 << 10,       /* DSS: data ack was 8 bytes */
	DSN64 = 1 << 11,       /* DSS: DSN was 8 bytes */
};

/* DSS flag bits (RFC 8684 §3.3): F m M a A from bit 4 down to bit 0. */
#define DSS_FLAG_A 0x01 /* data ACK present */
#define DSS_FLAG_a 0x02 /* data ACK is 8 bytes */
#define DSS_FLAG_M 0x04 /* mapping (DSN, subflow seq, data-level length) present */
#define DSS_FLAG_m 0x08 /* DSN is 8 bytes */
#define DSS_FLAG_F 0x10 /* DATA_FIN */

/* One decoded MPTCP option. Integers in host byte order; addr/data keep wire bytes.
 * Field use by subtype:
 *   MP_CAPABLE   flags, version, key_a=sender key, key_b=receiver key, data_len, checksum
 *   MP_JOIN      flags(B), addr_id, word=token, nonce, data=HMAC (8 or 20 bytes, n)
 *   DSS          flags, key_a=data ack, key_b=DSN, word=subflow seq, data_len, checksum
 *   ADD_ADDR     flags(E), version(4/6), addr_id, addr, port, data=HMAC (8 bytes, n)
 *   REMOVE_ADDR  data=address ids (n)
 *   MP_PRIO      flags(B), addr_id when present
 *   MP_FAIL      key_b=DSN
 *   MP_FASTCLOSE key_a=receiver key
 *   MP_TCPRST    flags(U V W T), reason
 *   UNKNOWN      data=the whole option, kind and length included (n) */
struct mptcp_opt {
	__u8 subtype;  /* 4-bit wire subtype */
	__u8 len;      /* the option's length byte */
	__u8 flags;    /* the subtype's flag bits, as on the wire */
	__u8 version;  /* MP_CAPABLE version; ADD_ADDR address family 4 or 6 */
	__u8 addr_id;  /* MP_JOIN / ADD_ADDR / MP_PRIO address id */
	__u8 n;        /* bytes valid in data[] */
	__u16 present; /* enum opt_present bits */
	__u64 key_a;
	__u64 key_b;
	__u32 word;
	__u32 nonce;
	__u16 data_len;
	__u16 checksum;
	__u16 port;
	__u8 reason; /* MP_TCPRST reason code */
	__u8 offset; /* offset of the option from the start of the TCP options */
	__u8 addr[16];
	__u8 data[OPT_DATA_LEN];
};

/* A subflow as the host sees it: local and remote end. Addresses are 16 bytes (IPv4 in the
 * first 4, rest zero), ports in network byte order. */
struct flow_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
};

/* struct subflow_stats.flags */
enum subflow_flags {
	SF_HAVE_LOCAL_KEY = 1 << 0,
	SF_HAVE_REMOTE_KEY = 1 << 1,
	SF_HAVE_TOKEN = 1 << 2,        /* token (the local connection token) is set */
	SF_HAVE_REMOTE_TOKEN = 1 << 3, /* remote_token (from an outgoing MP_JOIN SYN) is set */
	SF_JOIN = 1 << 4,              /* subflow began with MP_JOIN */
	SF_BACKUP = 1 << 5,            /* last MP_JOIN/MP_PRIO said backup */
	SF_CHECKSUM = 1 << 6,          /* MP_CAPABLE carried the checksum-required flag */
	SF_HAVE_PEER_ISN = 1 << 7,     /* peer_isn is set (from the peer's SYN seen at ingress) */
};

/* struct dss_csum.state: where the ingress DSS checksum check is in the current mapping. */
enum dss_csum_state {
	CSUM_IDLE = 0, /* no mapping open */
	CSUM_OPEN = 1, /* a mapping's bytes are being summed */
	CSUM_SKIP = 2, /* this mapping cannot be verified (counted once); wait for the next */
	CSUM_DONE = 3, /* this mapping was checked; a repeat of it is a retransmission */
};

/* The DSS checksum check of one subflow's incoming data (RFC 8684 §3.3.1): the mapping being
 * summed and the verdicts so far. Written by the mptcp_dss_csum XDP program only. */
struct dss_csum {
	__u64 dsn;         /* the open mapping: 64-bit data sequence number */
	__u32 start_seq;   /* absolute TCP sequence number of its first byte (peer ISN + ssn) */
	__u32 subflow_seq; /* relative subflow sequence number, as on the wire */
	__u32 done;        /* bytes of the mapping summed so far */
	__u32 sum;         /* their ones'-complement sum, 16 bits, in memory byte order */
	__u16 data_len;    /* data-level length, as on the wire */
	__u16 csum;        /* the checksum the mapping carried (host order) */
	__u8 state;        /* enum dss_csum_state */
	__u8 pad[3];
	__u64 verified;     /* mappings whose checksum matched */
	__u64 bad;          /* mappings whose checksum did not match (EV_DSS_CSUM_BAD) */
	__u64 unverifiable; /* mappings not checked: no ISN, 4-byte DSN, data missed, frags */
};

/* Per-direction counters of one subflow; [0] ingress (XDP), [1] egress (tc). */
struct dir_stats {
	__u64 packets;      /* segments (GSO super-packets count as their gso_segs) */
	__u64 bytes;        /* TCP payload bytes, as ss -ti bytes_sent/bytes_received count */
	__u64 dss_mappings; /* DSS options carrying a mapping */
	__u64 data_retrans; /* mappings whose DSN was below the highest seen */
	__u64 dsn_highest;  /* highest DSN seen (8-byte DSNs, or the 4-byte value widened) */
};

/* Value of the subflows map. */
struct subflow_stats {
	struct dir_stats dir[2];
	__u64 opts[MPTCP_SUB_SLOTS]; /* MPTCP options seen, by subtype, both directions */
	__u64 local_key;             /* from MP_CAPABLE */
	__u64 remote_key;
	__u64 first_ns; /* CLOCK_MONOTONIC ns, tick resolution, of first and last packet */
	__u64 last_ns;
	__u32 token; /* local connection token (ss -M), see SF_HAVE_TOKEN */
	__u32 remote_token;
	__u32 flags;     /* enum subflow_flags */
	__u32 ifindex;   /* interface of the last packet */
	__u32 token_gen; /* config.token_gen + 1 when subflow_token was last consulted; 0 never */
	__u32 peer_isn;  /* the peer's initial sequence number, see SF_HAVE_PEER_ISN */
	struct dss_csum csum; /* incoming DSS checksums, when the connection uses them */
	/* Per direction: 1 once what it carried before its connection was known went into
	 * conns (each direction has one writer, so no flag of the other is lost). */
	__u32 conn_summed[2];
};

/* Value of the conns map (key: local token). */
struct conn_stats {
	struct dir_stats dir[2];
	__u64 mp_fail;   /* packets carrying MP_FAIL */
	__u64 fastclose; /* packets carrying MP_FASTCLOSE */
	__u64 tcprst;    /* packets carrying MP_TCPRST */
	__u64 first_ns;
	__u64 last_ns;
	__u32 flags; /* SF_CHECKSUM: the connection uses DSS checksums (its MP_CAPABLE said so) */
	__u32 pad;
};

/* Global per-CPU counters: index of the counters map. */
enum counter_idx {
	CNT_PACKETS = 0,                /* every packet the programs saw */
	CNT_TCP = 1,                    /* TCP segments parsed */
	CNT_MPTCP = 2,                  /* segments with at least one MPTCP option */
	CNT_MALFORMED = 3,              /* packets whose headers or options broke the rules */
	CNT_UNKNOWN = 4,                /* MPTCP options of an unknown subtype */
	CNT_EVENTS_LOST = 5,            /* ring buffer full */
	CNT_NOT_PARSED = 6,             /* non-IP, non-TCP, fragments: passed untouched */
	CNT_OPT_BASE = 8,               /* + enum mptcp_subtype: options seen by subtype */
	CNT_DSS_CSUM_OK = 18,           /* DSS mappings whose checksum matched */
	CNT_DSS_CSUM_BAD = 19,          /* DSS mappings whose checksum did not match */
	CNT_DSS_CSUM_UNVERIFIABLE = 20, /* DSS mappings with a checksum that could not be checked */
	CNT_MAX = 21,
};

/* Ring buffer event types. */
enum event_type {
	EV_MPC_KEYS = 1, /* MP_CAPABLE carrying a key (SYN/ACK, third ACK, first data) */
	EV_JOIN_SYN = 2, /* MP_JOIN SYN: token + nonce */
	EV_ADD_ADDR = 3,
	EV_REMOVE_ADDR = 4,
	EV_MP_PRIO = 5,
	EV_MP_FAIL = 6,
	EV_FASTCLOSE = 7,
	EV_TCPRST = 8,
	EV_MALFORMED = 9, /* opt holds the option decoded so far, if any */
	/* A DSS mapping's checksum did not match: opt is the mapping (key_b DSN, word subflow
	 * seq, data_len, checksum as received) and opt.nonce the checksum computed. */
	EV_DSS_CSUM_BAD = 10,
};

/* Direction of a packet: which program saw it. */
enum direction {
	DIR_INGRESS = 0,
	DIR_EGRESS = 1,
};

struct event {
	__u32 type; /* enum event_type */
	__u32 ifindex;
	__u8 dir; /* enum direction */
	__u8 tcp_flags;
	__u8 pad[6];
	__u64 ts_ns;
	struct flow_key flow;
	struct mptcp_opt opt;
};

/* What the program decoded from one packet; written to the decode_out map only when
 * config.export_decode is set (mptcpctl decode). Addresses and ports in wire order. */
struct decode_result {
	__u8 parsed; /* 1 when an IPv4/IPv6 TCP header was found */
	__u8 malformed;
	__u8 family;
	__u8 tcp_flags; /* FIN SYN RST PSH ACK URG ECE CWR from bit 0 */
	__u8 nopts;     /* options decoded in opts[] */
	__u8 nspans;    /* MPTCP options found by the walk (span_at/span_len) */
	__u16 sport;    /* host byte order */
	__u16 dport;
	__u16 payload; /* TCP payload bytes by the IP length fields */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 span_at[16]; /* offset and length of each MPTCP option found by the walk */
	__u8 span_len[16];
	__u8 pad[4];
	struct mptcp_opt opts[MAX_DECODED_OPTS];
};

/* Value of the config map (one entry, written by the controller). */
struct config {
	__u32 export_decode; /* 1: write struct decode_result for each packet */
	__u32 token_gen;     /* bumped by the controller after it writes subflow_token entries */
};

/* What the sockops program records of one MPTCP subflow's TCP state (value of tcp_state,
 * keyed by struct flow_key): the coupled congestion controller's input. */
struct sf_tcp_state {
	__u64 bytes_acked; /* tcpi_bytes_acked */
	__u64 updated_ns;  /* bpf_ktime_get_ns() of the last record */
	__u32 snd_cwnd;    /* packets */
	__u32 snd_ssthresh;
	__u32 srtt_us; /* smoothed RTT in µs */
	__u32 mss;
	__u32 packets_out;
	__u32 total_retrans; /* segments retransmitted since the start */
	__u32 clamp;         /* window clamp last applied (packets), 0 none */
	__u32 state;         /* TCP state, BPF_TCP_* */
};

/* Value of the cc_config map (one entry, written by the controller). */
struct cc_config {
	__u64 netns_cookie; /* only sockets of this network namespace are followed */
};

/* The clamp that means "no clamp": the largest value TCP_BPF_SNDCWND_CLAMP accepts. */
#define CLAMP_NONE 0x7fffffff

#endif
