/* maps.h: every map of the datapath, each with key, value, who writes and who reads.
 * The controller pins them under /sys/fs/bpf/mptcpctl/v<ABI>/<netns>/ by these names.
 * Maps fed from the wire are LRU and bounded: a flood of new 4-tuples evicts, never grows. */
#ifndef MPTCPCTL_MAPS_H
#define MPTCPCTL_MAPS_H

#include "abi.h"

#ifndef SUBFLOW_ENTRIES
#define SUBFLOW_ENTRIES 65536
#endif
#ifndef CONN_ENTRIES
#define CONN_ENTRIES 16384
#endif
/* Ring buffer size in pages (4 KiB each): 64 pages hold ~1600 events. */
#ifndef EVENT_PAGES
#define EVENT_PAGES 64
#endif

#ifndef MPTCPCTL_SOCKOPS /* the XDP and tc programs' maps */

/* subflows: struct flow_key (local, remote) -> struct subflow_stats.
 * Written by XDP (ingress) and tc (egress) for every segment carrying an MPTCP option;
 * read by the controller and the CLI (status, top, lab tests). */
BPF_TABLE("lru_hash", struct flow_key, struct subflow_stats, subflows, SUBFLOW_ENTRIES);

/* subflow_token: struct flow_key -> __u32 local connection token.
 * Written by XDP from incoming MP_JOIN SYNs and by the controller for subflows whose token it
 * computed from MP_CAPABLE keys; read by XDP/tc once per subflow to tie it to its connection. */
BPF_TABLE("lru_hash", struct flow_key, __u32, subflow_token, SUBFLOW_ENTRIES);

/* conns: __u32 local token -> struct conn_stats, the sum over the connection's subflows.
 * Written by XDP/tc; read by the controller and the CLI. */
BPF_TABLE("lru_hash", __u32, struct conn_stats, conns, CONN_ENTRIES);

/* counters: enum counter_idx -> __u64, per CPU. Written by XDP/tc; read by the CLI (summed). */
BPF_PERCPU_ARRAY(counters, __u64, CNT_MAX);

/* events: struct event records for the controller (keys, joins, address and priority
 * signals, failures, malformed packets). Written by XDP/tc; read by the controller. */
BPF_RINGBUF_OUTPUT(events, EVENT_PAGES);

/* config: one struct config. Written by the controller; read by XDP/tc on every packet. */
BPF_ARRAY(config, struct config, 1);

/* decode_out: one struct decode_result, the last packet's decode when config.export_decode
 * is set. Written by XDP/tc; read by `mptcpctl decode` after each test run. */
BPF_ARRAY(decode_out, struct decode_result, 1);

/* decode_scratch: per-CPU working copy of struct decode_result when export is off.
 * Written and read by XDP/tc within one packet only. */
BPF_PERCPU_ARRAY(decode_scratch, struct decode_result, 1);

/* zero_record: one all-zero record that creates subflows and conns entries (keeps ~330
 * bytes of zeroes off the 512-byte BPF stack). Never written; read by XDP/tc. */
union zero_record {
	struct subflow_stats subflow;
	struct conn_stats conn;
};
BPF_ARRAY(zero_record, union zero_record, 1);

/* clock_cache: per CPU, the coarse clock as read at the current jiffy (struct clock_cache).
 * Written and read by XDP/tc (coarse_now()); nobody else. */
struct clock_cache {
	__u64 jiffies; /* bpf_jiffies64() when ns was read */
	__u64 ns;      /* bpf_ktime_get_coarse_ns() then */
};
BPF_PERCPU_ARRAY(clock_cache, struct clock_cache, 1);

/* dss_csum_progs: slot DSS_CSUM_PROG -> the mptcp_dss_csum XDP program, which mptcp_xdp
 * tail-calls to check DSS checksums (its own verifier budget, not the parser's). Written by
 * the controller at load (Program); pinned with the other maps, because a program array
 * is emptied when its last user-space reference goes. */
#define DSS_CSUM_PROG 0
BPF_PROG_ARRAY(dss_csum_progs, 1);

/* pkt_notes: per CPU, what account() noted of the packet being handled for later steps (in a
 * map, not registers: docs/datapath.md, "What the verifier made us do"). Written by XDP
 * (note_syn_request_csum(); mptcp_xdp clears csum_pending before the tail call); nobody else. */
struct pkt_notes {
	__u32 csum_pending; /* 1: go on to mptcp_dss_csum */
	__u32 syn_again;    /* 1: an incoming SYN with the ISN its subflow held: a retransmission */
};
BPF_PERCPU_ARRAY(pkt_notes, struct pkt_notes, 1);

/* csum_scratch: per CPU, payload bytes copied out of the packet for summing (struct
 * csum_buf, include/csum.h). Written and read by mptcp_dss_csum within one packet. */
BPF_PERCPU_ARRAY(csum_scratch, struct csum_buf, 1);

#else /* the sockops program's maps (bpf/mptcp_sockops.c) */

/* tcp_state: struct flow_key (local, remote) -> struct sf_tcp_state of an MPTCP subflow.
 * Written by the sockops program on establishment and every RTT sample, deleted on close;
 * read by the controller's coupled congestion control loop. */
BPF_TABLE("lru_hash", struct flow_key, struct sf_tcp_state, tcp_state, SUBFLOW_ENTRIES);

/* cwnd_clamp: struct flow_key -> __u32 allowed window (packets; CLAMP_NONE lifts it).
 * Written by the controller; read by the sockops program, which applies a changed value with
 * bpf_setsockopt(TCP_BPF_SNDCWND_CLAMP). */
BPF_TABLE("lru_hash", struct flow_key, __u32, cwnd_clamp, SUBFLOW_ENTRIES);

/* cc_config: one struct cc_config. Written by the controller; read by sockops. */
BPF_ARRAY(cc_config, struct cc_config, 1);
#endif

#endif
