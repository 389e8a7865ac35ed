"""Per-packet cost of the load balancer's XDP program (bpf/mptcp_lb.c) next to a minimal XDP_TX
program (swap MACs, XDP_TX), both with BPF_PROG_TEST_RUN on the same frames, samples
interleaved, medians; prints a table and writes bench/results/lb.json. Run as root:
`python -m bench.lb` (`--quick` for a smoke test). A third program, the encapsulation floor
(push an outer IPv4 header and take it off again, nothing else), shows how much of the ratio
any encapsulating LB pays under test-run. LB_BENCH_CFLAGS="-DNAME ..." builds a variant of
mptcp_lb; --breakdown times bench builds that stop after each stage (-DLB_BENCH_STOP in
bpf/mptcp_lb.c) in the same session: where the time goes (bench/results/lb_breakdown.json)."""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench.common import machine_facts, run_args
from controller import crypto
from controller.errors import DatapathError, MissingFeature
from controller.libbpf import test_run

RESULTS = Path(__file__).resolve().parent / "results" / "lb.json"
BREAKDOWN_RESULTS = RESULTS.with_name("lb_breakdown.json")
GOAL_RATIO = 2.0
EXTRA_CFLAGS = os.environ.get("LB_BENCH_CFLAGS", "").split()
XDP_TX_PROGS = ("baseline", "encap_floor", "lb")
XDP_TX = 3
REPEAT, SAMPLES = 1_000_000, 11
QUICK_REPEAT, QUICK_SAMPLES = 20_000, 3

VIP, VPORT = "198.51.100.80", 80
CLIENT_A, CLIENT_B = "192.0.2.10", "203.0.113.10"
BACKENDS = ["10.20.0.11", "10.20.0.12", "10.20.0.13"]
CLIENT_KEY, SERVER_KEY = 0x0123456789ABCDEF, 0xFEDCBA9876543210

# The yardstick: the least an XDP_TX forwarder does (prove the header fits, swap MACs).
BASELINE = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
int xdp_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	unsigned char tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}

/* The least an IP-in-IP forwarder under test-run does: make room for an outer IPv4 header,
 * write Ethernet + IPv4 (34 bytes), and, as mptcp_lb's bench build must, take it off again
 * and put the original Ethernet header back (test-run repeats on one buffer). */
static __always_inline int encap_floor_(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + 34 > data_end)
		return XDP_DROP;
	unsigned long long e0 = *(unsigned long long *)data;
	unsigned int e1 = *(unsigned int *)(data + 8);
	unsigned short e2 = *(unsigned short *)(data + 12);
	if (bpf_xdp_adjust_head(ctx, -20))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 34 > data_end)
		return XDP_DROP;
	unsigned long long *d = data;
	d[0] = 1;
	d[1] = 2;
	d[2] = 3;
	d[3] = 4;
	*(unsigned short *)(data + 32) = 5;
	if (bpf_xdp_adjust_head(ctx, 20))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 14 > data_end)
		return XDP_DROP;
	*(unsigned long long *)data = e0;
	*(unsigned int *)(data + 8) = e1;
	*(unsigned short *)(data + 12) = e2;
	return XDP_TX;
}

int encap_floor(struct xdp_md *ctx)
{
	return encap_floor_(ctx);
}

/* --breakdown: the floor and one hit in an LRU hash keyed like lb_conns (8 bytes): the least
 * an LB that remembers its flows costs per packet. */
