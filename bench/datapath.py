"""Per-packet cost of the XDP datapath next to a count-and-pass baseline (bench/baseline_xdp.c),
both measured with BPF_PROG_TEST_RUN on the same frames, samples interleaved; prints a table and
writes bench/results/datapath.json. Run as root: `make bench` or `python -m bench.datapath`."""

import ctypes as C
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import run_options
from controller import abi
from controller.datapath import Program
from controller.errors import DatapathError, MissingFeature
from controller.libbpf import test_run

BENCH_DIR = Path(__file__).resolve().parent
BASELINE_SOURCE = BENCH_DIR / "baseline_xdp.c"
RESULTS = BENCH_DIR / "results" / "datapath.json"
# The datapath may cost at most this many times the baseline per packet.
GOAL_RATIO = 2.0
XDP_PASS = 2
# Defaults: 2M runs per sample keep one sample of the costliest packet under ~1 s;
# 11 rounds of 5 packets on 2 programs take ~30 s, well inside the 3-minute budget.
REPEAT = 2_000_000
SAMPLES = 11
QUICK_REPEAT = 20_000
QUICK_SAMPLES = 3

# Addresses from the documentation ranges: a client with two paths to an iperf3 server.
CLIENT_A = "192.0.2.10"
CLIENT_B = "203.0.113.10"
SERVER = "198.51.100.20"
CLIENT_PORT = 43512
SERVER_PORT = 5201
MSS_PAYLOAD = 1448


# --- packets ---------------------------------------------------------------------------------


def _mptcp(subtype: int, nibble: int, rest: bytes) -> tuple[int, bytes]:
    """An MPTCP option for scapy: kind 30, then subtype in the high nibble of the third byte."""
    return (abi.TCPOPT_MPTCP, bytes([(subtype << 4) | nibble]) + rest)


def _dss(flags: int, *fields: bytes) -> tuple[int, bytes]:
    return _mptcp(abi.Subtype.DSS, 0, bytes([flags]) + b"".join(fields))


TIMESTAMPS = [("NOP", None), ("NOP", None), ("Timestamp", (3_912_004_117, 2_210_551_093))]


def build_frames() -> dict[str, tuple[bytes, set[int]]]:
    """name -> (Ethernet frame, MPTCP subtypes the datapath must count for it)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    down = IP(src=SERVER, dst=CLIENT_A, ttl=63)
    seq, ack = 1_804_289_383, 846_930_886
    data_ack, dsn = 0x1B2C_3D4E_5F60_7182, 0x0A1B_2C3D_4E5F_6071

    def tcp(flags: str, options, **kw):
        return TCP(sport=SERVER_PORT, dport=CLIENT_PORT, seq=seq, ack=ack, flags=flags,
                   window=501, options=options, **kw)

    udp = eth / down / UDP(sport=53, dport=CLIENT_PORT) / Raw(b"\x00" * 64)
    ack_only = eth / down / tcp("A", TIMESTAMPS)
    dss_ack = eth / down / tcp(
        "A", [*TIMESTAMPS, _dss(abi.DSS_FLAG_A | abi.DSS_FLAG_a, data_ack.to_bytes(8, "big"))]
    )
    mapping_flags = abi.DSS_FLAG_A | abi.DSS_FLAG_a | abi.DSS_FLAG_M | abi.DSS_FLAG_m
    dss_map = eth / down / tcp(
        "PA",
        [*TIMESTAMPS, _dss(
            mapping_flags,
            data_ack.to_bytes(8, "big"),
            dsn.to_bytes(8, "big"),
            (1).to_bytes(4, "big"),  # subflow sequence number, relative
            MSS_PAYLOAD.to_bytes(2, "big"),
            (0x3C5A).to_bytes(2, "big"),  # DSS checksum
        )],
    ) / Raw(bytes(i & 0xFF for i in range(MSS_PAYLOAD)))
    # The second subflow's SYN, as the server receives it: Linux's option order, then MP_JOIN
    # with backup 0, address id 2, the server's token and the client's nonce.
    join = eth / IP(src=CLIENT_B, dst=SERVER, ttl=64) / TCP(
        sport=CLIENT_PORT + 1, dport=SERVER_PORT, seq=seq, flags="S", window=64240,
        options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (3_912_004_117, 0)),
                 ("NOP", None), ("WScale", 7),
                 _mptcp(abi.Subtype.MP_JOIN, 0, bytes([2]) + bytes.fromhex("8a3f11d2 5e77c6a9"))],
    )
    return {
        "UDP": (bytes(udp), set()),
        "TCP ACK": (bytes(ack_only), set()),
        "DSS data-ack": (bytes(dss_ack), {abi.Subtype.DSS}),
        "DSS map+csum": (bytes(dss_map), {abi.Subtype.DSS}),
        "MP_JOIN SYN": (bytes(join), {abi.Subtype.MP_JOIN}),
    }


# --- programs --------------------------------------------------------------------------------


class Baseline:
    """bench/baseline_xdp.c compiled with BCC: one per-CPU counter increment, XDP_PASS."""

    def __init__(self):
        from bcc import BPF

        try:
            self.bpf = BPF(src_file=str(BASELINE_SOURCE).encode())
            self.fn = self.bpf.load_func(b"count_pass", BPF.XDP)
        except Exception as e:  # BCC raises bare Exception for compile and verifier errors
            raise DatapathError(f"loading {BASELINE_SOURCE.name} failed: {e}") from e

    def run_xdp(self, frame: bytes, repeat: int = 1):
        retval, ns, _ = test_run(self.fn.fd, frame, repeat)
        return retval, ns

    def close(self) -> None:
        self.bpf.cleanup()


def _counters(prog: Program) -> list[int]:
    """The datapath's counters, summed over CPUs."""
    m = prog.map("counters", C.c_uint32, C.c_uint64, percpu=True)
    out = []
    for i in range(abi.Counter.CNT_MAX):
        vals = m.lookup(C.c_uint32(i))
        out.append(sum(v.value if hasattr(v, "value") else v for v in vals) if vals else 0)
    return out


