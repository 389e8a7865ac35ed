"""DSS checksum verification throughput: 1448-byte segments through the XDP datapath with
checksums on (parse, account, tail call, sum, compare), next to the same datapath with them off
and to bpf_csum_diff alone over the same bytes in a minimal program; BPF_PROG_TEST_RUN, samples
interleaved. Gbit/s per core = 1448 * 8 / ns per packet. Writes bench/results/dsscsum.json.
Run as root: `python -m bench.dsscsum` (`--quick` for a smoke test)."""

import ctypes as C
import json
import statistics
import struct
import sys
import time
from pathlib import Path

from bench.common import machine_facts, run_options
from controller import abi
from controller.datapath import Program
from controller.errors import DatapathError, MissingFeature
from controller.libbpf import test_run

RESULTS = Path(__file__).resolve().parent / "results" / "dsscsum.json"
GOAL_GBPS = 10.0
XDP_PASS = 2
REPEAT = 1_000_000
SAMPLES = 9
QUICK_REPEAT = 20_000
QUICK_SAMPLES = 3
MSS_PAYLOAD = 1448

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
CSUM_PORT, PLAIN_PORT, SERVER_PORT = 43512, 43513, 5201
ISN = 1_804_289_383
DSN = 0x0A1B_2C3D_4E5F_6071

# bpf_csum_diff over the payload and nothing else: the payload offset is fixed at build time.
CSUM_ONLY = r"""
#include <uapi/linux/bpf.h>
BPF_PERCPU_ARRAY(sums, __u32, 1);
/* n bytes at a constant offset, in place: every size and offset is known at compile time. */
#define PIECE(size)                                                                        \
	if (left >= (size)) {                                                              \
		if (p + (size) > end)                                                      \
			return XDP_PASS;                                                   \
		s = bpf_csum_diff(0, 0, p, (size), (__u32)s);                              \
		p += (size);                                                               \
		left -= (size);                                                            \
	}
int csum_only(struct xdp_md *ctx)
{
	void *p = (void *)(long)ctx->data + PAYLOAD_OFF;
	void *end = (void *)(long)ctx->data_end;
	__u32 left = PAYLOAD_LEN, zero = 0;
	__u64 s = 0;
#pragma unroll
	for (int i = 0; i < PAYLOAD_LEN / 512; i++)
		PIECE(512)
	PIECE(256) PIECE(128) PIECE(64) PIECE(32) PIECE(16) PIECE(8) PIECE(4)
	__u32 *v = sums.lookup(&zero);
	if (v) {
		s = (s & 0xffff) + (s >> 16);
		s = (s & 0xffff) + (s >> 16);
		*v = (s & 0xffff) + (s >> 16);
	}
	return XDP_PASS;
}
"""


def ones_sum(data: bytes) -> int:
    data += b"\x00" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def dss_checksum(dsn: int, ssn: int, data: bytes) -> int:
    s = ones_sum(data) + ones_sum(struct.pack("!QIHH", dsn, ssn, len(data), 0))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_frames():
    """(SYNs that set up both subflows, the checksummed data frame, the plain data frame,
    payload offset). Linux's shape: timestamps, then a DSS with data ACK, mapping, checksum."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    payload = bytes((i * 7 + 3) & 0xFF for i in range(MSS_PAYLOAD))
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (3_912_004_117, 2_210_551_093))]

    def syn(port, flags):
        mpc = (abi.TCPOPT_MPTCP, bytes([0x01, flags]))  # MP_CAPABLE v1, no key (SYN)
        return bytes(eth / IP(src=CLIENT, dst=SERVER) / TCP(
            sport=port, dport=SERVER_PORT, seq=ISN, flags="S", options=[*ts, mpc]))

    def data(port):
        dss = bytes([abi.Subtype.DSS << 4, abi.DSS_FLAG_A | abi.DSS_FLAG_a | abi.DSS_FLAG_M
                     | abi.DSS_FLAG_m]) + struct.pack(
            "!QQIHH", 0x1B2C_3D4E_5F60_7182, DSN, 1, MSS_PAYLOAD,
            dss_checksum(DSN, 1, payload))
        pkt = eth / IP(src=CLIENT, dst=SERVER) / TCP(
            sport=port, dport=SERVER_PORT, seq=ISN + 1, flags="PA", window=501,
            options=[*ts, (abi.TCPOPT_MPTCP, dss)]) / Raw(payload)
        return bytes(pkt), len(pkt) - MSS_PAYLOAD

    csum_frame, off = data(CSUM_PORT)
    plain_frame, _ = data(PLAIN_PORT)
    return [syn(CSUM_PORT, 0x81), syn(PLAIN_PORT, 0x01)], csum_frame, plain_frame, off


class CsumOnly:
    """The minimal program: bpf_csum_diff in place over the payload, constant offsets and
    sizes (a multiple of 4 bytes), folded and stored."""

    def __init__(self, off: int):
        from bcc import BPF

        try:
            self.bpf = BPF(text=CSUM_ONLY.encode(), cflags=[
                "-Wno-unused-function", f"-DPAYLOAD_OFF={off}",
                f"-DPAYLOAD_LEN={MSS_PAYLOAD}"])
            self.fn = self.bpf.load_func(b"csum_only", BPF.XDP)
        except Exception as e:  # BCC raises bare Exception for compile and verifier errors
            raise DatapathError(f"loading the csum-only program failed: {e}") from e

    def sum(self) -> int:
        vals = self.bpf[b"sums"][C.c_int(0)]
        return max(int(v) for v in vals)

    def run_xdp(self, frame: bytes, repeat: int = 1):
        retval, ns, _ = test_run(self.fn.fd, frame, repeat)
        return retval, ns

    def close(self) -> None:
        self.bpf.cleanup()


def _counter(prog: Program, idx: int) -> int:
    vals = prog.map("counters", C.c_uint32, C.c_uint64, percpu=True).lookup(C.c_uint32(idx))
    return sum(int(getattr(v, "value", v)) for v in vals) if vals else 0


def check_paths(prog: Program, only: CsumOnly, syns, csum_frame, plain_frame, off) -> None:
    """Each frame takes the path it is timed for: the checksummed one is verified (and
    matches) on every run, the plain one is never checked, the minimal program's sum is the
    payload's."""
    for f in syns:
        prog.run_xdp(f)
    cnt = abi.Counter
    before = [_counter(prog, c) for c in (cnt.CNT_DSS_CSUM_OK, cnt.CNT_DSS_CSUM_BAD,
                                          cnt.CNT_DSS_CSUM_UNVERIFIABLE)]
    for frame in (csum_frame, csum_frame, plain_frame):
        if prog.run_xdp(frame)[0] != XDP_PASS:
            raise DatapathError("the datapath did not pass a data frame")
    after = [_counter(prog, c) for c in (cnt.CNT_DSS_CSUM_OK, cnt.CNT_DSS_CSUM_BAD,
                                         cnt.CNT_DSS_CSUM_UNVERIFIABLE)]
    if [a - b for a, b in zip(after, before, strict=True)] != [2, 0, 0]:
        raise DatapathError(f"checksum counters moved {before} -> {after}, expected +2 ok only")
    if only.run_xdp(csum_frame)[0] != XDP_PASS:
        raise DatapathError("the csum-only program did not pass")
    payload = csum_frame[off:]
    # Memory-order sum read back as a little- or big-endian u32: compare both byte orders.
    want = ones_sum(payload)
    got = only.sum()
    if want not in (got, ((got & 0xFF) << 8) | (got >> 8)):
        raise DatapathError(f"csum-only sum {got:#06x}, expected {want:#06x}")