BPF_F_TABLE("lru_hash", unsigned long long, unsigned int, flows, 1024, BPF_F_NO_COMMON_LRU);
int encap_lookup_floor(struct xdp_md *ctx)
{
	unsigned long long k = ctx->ingress_ifindex + 1;
	unsigned int *v = flows.lookup(&k);
	if (!v) {
		unsigned int one = 1;
		flows.update(&k, &one);
	} else {
		*v += 1;
	}
	return encap_floor_(ctx);
}
"""


def build_frames() -> dict[str, bytes]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    eth = Ether(src="02:00:00:00:00:01", dst="02:aa:00:00:00:02")
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (3_912_004_117, 2_210_551_093))]

    def mptcp(sub_nibble: int, rest: bytes):
        return (30, bytes([sub_nibble]) + rest)

    token = crypto.token(SERVER_KEY)
    # SYN options in the order Linux writes them (tcp_options_write): MSS, SACK-permitted with
    # timestamps, NOP window scale, then MPTCP.
    syn_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (3_912_004_117, 0)),
                ("NOP", None), ("WScale", 7)]
    syn = eth / IP(src=CLIENT_A, dst=VIP) / TCP(
        sport=40000, dport=VPORT, flags="S", options=[*syn_opts, mptcp(0x01, b"\x81")])
    join = eth / IP(src=CLIENT_B, dst=VIP) / TCP(
        sport=50000, dport=VPORT, flags="S",
        options=[*syn_opts,
                 mptcp(0x10, bytes([2]) + token.to_bytes(4, "big") + (0x1234).to_bytes(4, "big"))])
    dss_flags = 0x01 | 0x04  # data ACK (4 bytes) + mapping (4-byte DSN)
    dss = mptcp(0x20, bytes([dss_flags]) + (7).to_bytes(4, "big") + (1000).to_bytes(4, "big")
                + (1).to_bytes(4, "big") + (1348).to_bytes(2, "big"))
    data = eth / IP(src=CLIENT_A, dst=VIP) / TCP(
        sport=40000, dport=VPORT, flags="PA", options=[*ts, dss]) / Raw(b"\xab" * 1348)
    third = eth / IP(src=CLIENT_A, dst=VIP) / TCP(
        sport=40000, dport=VPORT, flags="A",
        options=[mptcp(0x01, b"\x81" + CLIENT_KEY.to_bytes(8, "big")
                       + SERVER_KEY.to_bytes(8, "big"))])
    return {"mp_capable_syn": bytes(syn), "mp_join_syn (token hit)": bytes(join),
            "dss_data (conn hit)": bytes(data), "_third_ack": bytes(third)}


def _lb(cflags: list[str]):
    """A bench build of mptcp_lb with its backends, Maglev table and static next hops."""
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram(cflags=["-DLB_BENCH_RESTORE", *cflags])
    macs = {b: (bytes([2, 0xBB, 0, 0, 0, i + 1]), 0) for i, b in enumerate(BACKENDS)}
    core = LbCore(prog, LbOptions(VIP, VPORT, list(BACKENDS), src="10.20.0.2",
                                  smac=bytes.fromhex("02aa00000002")), static_hops=macs)
    return prog, core


def setup(frames):
    from bcc import BPF

    from controller.datapath import _quiet_stderr

    prog, core = _lb(EXTRA_CFLAGS)
    # The connection's SYN and keys first: the data packet then hits the connection table
    # and the join's token is known.
    for name in ("mp_capable_syn", "_third_ack"):
        if prog.run(frames[name])[0] != XDP_TX:
            raise DatapathError(f"{name}: not forwarded")
    prog.consume()
    if core.tokens_get(crypto.token(SERVER_KEY)) is None:
        raise DatapathError("the token was not learned")
    with _quiet_stderr():
        base = BPF(text=BASELINE)
    base_fn = base.load_func(b"xdp_tx", BPF.XDP)
    floor_fn = base.load_func(b"encap_floor", BPF.XDP)
    lookup_fn = base.load_func(b"encap_lookup_floor", BPF.XDP)
    return prog, core, base, {"baseline": base_fn.fd, "encap_floor": floor_fn.fd, "lb": prog.xdp.fd,
                              "encap_lookup_floor": lookup_fn.fd}


def sample(fds: dict[str, int], frames: dict[str, bytes], repeat, samples, progress=None):
    """packet -> program -> ns per run: interleaved samples of every program (by fd) on every
    frame not named _*; the order rotates per round."""
    names = list(fds)
    rows = {name: {k: [] for k in names} for name in frames if not name.startswith("_")}
    for rnd in range(samples):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name, series in rows.items():
            for key in order:
                verdict, ns, _ = test_run(fds[key], frames[name], repeat)
                if verdict != XDP_TX:
                    raise DatapathError(f"{name}/{key}: verdict {verdict}, expected XDP_TX")
                series[key].append(ns)
        if progress:
            progress(rnd + 1)
    return rows


def measure(fds, frames, repeat, samples, progress=None):
    rows = sample({k: fds[k] for k in XDP_TX_PROGS}, frames, repeat, samples, progress)
    out = []
    for name, s in rows.items():
        b, floor, lb = (statistics.median(s[k]) for k in XDP_TX_PROGS)
        ratio = lb / max(b, 1)
        out.append({"packet": name, "frame_bytes": len(frames[name]),
                    "baseline_ns": {"median": b, "samples": s["baseline"]},
                    "encap_floor_ns": {"median": floor, "samples": s["encap_floor"]},
                    "lb_ns": {"median": lb, "samples": s["lb"]},
                    "ratio": round(ratio, 3), "floor_ratio": round(floor / max(b, 1), 3),
                    "goal_ratio": GOAL_RATIO, "met": ratio <= GOAL_RATIO})
    return out


def render(rows, repeat, samples):
    from rich.table import Table

    t = Table(title=f"XDP per-packet cost, ns (median of {samples} samples x {repeat:,} runs)")
    for col in ("packet", "bytes", "XDP_TX baseline", "encap floor", "mptcp_lb", "ratio", "goal",
                "met"):
        t.add_column(col, justify="left" if col == "packet" else "right")
    for r in rows:
        t.add_row(r["packet"], str(r["frame_bytes"]), f"{r['baseline_ns']['median']:g}",
                  f"{r['encap_floor_ns']['median']:g}", f"{r['lb_ns']['median']:g}",
                  f"{r['ratio']:.2f}", f"<= {GOAL_RATIO:g}",
                  "[green]yes[/]" if r["met"] else "[red]no[/]")
    return t


# --- breakdown -------------------------------------------------------------------------------

FULL = "+ events, encapsulate, send (full)"
# Builds that stop after each stage in turn (-DLB_BENCH_STOP=n), each row adding one stage.
STAGES = [
    ("counters, config, parse to VIP:port", ["-DLB_BENCH_STOP=1"]),
    ("+ option walk", ["-DLB_BENCH_STOP=2"]),
    ("+ backend: token / Maglev / connection table", ["-DLB_BENCH_STOP=3"]),
    (FULL, []),
]
# Not the LB: what any encapsulating LB pays, without and with a flow table (reference rows).
REFERENCES = {"encap_floor": "encapsulation floor (reference)",
              "encap_lookup_floor": "floor + one LRU hash hit (reference)"}


def breakdown(frames, repeat: int, samples: int, console) -> dict:
    """Every build of STAGES beside the baseline and the encapsulation floor, sampled together.
    The stop builds get the full build's tokens and connections (they emit no keys events)."""
    import contextlib

    prog = base = None
    builds = {}
    try:
        with console.status("compiling the bench builds") as st:
            prog, _core, base, fds = setup(frames)
            for label, cflags in STAGES[:-1]:
                st.update(f"compiling: {label}")
                builds[label], _ = _lb([*EXTRA_CFLAGS, *cflags])
                for k, v in prog.tokens.items():
                    builds[label].tokens.update(k, v)
                for k, v in prog.conns.items():
                    builds[label].conns.update(k, v)
        progs = {"baseline": fds["baseline"], "encap_floor": fds["encap_floor"],
                 "encap_lookup_floor": fds["encap_lookup_floor"],
                 **{label: b.xdp.fd for label, b in builds.items()}, FULL: fds["lb"]}
        with console.status(f"measuring: 0/{samples} rounds") as st:
            got = sample(progs, frames, repeat, samples,
                         lambda n: st.update(f"measuring: {n}/{samples} rounds"))
    finally:
        for b in builds.values():
            b.close()
        if base is not None:
            with contextlib.suppress(Exception):
                base.cleanup()
        if prog is not None:
            prog.close()
    out = {}
    for pkt, series in got.items():
        b = statistics.median(series["baseline"])
        rows, prev = [], b
        for label in [*REFERENCES, *(lbl for lbl, _ in STAGES)]:
            ns = statistics.median(series[label])
            rows.append({"build": REFERENCES.get(label, label), "ns": ns,
                         "ratio": round(ns / max(b, 1), 2),
                         "adds_ns": ns - (b if label in REFERENCES else prev),
                         "samples": series[label]})
            if label not in REFERENCES:
                prev = ns
        out[pkt] = {"baseline_ns": b, "baseline_samples": series["baseline"], "rows": rows}
    return out


