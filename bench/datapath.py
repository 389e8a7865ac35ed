"""Per-packet cost of the XDP datapath next to a count-and-pass baseline (bench/baseline_xdp.c),
both measured with BPF_PROG_TEST_RUN on the same frames, samples interleaved; prints a table and
writes bench/results/datapath.json. Run as root: `make bench` or `python -m bench.datapath`.
--breakdown times bench builds of the datapath that stop after each stage or leave one piece out
(-DBENCH_STOP, -DBENCH_SKIP_* in bpf/mptcp_datapath.c) in the same session: where the time goes
(bench/results/datapath_breakdown.json)."""

import ctypes as C
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import machine_facts, run_args
from controller import abi
from controller.datapath import Program
from controller.errors import DatapathError, MissingFeature
from controller.libbpf import test_run

BENCH_DIR = Path(__file__).resolve().parent
BASELINE_SOURCE = BENCH_DIR / "baseline_xdp.c"
RESULTS = BENCH_DIR / "results" / "datapath.json"
BREAKDOWN_RESULTS = BENCH_DIR / "results" / "datapath_breakdown.json"
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
    """bench/baseline_xdp.c compiled with BCC: one per-CPU counter increment, XDP_PASS
    (count_pass), or that and one LRU hash hit (count_lookup_pass)."""

    def __init__(self, function: str = "count_pass"):
        from bcc import BPF

        try:
            self.bpf = BPF(src_file=str(BASELINE_SOURCE).encode())
            self.fn = self.bpf.load_func(function.encode(), BPF.XDP)
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


def sample(programs: dict, frames: dict[str, bytes], repeat: int, samples: int,
           progress=None) -> dict[str, dict[str, Series]]:
    """packet -> program -> ns per run. `samples` rounds; in each, every packet runs on every
    program (anything with run_xdp), back to back, the order rotated every round so none always
    runs on a warmer cache or a quieter moment."""
    names = list(programs)
    out = {pkt: {n: Series() for n in names} for pkt in frames}
    for rnd in range(samples):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for pkt, frame in frames.items():
            for n in order:
                out[pkt][n].samples.append(programs[n].run_xdp(frame, repeat)[1])
        if progress:
            progress(rnd + 1)
    return out


def measure(prog: Program, base: Baseline, frames, repeat: int, samples: int,
            progress=None) -> list[Row]:
    """The datapath against the baseline on every packet (sample())."""
    got = sample({"baseline": base, "datapath": prog},
                 {name: frame for name, (frame, _) in frames.items()}, repeat, samples, progress)
    return [Row(name, len(frame), got[name]["baseline"], got[name]["datapath"])
            for name, (frame, _) in frames.items()]


# --- breakdown -------------------------------------------------------------------------------

# The packets whose cost is taken apart.
BREAKDOWN_PACKETS = ("DSS data-ack", "MP_JOIN SYN")
FULL = "+ options into the subflow, counters, events (full)"
# Not the datapath: the baseline plus one LRU hash hit, the least any per-subflow state costs.
ONE_LOOKUP = "baseline + one LRU hash hit (reference)"
# Builds that stop after each stage in turn (each row adds one stage to the one above it), then
# the full program, then the full program with one piece left out (bpf/mptcp_datapath.c).
STAGES = [
    ("packet counter + config lookup", ["-DBENCH_STOP=1"]),
    ("+ parse Ethernet..TCP", ["-DBENCH_STOP=2"]),
    ("+ copy, find and decode options", ["-DBENCH_STOP=3"]),
    ("+ subflows lookup", ["-DBENCH_STOP=4"]),
    ("+ subflow timestamps and counts", ["-DBENCH_STOP=5"]),
    # A join learns its token in the option accounting below, so stop builds never find its
    # connection: for MP_JOIN SYN this row adds nothing and the next row holds that cost.
    ("+ connection lookup and sums", ["-DBENCH_STOP=6"]),
    (FULL, []),
]
SKIPS = [
    ("full without ring-buffer events", ["-DBENCH_SKIP_EVENTS"]),
    ("full without per-CPU counters", ["-DBENCH_SKIP_COUNTERS"]),
    ("full without subflow_token lookup", ["-DBENCH_SKIP_TOKEN_MAP"]),
    ("full without connection", ["-DBENCH_SKIP_CONN"]),
    ("full without clock read", ["-DBENCH_SKIP_TIME"]),
]


