/* baseline_xdp.c: the yardstick for bench.datapath: count the packet per CPU, return XDP_PASS;
 * and, for --breakdown, the same plus one hit in an LRU hash keyed like the datapath's
 * subflows: what keeping any state per subflow costs at the least. */
#include <uapi/linux/bpf.h>

/* packets: index 0 -> __u64 packets seen, per CPU. Written here; read by nobody. */
BPF_PERCPU_ARRAY(packets, __u64, 1);

/* flows: a 40-byte key (struct flow_key's size) -> __u64 packets. Written and read here. */
struct key40 {
	__u32 w[10];
};
BPF_TABLE("lru_hash", struct key40, __u64, flows, 1024);

static __always_inline void count(void)
{
	__u32 idx = 0;
	__u64 *v = packets.lookup(&idx);
	if (v)
		*v += 1;
}

int count_pass(struct xdp_md *ctx)
{
	count();
	return XDP_PASS;
}

int count_lookup_pass(struct xdp_md *ctx)
{
	count();
	struct key40 k = {};
	k.w[0] = 4;
	k.w[1] = ctx->ingress_ifindex;
	__u64 *v = flows.lookup(&k);
	if (v) {
		*v += 1;
	} else {
		__u64 one = 1;
		flows.update(&k, &one);
	}
	return XDP_PASS;
}
