"""Handover benchmark on one netns lab: the receive stall when wifi dies (make-before-break and
break-before-make) and the ESTABLISHED -> SUB_ESTABLISHED latency, for mptcpctl, the in-kernel
path manager and mptcpd. Prints a table, writes bench/results/handover.json. Run as root:
`python -m bench.handover [--quick]`."""

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import finally_on_sigterm
from controller import diag, pm
from controller import lab as labmod

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "handover.json"
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
# linux/mptcp.h: getsockopt(SOL_MPTCP, MPTCP_INFO); struct mptcp_info's first byte counts the
# subflows beyond the initial one.
SOL_MPTCP = 284
MPTCP_INFO = 1

PMS = ("mptcpctl", "kernel", "mptcpd")
SCENARIOS = ("make-before-break", "break-before-make")
MPTCPD = "/usr/libexec/mptcpd"
MPTCPD_ARGS = ["--load-plugins=addr_adv", "--path-manager=addr_adv", "--addr-flags=subflow",
               "--notify-flags=existing,skip_link_local,skip_loopback", "--log=stderr"]

# Goals (issue "controller"): stall after the break, subflow creation latency.
GOAL_MBB_STALL = 0.1
GOAL_BBM_SLACK = 0.1  # break-before-make: at most the address gap plus this
GOAL_CREATE_P99 = 0.020

# The sender paces 4 KiB writes at RATE; the receiver then sees bytes every ~1.5 ms (one
# 1448-byte segment at 8 Mbit/s), which is the resolution of the stall measurement.
RATE_BPS = 8_000_000
CHUNK = 4096
BBM_GAP = 0.5  # seconds between wifi dying and the lte address appearing
HICCUP = 0.05  # a gap longer than this counts towards "recovered" and "stalled"
# Full run: 3 repeats of 2 scenarios x 3 path managers (~8 s each) + 2 x 200 short
# connections: ~3.5 minutes. Quick: 1 repeat, shorter transfers, 100 connections: ~75 s.
FULL = {"repeats": 3, "before": 2.0, "after": 3.5, "connections": 200}
QUICK = {"repeats": 1, "before": 1.2, "after": 2.0, "connections": 100}
SHORT_BYTES = 4096
SUBFLOW_WAIT = 0.5  # a short connection stays open at most this long for its extra subflow


# --- workers: run as `python -m bench.handover _<role> ...` inside a lab namespace ------------


def _listen(port: int = 0) -> socket.socket:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(64)
    print(f"ready {ls.getsockname()[1]}", flush=True)
    return ls


def worker_receiver(timeout: float) -> None:
    """One connection: read to EOF, stamp every recv() with CLOCK_MONOTONIC (shared by all
    namespaces), print bytes, SHA-256 and the arrival times as one JSON line."""
    ls = _listen()
    ls.settimeout(timeout)
    conn, _ = ls.accept()
    conn.settimeout(timeout)
    h, n, arrivals, error = hashlib.sha256(), 0, [], None
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    try:
        while True:
            got = conn.recv_into(buf)
            if not got:
                break
            arrivals.append(time.monotonic())
            h.update(view[:got])
            n += got
    except OSError as e:
        error = str(e)
    conn.close()
    print(json.dumps({"bytes": n, "sha256": h.hexdigest(), "error": error,
                      "arrivals": [round(t, 6) for t in arrivals]}), flush=True)


def worker_sender(addr: str, port: int, nbytes: int, rate_bps: float) -> None:
    """Send nbytes of seeded data in CHUNK writes paced at rate_bps, wait for the receiver's
    close, print bytes, SHA-256 and the start time."""
    data = random.Random(7).randbytes(nbytes)
    rate = rate_bps / 8
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as s:
        s.connect((addr, port))
        t0 = time.monotonic()
        print(json.dumps({"started": t0}), flush=True)
        sent = 0
        while sent < nbytes:
            piece = data[sent:sent + CHUNK]
            s.sendall(piece)
            sent += len(piece)
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    print(json.dumps({"bytes": sent, "sha256": hashlib.sha256(data).hexdigest(),
                      "seconds": round(time.monotonic() - t0, 3)}), flush=True)