def breakdown(base: Baseline, frames, repeat: int, samples: int, console) -> dict:
    """Every build of STAGES and SKIPS beside the baseline, sampled together (sample()).
    Returns packet -> rows of (build, median ns, ratio to the baseline, ns it adds)."""
    builds = {}
    try:
        with console.status("compiling the bench builds") as st:
            builds[ONE_LOOKUP] = Baseline("count_lookup_pass")
            for label, cflags in STAGES + SKIPS:
                st.update(f"compiling: {label}")
                builds[label] = Program(cflags=cflags)
        check_paths(builds[FULL], base, {k: frames[k] for k in BREAKDOWN_PACKETS})
        programs = {"baseline": base, **builds}
        with console.status(f"measuring: 0/{samples} rounds") as st:
            got = sample(programs, {k: frames[k][0] for k in BREAKDOWN_PACKETS}, repeat,
                         samples, lambda n: st.update(f"measuring: {n}/{samples} rounds"))
    finally:
        for p in builds.values():
            p.close()
    out = {}
    for pkt, series in got.items():
        b = series["baseline"].median
        full = series[FULL].median
        ns = series[ONE_LOOKUP].median
        rows = [{"build": ONE_LOOKUP, "ns": ns, "ratio": round(ns / max(b, 1), 2),
                 "adds_ns": ns - b, "samples": series[ONE_LOOKUP].samples}]
        prev = b
        for label, _ in STAGES:
            ns = series[label].median
            rows.append({"build": label, "ns": ns, "ratio": round(ns / max(b, 1), 2),
                         "adds_ns": ns - prev, "samples": series[label].samples})
            prev = ns
        for label, _ in SKIPS:
            ns = series[label].median
            rows.append({"build": label, "ns": ns, "ratio": round(ns / max(b, 1), 2),
                         "adds_ns": full - ns, "samples": series[label].samples})
        out[pkt] = {"baseline_ns": b, "baseline_samples": series["baseline"].samples,
                    "rows": rows}
    return out


def render_breakdown(got: dict, repeat: int, samples: int):
    from rich.table import Table

    tables = []
    for pkt, res in got.items():
        t = Table(title=f"{pkt}: where the time goes (median of {samples} x {repeat:,} runs;"
                  f" baseline {res['baseline_ns']:g} ns)")
        t.add_column("build")
        t.add_column("ns", justify="right")
        t.add_column("x baseline", justify="right")
        t.add_column("the stage or piece costs, ns", justify="right")
        for r in res["rows"]:
            t.add_row(r["build"], f"{r['ns']:g}", f"{r['ratio']:.2f}", f"{r['adds_ns']:+g}")
        tables.append(t)
    return tables


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
        **machine_facts(),
        "method": "BPF_PROG_TEST_RUN on XDP programs; per sample the kernel's mean ns per run"
                  " over `repeat` runs; baseline and datapath interleaved, median of samples",
        "repeat": repeat,
        "samples": samples,
        "goal_ratio": GOAL_RATIO,
        "elapsed_s": round(elapsed, 1),
        "results": [r.as_dict() for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    args = run_args("python -m bench.datapath", __doc__, REPEAT, SAMPLES, QUICK_REPEAT,
                    QUICK_SAMPLES, RESULTS, argv,
                    breakdown="time bench builds that stop after each stage or leave one piece"
                              f" out, on {', '.join(BREAKDOWN_PACKETS)}; writes"
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


def main_breakdown(repeat: int, samples: int, out: Path | None) -> int:
    from rich.console import Console

    console = Console()
    start = time.monotonic()
    base = None
    try:
        frames = build_frames()
        base = Baseline()
        got = breakdown(base, frames, repeat, samples, console)
    except (MissingFeature, DatapathError) as e:
        console.print(f"[red]bench: {e}[/]")
        return 1
    finally:
        if base is not None:
            base.close()
    elapsed = time.monotonic() - start
    for t in render_breakdown(got, repeat, samples):
        console.print(t)
    console.print(f"kernel {platform.release()}, {elapsed:.1f} s. Each '+' row adds one stage to"
                  " the row above; a 'full without' row shows what the full program spends on"
                  " that piece.")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        rep = report([], repeat, samples, elapsed)
        rep.pop("results")
        rep["method"] += ("; bench builds of bpf/mptcp_datapath.c with -DBENCH_STOP=n (stop"
                          " after stage n) or -DBENCH_SKIP_* (leave one piece out)")
        rep["breakdown"] = got
        out.write_text(json.dumps(rep, indent=1) + "\n")
        console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