def main_breakdown(repeat: int, samples: int, out: Path | None) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    start = time.monotonic()
    try:
        got = breakdown(build_frames(), repeat, samples, console)
    except (MissingFeature, DatapathError) as e:
        console.print(f"[red]bench: {e}[/]")
        return 1
    elapsed = time.monotonic() - start
    for pkt, res in got.items():
        t = Table(title=f"{pkt}: where the time goes (median of {samples} x {repeat:,} runs;"
                  f" XDP_TX baseline {res['baseline_ns']:g} ns)")
        for col in ("build", "ns", "x baseline", "the stage costs, ns"):
            t.add_column(col, justify="left" if col == "build" else "right")
        for r in res["rows"]:
            t.add_row(r["build"], f"{r['ns']:g}", f"{r['ratio']:.2f}", f"{r['adds_ns']:+g}")
        console.print(t)
    console.print(f"kernel {platform.release()}, {elapsed:.1f} s. Each '+' row adds one stage to"
                  " the row above (the first, to the baseline); the reference rows are"
                  " measured against the baseline.")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            **machine_facts(),
            "method": "BPF_PROG_TEST_RUN, as bench.lb; bench builds of bpf/mptcp_lb.c with"
                      " -DLB_BENCH_STOP=n return XDP_TX after stage n",
            "cflags": EXTRA_CFLAGS, "repeat": repeat, "samples": samples,
            "elapsed_s": round(elapsed, 1), "breakdown": got}, indent=1) + "\n")
        console.print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = run_args("python -m bench.lb", __doc__, REPEAT, SAMPLES, QUICK_REPEAT, QUICK_SAMPLES,
                    RESULTS, argv,
                    breakdown="time bench builds that stop after each stage; writes"
                              f" {BREAKDOWN_RESULTS.name} unless --quick")
    repeat, samples, out = args.repeat, args.samples, args.out
    if args.breakdown:
        return main_breakdown(repeat, samples, BREAKDOWN_RESULTS if out == RESULTS else out)

    from rich.console import Console

    console = Console()
    start = time.monotonic()
    prog = base = None
    try:
        frames = build_frames()
        with console.status("compiling the load balancer and the baseline"):
            prog, _core, base, fds = setup(frames)
        with console.status(f"measuring: 0/{samples} rounds") as st:
            rows = measure(fds, frames, repeat, samples,
                           lambda n: st.update(f"measuring: {n}/{samples} rounds"))
    except (MissingFeature, DatapathError) as e:
        console.print(f"[red]bench: {e}[/]")
        return 1
    finally:
        if base is not None:
            base.cleanup()
        if prog is not None:
            prog.close()
    elapsed = time.monotonic() - start
    console.print(render(rows, repeat, samples))
    over = [r["packet"] for r in rows if not r["met"]]
    console.print(f"kernel {platform.release()}, {elapsed:.1f} s; "
                  + (f"over {GOAL_RATIO:g}x: {', '.join(over)}" if over else "every path met"))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            **machine_facts(),
            "method": "BPF_PROG_TEST_RUN; per sample the kernel's mean ns per run over `repeat`"
                      " runs; baseline (swap MACs, XDP_TX), encap floor (push and pop an outer"
                      " IPv4 header) and mptcp_lb interleaved, median of samples. mptcp_lb is"
                      " built with -DLB_BENCH_RESTORE: test-run repeats on one buffer, so after"
                      " encapsulating it strips the outer header again (one extra"
                      " bpf_xdp_adjust_head and a 14-byte copy, counted against it; the encap"
                      " floor pays the same). SYNs carry Linux's option layout.",
            "cflags": EXTRA_CFLAGS,
            "repeat": repeat, "samples": samples, "goal_ratio": GOAL_RATIO,
            "elapsed_s": round(elapsed, 1), "results": rows}, indent=1) + "\n")
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