def worker_sink() -> None:
    """Accept connections one after another, read each to EOF; runs until killed."""
    ls = _listen()
    while True:
        conn, _ = ls.accept()
        with conn:
            while conn.recv(1 << 16):
                pass


def _extra_subflows(s: socket.socket) -> int | None:
    try:
        return s.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)[0]
    except OSError:
        return None


def worker_shorts(addr: str, port: int, count: int) -> None:
    """count short connections in sequence: connect, send SHORT_BYTES, stay until the path
    manager has added a subflow (at most SUBFLOW_WAIT), close. Prints how many got one."""
    payload = os.urandom(SHORT_BYTES)
    joined = 0
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as s:
            s.connect((addr, port))
            s.sendall(payload)
            deadline = time.monotonic() + SUBFLOW_WAIT
            while time.monotonic() < deadline:
                extra = _extra_subflows(s)
                if extra:
                    joined += 1
                    break
                if extra is None:  # no MPTCP_INFO: a fixed wait instead
                    time.sleep(0.05)
                    break
                time.sleep(0.001)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    print(json.dumps({"connections": count, "joined": joined}), flush=True)


def worker_main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "_receiver":
        worker_receiver(float(args[0]))
    elif role == "_sender":
        worker_sender(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif role == "_sink":
        worker_sink()
    elif role == "_shorts":
        worker_shorts(args[0], int(args[1]), int(args[2]))
    else:
        print(f"unknown worker role {role}", file=sys.stderr)
        return 2
    return 0


# --- the lab side --------------------------------------------------------------------------


def _py_in(ns: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.handover",
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _ready_port(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        raise RuntimeError(f"worker did not start: {proc.stderr.read()[-300:]}")
    return int(line[1])


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _sh(ns: str, *argv: str, check: bool = True) -> str:
    cp = labmod.ns_exec(ns, list(argv), capture_output=True, text=True, timeout=30)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {cp.stderr.strip()}")
    return cp.stdout


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=60)
    if check and cp.returncode != 0:
        raise RuntimeError(f"mptcpctl {' '.join(args)}: {cp.stderr.strip()}")
    return cp


def _wait(what: str, fn, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


class PathManager:
    """Starts and stops one path manager on the lab client; `make_endpoint` is what the
    in-kernel PM needs by hand when an address appears."""

    def __init__(self, name: str, lab: labmod.Lab, logdir: Path):
        self.name, self.lab, self.logdir = name, lab, logdir
        self.proc: subprocess.Popen | None = None
        self.log = None

    def lte_endpoint(self) -> None:
        lte = self.lab.paths["lte"]
        _sh(self.lab.client, "ip", "mptcp", "endpoint", "add", lte.client_addr,
            "dev", lte.client_if, "subflow")

    def start(self, scenario: str) -> None:
        lab = self.lab
        if self.name == "mptcpctl":
            _cli("up", "--netns", lab.client)
        elif self.name == "kernel" and scenario == "make-before-break":
            self.lte_endpoint()
        elif self.name == "mptcpd":
            self.log = open(self.logdir / "mptcpd.log", "a")  # noqa: SIM115 (closed in stop)
            self.log.write(f"--- {scenario} {datetime.datetime.now().isoformat()}\n")
            self.log.flush()
            # `ip netns exec` execs mptcpd, so this pid is mptcpd's own
            self.proc = subprocess.Popen(["ip", "netns", "exec", lab.client, MPTCPD,
                                          *MPTCPD_ARGS], stdout=self.log, stderr=self.log)
            want = {lab.paths["wifi"].client_addr}
            if scenario == "make-before-break":
                want.add(lab.paths["lte"].client_addr)
            _wait("mptcpd's endpoints", lambda: want <= set(
                re.findall(r"^(\S+) ", _sh(lab.client, "ip", "mptcp", "endpoint", "show"),
                           re.M)))

    def address_appeared(self) -> None:
        if self.name == "kernel":
            self.lte_endpoint()

    def stop(self) -> None:
        if self.name == "mptcpctl":
            _cli("down", "--netns", self.lab.client, check=False)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        _sh(self.lab.client, "ip", "mptcp", "endpoint", "flush", check=False)


def reset_paths(lab: labmod.Lab) -> None:
    """Both client paths up with addresses and routes, no endpoints, the in-kernel PM."""
    for name in ("wifi", "lte"):
        labmod.set_path(lab, name, link=True, addr=True)
    _sh(lab.client, "ip", "mptcp", "endpoint", "flush", check=False)
    _sh(lab.client, "sysctl", "-qw", "net.mptcp.path_manager=kernel", check=False)


@dataclass
class StallRun:
    pm: str
    scenario: str
    stall: float | None = None          # seconds; None when lost
    outcome: str = "ok"                 # ok | lost | corrupt
    before_gap: float | None = None     # the largest gap in the second before the break
    recovered: float | None = None      # break -> end of the last gap over HICCUP
    stalled: float | None = None        # all gaps over HICCUP after the break, summed
    subflows_before: int = 0
    lte_joined: float | None = None     # break -> SUB_ESTABLISHED on lte (break-before-make)
    notes: list = field(default_factory=list)
    events: list = field(default_factory=list)  # [s since break, event, saddr, error]


def _gaps(arrivals: list[float], lo: float, hi: float) -> list[tuple[float, float]]:
    """(start, end) of every gap between consecutive arrivals that overlaps [lo, hi]."""
    return [(a, b) for a, b in zip(arrivals, arrivals[1:], strict=False) if b >= lo and a <= hi]


def stall_run(lab: labmod.Lab, pmgr: PathManager, scenario: str, cfg: dict) -> StallRun:
    run = StallRun(pmgr.name, scenario)
    reset_paths(lab)
    if scenario == "break-before-make":
        labmod.set_path(lab, "lte", addr=False)
    nbytes = int(RATE_BPS / 8 * (cfg["before"] + cfg["after"]))
    limit = cfg["before"] + cfg["after"] + 8
    receiver = sender = clock = None
    pmgr.start(scenario)
    t_break = time.monotonic()
    try:
        clock = EventClock(lab.client)
        receiver = _py_in(lab.server, "_receiver", str(limit))
        port = _ready_port(receiver)
        sender = _py_in(lab.client, "_sender", lab.server_addr, str(port), str(nbytes),
                        str(RATE_BPS))
        started = json.loads(sender.stdout.readline() or "{}").get("started")
        if started is None:
            raise RuntimeError(f"sender did not start: {sender.stderr.read()[-300:]}")
        want = 2 if scenario == "make-before-break" else 1

        def on_path():
            return [s for s in diag.subflows(lab.client) if s.rport == port and s.token]

        with contextlib.suppress(RuntimeError):
            _wait(f"{want} subflow(s)", lambda: len(on_path()) >= want, cfg["before"] + 2)
        run.subflows_before = len(on_path())
        if run.subflows_before < want:
            run.notes.append(f"only {run.subflows_before} subflow(s) before the break")
        time.sleep(max(0.0, started + cfg["before"] - time.monotonic()))
        t_break = time.monotonic()
        labmod.set_path(lab, "wifi", link=False)
        if scenario == "break-before-make":
            time.sleep(max(0.0, t_break + BBM_GAP - time.monotonic()))
            labmod.set_path(lab, "lte", addr=True)
            pmgr.address_appeared()
        try:
            sender.wait(limit)
            out, _ = receiver.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            run.outcome = "lost"
            return run
        sent_lines = sender.stdout.read().strip().splitlines()
        if sender.returncode != 0 or not sent_lines or not out.strip():
            run.outcome = "lost"
            run.notes.append((sender.stderr.read().strip().splitlines() or [""])[-1][-200:])
            return run
        sent, got = json.loads(sent_lines[-1]), json.loads(out.strip().splitlines()[-1])
        if got["error"] or (sent["bytes"], sent["sha256"]) != (got["bytes"], got["sha256"]):
            run.outcome = "corrupt" if not got["error"] else "lost"
            return run
        arr = got["arrivals"]
        before = _gaps(arr, t_break - 1.0, t_break - 0.05)
        run.before_gap = round(max((b - a for a, b in before), default=0.0), 4)
        after = _gaps(arr, t_break, t_break + cfg["after"])
        run.stall = round(max((b - a for a, b in after), default=0.0), 4)
        hiccups = [(a, b) for a, b in after if b - a > HICCUP]
        run.stalled = round(sum(b - a for a, b in hiccups), 4)
        run.recovered = round(hiccups[-1][1] - t_break, 4) if hiccups else 0.0
        return run
    finally:
        if clock is not None:
            clock.close()
            run.events = clock.timeline(t_break)
            lte = lab.paths["lte"].client_addr
            run.notes += [f"{kind} {saddr} error {err} at +{t:.3f} s"
                          for t, kind, saddr, err in run.events
                          if kind == "sub_closed" and saddr == lte and err]
            run.lte_joined = next((round(t, 4) for t, kind, saddr, _ in run.events
                                   if kind == "sub_established" and saddr == lte and t > 0),
                                  None)
        _stop(sender)
        _stop(receiver)
        pmgr.stop()


# --- subflow creation latency ------------------------------------------------------------


class EventClock:
    """Timestamps mptcp_pm events in a namespace on receipt, one recv() at a time, in a
    thread of its own (netlink carries no kernel timestamps: a reader that wakes late sees
    two events at once, so sub-millisecond latencies are upper bounds of the wake-up)."""

    def __init__(self, ns: str):
        self.sub = pm.PMEvents(ns)
        self.sock = socket.socket(fileno=os.dup(self.sub.fileno()))
        self.sock.settimeout(0.1)
        self.seen: list[tuple[float, pm.PMEvent]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(pm.PMEvents.RECV_SIZE)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS: events dropped; the latencies skip those tokens
                continue
            now = time.monotonic()
            self.seen += [(now, e) for e in pm.decode_events(data)]

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()
        self.sub.close()

    def timeline(self, t0: float) -> list[list]:
        """[seconds since t0, event, local address, error] per event, for the JSON."""
        return [[round(t - t0, 4), e.type, e.saddr, e.error] for t, e in self.seen]

    def latencies(self) -> list[float]:
        est: dict[int, float] = {}
        sub: dict[int, float] = {}
        for t, e in self.seen:
            if e.type == "established":
                est.setdefault(e.token, t)
            elif e.type == "sub_established":
                sub.setdefault(e.token, t)
        return [sub[k] - est[k] for k in est if k in sub]


def creation_run(lab: labmod.Lab, pmgr: PathManager, count: int) -> dict:
    reset_paths(lab)
    pmgr.start("make-before-break")
    sink = shorts = clock = None
    try:
        sink = _py_in(lab.server, "_sink")
        port = _ready_port(sink)
        clock = EventClock(lab.client)
        shorts = _py_in(lab.client, "_shorts", lab.server_addr, str(port), str(count))
        out, err = shorts.communicate(timeout=count * (SUBFLOW_WAIT + 1) + 30)
        time.sleep(0.2)  # the last events
        clock.close()
        lat = sorted(clock.latencies())
        summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err}
        res = {"pm": pmgr.name, "connections": count, "with_subflow": len(lat),
               "client": summary}
        if lat:
            q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
            res.update(p50=round(statistics.median(lat), 5), p99=round(q[98], 5),
                       max=round(lat[-1], 5), min=round(lat[0], 5))
        return res
    finally:
        if clock is not None and not clock.done.is_set():
            clock.close()
        _stop(shorts)
        _stop(sink)
        pmgr.stop()


# --- report --------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def summarise(runs: list[StallRun]) -> list[dict]:
    rows = []
    for scenario in SCENARIOS:
        goal = GOAL_MBB_STALL if scenario == "make-before-break" else BBM_GAP + GOAL_BBM_SLACK
        for name in PMS:
            mine = [r for r in runs if r.pm == name and r.scenario == scenario]
            if not mine:
                continue
            stalls = [r.stall for r in mine if r.outcome == "ok"]
            lost = len(mine) - len(stalls)
            med = statistics.median(stalls) if stalls and lost <= len(mine) // 2 else None
            rows.append({
                "scenario": scenario, "pm": name, "goal_s": goal,
                "median_s": med, "lost": lost,
                "values": [r.stall if r.outcome == "ok" else r.outcome for r in mine],
                "before_gap_s": [r.before_gap for r in mine],
                "recovered_s": [r.recovered for r in mine],
                "stalled_s": [r.stalled for r in mine],
                "lte_joined_s": [r.lte_joined for r in mine],
                "subflows_before": [r.subflows_before for r in mine],
                "met": med is not None and lost == 0 and med <= goal,
                "notes": sorted({n for r in mine for n in r.notes if n}),
            })
    return rows


def _ms_list(values: list) -> str:
    """Per-run values in ms, "/"-separated (the unit is in the column header)."""
    return "/".join(v if isinstance(v, str) else "-" if v is None else f"{v * 1000:.0f}"
                    for v in values)


def render(rows: list[dict], creation: list[dict], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    short = {"make-before-break": "MBB", "break-before-make": "BBM"}
    t = Table(title=f"Receive stall after wifi dies: longest gap at the receiver "
              f"({meta['repeats']} run(s) each, {RATE_BPS // 1_000_000} Mbit/s, "
              f"kernel {meta['kernel']})")
    for col in ("", "PM", "goal", "median", "runs (ms)", "recovered (ms)", "stalled (ms)",
                "lte join (ms)", "gap before", "met"):
        t.add_column(col, justify="left" if col in ("", "PM") else "right")
    for r in rows:
        med = "lost" if r["median_s"] is None else _fmt(r["median_s"])
        t.add_row(short[r["scenario"]], r["pm"], f"<={_fmt(r['goal_s'])}", med,
                  _ms_list(r["values"]), _ms_list(r["recovered_s"]), _ms_list(r["stalled_s"]),
                  _ms_list(r["lte_joined_s"]) if r["scenario"] == "break-before-make" else "",
                  _fmt(max((v for v in r["before_gap_s"] if v is not None), default=None)),
                  "[green]yes[/]" if r["met"] else "[red]no[/]")
    c = Table(title="Subflow creation: ESTABLISHED -> SUB_ESTABLISHED (client netns events)")
    for col in ("PM", "connections", "with subflow", "p50", "p99", "max", "goal", "met"):
        c.add_column(col, justify="left" if col == "PM" else "right")
    for r in creation:
        met = r.get("p99") is not None and r["p99"] <= GOAL_CREATE_P99 \
            and r["with_subflow"] == r["connections"]
        c.add_row(r["pm"], str(r["connections"]), str(r["with_subflow"]),
                  *("-" if r.get(k) is None else f"{r[k] * 1000:.2f} ms"
                    for k in ("p50", "p99", "max")),
                  f"p99 <= {_fmt(GOAL_CREATE_P99)}", "[green]yes[/]" if met else "[red]no[/]")
    console = Console(width=max(Console().width, 140))
    console.print(t)
    console.print("MBB: both paths up, wifi link dies. BBM: only wifi addressed, wifi link dies, "
                  f"lte address+routes {BBM_GAP} s later. recovered: break -> end of the last "
                  f"gap > {_fmt(HICCUP)}; stalled: those gaps summed; lte join: break -> "
                  "SUB_ESTABLISHED on lte; gap before: largest gap in the second before.")
    for r in rows:
        for n in r["notes"]:
            console.print(f"  note ({short[r['scenario']]}, {r['pm']}): {n}")
    console.print(c)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return worker_main(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.handover", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 repeat, short transfers (~75 s)")
    ap.add_argument("--repeats", type=int, help="runs per stall scenario and path manager")
    ap.add_argument("--connections", type=int, help="short connections per creation run")
    ap.add_argument("--pm", action="append", choices=PMS, help="only these path managers")
    args = ap.parse_args(argv)
    finally_on_sigterm()
    if os.geteuid() != 0:
        print("bench.handover needs root (network namespaces)", file=sys.stderr)
        return 1
    cfg = dict(QUICK if args.quick else FULL)
    cfg["repeats"] = args.repeats or cfg["repeats"]
    cfg["connections"] = args.connections or cfg["connections"]
    pms = [p for p in PMS if p in (args.pm or PMS)]
    if "mptcpd" in pms and not os.access(MPTCPD, os.X_OK):
        print(f"{MPTCPD} missing (apt-get install mptcpd); skipping mptcpd", file=sys.stderr)
        pms.remove("mptcpd")

    t0 = time.monotonic()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lab = labmod.lab_up(endpoints=True)  # limits on both ends; endpoints flushed per run
    # mptcpd's log goes to a scratch directory and into the JSON (results/ ignores only json)
    logdir = Path(tempfile.mkdtemp(prefix="bench-handover-"))
    managers = {n: PathManager(n, lab, logdir) for n in pms}
    runs: list[StallRun] = []
    creation: list[dict] = []
    try:
        for i in range(cfg["repeats"]):
            for scenario in SCENARIOS:
                # rotate the order so no manager always runs first after a reset
                order = pms[i % len(pms):] + pms[:i % len(pms)]
                for name in order:
                    try:
                        runs.append(stall_run(lab, managers[name], scenario, cfg))
                    except Exception as e:  # one failed run must not lose the others
                        runs.append(StallRun(name, scenario, outcome="lost", notes=[str(e)]))
                    print(f"[{time.monotonic() - t0:5.1f}s] {scenario} {name}: "
                          f"{runs[-1].outcome} {_fmt(runs[-1].stall)}", file=sys.stderr)
        for name in [p for p in pms if p in ("mptcpctl", "kernel")]:
            creation.append(creation_run(lab, managers[name], cfg["connections"]))
            print(f"[{time.monotonic() - t0:5.1f}s] creation {name} done", file=sys.stderr)
    finally:
        for m in managers.values():
            with contextlib.suppress(Exception):
                m.stop()
        labmod.lab_down(lab.suffix)
        mptcpd_log = logdir / "mptcpd.log"
        mptcpd_lines = mptcpd_log.read_text().splitlines() if mptcpd_log.exists() else []
        shutil.rmtree(logdir, ignore_errors=True)

    rows = summarise(runs)
    meta = {"kernel": platform.release(), "date": datetime.datetime.now().isoformat(),
            "repeats": cfg["repeats"], "quick": args.quick, "seconds": round(
                time.monotonic() - t0, 1), "rate_bps": RATE_BPS, "bbm_gap_s": BBM_GAP,
            "before_s": cfg["before"], "after_s": cfg["after"],
            "mptcpd": _mptcpd_version() if "mptcpd" in pms else None}
    RESULTS.write_text(json.dumps({
        "meta": meta,
        "goals": {"make_before_break_stall_s": GOAL_MBB_STALL,
                  "break_before_make_stall_s": BBM_GAP + GOAL_BBM_SLACK,
                  "creation_p99_s": GOAL_CREATE_P99},
        "stall": rows, "stall_runs": [vars(r) for r in runs], "creation": creation,
        "mptcpd_log": mptcpd_lines[-200:],
    }, indent=2) + "\n")
    render(rows, creation, meta)
    print(f"wrote {RESULTS.relative_to(ROOT)} ({meta['seconds']} s)")
    return 0


def _mptcpd_version() -> str | None:
    exe = shutil.which(MPTCPD) or MPTCPD
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    return None


if __name__ == "__main__":
    sys.exit(main())
