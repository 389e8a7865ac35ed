/* baseline_xdp.c: the yardstick for bench.datapath: count the packet per CPU, return XDP_PASS. */
#include <uapi/linux/bpf.h>

/* packets: index 0 -> __u64 packets seen, per CPU. Written here; read by nobody. */
BPF_PERCPU_ARRAY(packets, __u64, 1);

int count_pass(struct xdp_md *ctx)
{
	__u32 idx = 0;
	__u64 *v = packets.lookup(&idx);
	if (v)
		*v += 1;
	return XDP_PASS;
}