def check_paths(prog: Program, base: Baseline, frames) -> None:
    """Run each frame once and make sure it takes the path its name says (a DSS frame that the
    decoder called malformed would time the wrong code)."""
    for name, (frame, subtypes) in frames.items():
        before = _counters(prog)
        verdicts = (prog.run_xdp(frame)[0], base.run_xdp(frame)[0])
        delta = [a - b for a, b in zip(_counters(prog), before, strict=True)]
        if verdicts != (XDP_PASS, XDP_PASS):
            raise DatapathError(f"{name}: verdicts {verdicts}, expected XDP_PASS from both")
        wrong = []
        if delta[abi.Counter.CNT_MALFORMED]:
            wrong.append("counted malformed")
        if delta[abi.Counter.CNT_MPTCP] != (1 if subtypes else 0):
            wrong.append(f"CNT_MPTCP +{delta[abi.Counter.CNT_MPTCP]}")
        for st in subtypes:
            if delta[abi.Counter.CNT_OPT_BASE + st] != 1:
                wrong.append(f"no {st.name} option counted")
        if wrong:
            raise DatapathError(f"{name}: the datapath took the wrong path: {', '.join(wrong)}")


# --- measurement -----------------------------------------------------------------------------


@dataclass
class Series:
    samples: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict:
        return {"median": self.median, "min": min(self.samples), "max": max(self.samples),
                "samples": self.samples}


@dataclass
class Row:
    packet: str
    frame_bytes: int
    baseline: Series = field(default_factory=Series)
    datapath: Series = field(default_factory=Series)

    @property
    def ratio(self) -> float:
        return self.datapath.median / max(self.baseline.median, 1)

    @property
    def met(self) -> bool:
        return self.ratio <= GOAL_RATIO

    def as_dict(self) -> dict:
        return {"packet": self.packet, "frame_bytes": self.frame_bytes,
                "baseline_ns": self.baseline.as_dict(), "mptcpctl_ns": self.datapath.as_dict(),
                "ratio": round(self.ratio, 3), "goal_ratio": GOAL_RATIO, "met": self.met}


def measure(prog: Program, base: Baseline, frames, repeat: int, samples: int,
            progress=None) -> list[Row]:
    """`samples` rounds; in each, every packet runs on both programs, back to back, the order
    swapped every round so neither always runs on a warmer cache or a quieter moment."""
    rows = [Row(name, len(frame)) for name, (frame, _) in frames.items()]
    for rnd in range(samples):
        for row, (frame, _) in zip(rows, frames.values(), strict=True):
            pair = [(base, row.baseline), (prog, row.datapath)]
            for p, series in pair if rnd % 2 == 0 else reversed(pair):
                series.samples.append(p.run_xdp(frame, repeat)[1])
        if progress:
            progress(rnd + 1)
    return rows


# --- output ----------------------------------------------------------------------------------


def render(rows: list[Row], repeat: int, samples: int):
    from rich.table import Table

    table = Table(title=f"XDP per-packet cost, ns (median of {samples} samples x {repeat:,} runs;"
                  " min-max in brackets)")
    table.add_column("packet")
    table.add_column("bytes", justify="right")
    table.add_column("baseline ns", justify="right")
    table.add_column("mptcpctl ns", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("goal", justify="right")
    table.add_column("met")
    for r in rows:
        b, d = r.baseline, r.datapath
        table.add_row(
            r.packet, str(r.frame_bytes),
            f"{b.median:g} [{min(b.samples)}-{max(b.samples)}]",
            f"{d.median:g} [{min(d.samples)}-{max(d.samples)}]",
            f"{r.ratio:.2f}", f"<= {GOAL_RATIO:g}",
            "[green]yes[/]" if r.met else "[red]no[/]",
        )
    return table


def report(rows: list[Row], repeat: int, samples: int, elapsed: float) -> dict:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "method": "BPF_PROG_TEST_RUN on XDP programs; per sample the kernel's mean ns per run"
                  " over `repeat` runs; baseline and datapath interleaved, median of samples",
        "repeat": repeat,
        "samples": samples,
        "goal_ratio": GOAL_RATIO,
        "elapsed_s": round(elapsed, 1),
        "results": [r.as_dict() for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    repeat, samples, out = run_options("python -m bench.datapath", __doc__, REPEAT, SAMPLES,
                                       QUICK_REPEAT, QUICK_SAMPLES, RESULTS, argv)

    from rich.console import Console

    console = Console()
    start = time.monotonic()
    prog = base = None
    try:
        frames = build_frames()
        with console.status("compiling the datapath and the baseline"):
            prog = Program()
            base = Baseline()
        check_paths(prog, base, frames)
        with console.status(f"measuring: 0/{samples} rounds") as status:
            rows = measure(prog, base, frames, repeat, samples,
                           lambda n: status.update(f"measuring: {n}/{samples} rounds"))
    except (MissingFeature, DatapathError) as e:
        console.print(f"[red]bench: {e}[/]")
        return 1
    finally:
        for p in (base, prog):
            if p is not None:
                p.close()
    elapsed = time.monotonic() - start
    console.print(render(rows, repeat, samples))
    over = [r.packet for r in rows if not r.met]
    console.print(f"kernel {platform.release()}, {elapsed:.1f} s; "
                  + (f"over {GOAL_RATIO:g}x: {', '.join(over)}" if over else "every path met"))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report(rows, repeat, samples, elapsed), indent=1) + "\n")
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