def measure(runners, repeat: int, samples: int, progress=None) -> dict[str, list[int]]:
    """`samples` rounds; in each every runner runs once, the order rotated every round."""
    out = {name: [] for name, _ in runners}
    for rnd in range(samples):
        k = rnd % len(runners)
        for name, fn in runners[k:] + runners[:k]:
            out[name].append(fn(repeat))
        if progress:
            progress(rnd + 1)
    return out


def gbps(ns: float) -> float:
    return MSS_PAYLOAD * 8 / ns if ns else float("inf")


def main(argv: list[str] | None = None) -> int:
    repeat, samples, out = run_options("python -m bench.dsscsum", __doc__, REPEAT, SAMPLES,
                                       QUICK_REPEAT, QUICK_SAMPLES, RESULTS, argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    start = time.monotonic()
    prog = only = None
    try:
        syns, csum_frame, plain_frame, off = build_frames()
        with console.status("compiling"):
            # CSUM_RECHECK: a repeat of a checked mapping is checked again (otherwise every
            # run after the first is a cheap "retransmission").
            prog = Program(cflags=["-DCSUM_RECHECK"])
            only = CsumOnly(off)
        check_paths(prog, only, syns, csum_frame, plain_frame, off)
        runners = [
            ("bpf_csum_diff only", lambda n: only.run_xdp(csum_frame, n)[1]),
            ("datapath, checksum off", lambda n: prog.run_xdp(plain_frame, n)[1]),
            ("datapath, checksum verified", lambda n: prog.run_xdp(csum_frame, n)[1]),
        ]
        with console.status(f"measuring: 0/{samples} rounds") as status:
            series = measure(runners, repeat, samples,
                             lambda n: status.update(f"measuring: {n}/{samples} rounds"))
    except (MissingFeature, DatapathError) as e:
        console.print(f"[red]bench: {e}[/]")
        return 1
    finally:
        for p in (only, prog):
            if p is not None:
                p.close()
    elapsed = time.monotonic() - start
    table = Table(title=f"{MSS_PAYLOAD}-byte segments, XDP test-run (median of {samples} x "
                  f"{repeat:,} runs)")
    for col in ("program", "ns/packet", "min-max", "Gbit/s per core"):
        table.add_column(col, justify="left" if col == "program" else "right")
    results = []
    for name, samp in series.items():
        med = statistics.median(samp)
        table.add_row(name, f"{med:g}", f"{min(samp)}-{max(samp)}", f"{gbps(med):.1f}")
        results.append({"program": name, "ns_median": med, "ns_min": min(samp),
                        "ns_max": max(samp), "samples": samp, "gbps": round(gbps(med), 2)})
    console.print(table)
    verified = statistics.median(series["datapath, checksum verified"])
    met = gbps(verified) >= GOAL_GBPS
    console.print(f"verification: {gbps(verified):.1f} Gbit/s per core, goal >= {GOAL_GBPS:g}: "
                  + ("[green]met[/]" if met else "[red]not met[/]"))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            **machine_facts(),
            "method": "BPF_PROG_TEST_RUN on XDP programs; per sample the kernel's mean ns per "
                      "run over `repeat` runs; programs interleaved (order rotated), median of "
                      "samples; the datapath is built with -DCSUM_RECHECK so every run checks",
            "payload_bytes": MSS_PAYLOAD, "frame_bytes": len(csum_frame),
            "repeat": repeat, "samples": samples, "goal_gbps": GOAL_GBPS, "met": met,
            "elapsed_s": round(elapsed, 1), "results": results,
        }, indent=1) + "\n")
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
