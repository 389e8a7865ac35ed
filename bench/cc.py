"""Coupled congestion control benchmark on throwaway namespaces: an MPTCP client with N subflows
against one Reno TCP at a shared 20 Mbit/s tbf bottleneck (fairness), and resource pooling over
two disjoint 10 Mbit/s bottlenecks. Prints tables, writes bench/results/cc.json and cc_share.png.
Run as root: `python -m bench.cc [--quick]`."""

import argparse
import contextlib
import datetime
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import finally_on_sigterm
from controller.lab import ns_exec
from controller.transfer import parse_ss

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_JSON = BENCH_DIR / "results" / "cc.json"
RESULTS_PNG = BENCH_DIR / "results" / "cc_share.png"
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)

# The shared bottleneck: tbf on the router's egress towards the server. Its queue (30 ms at
# 20 Mbit/s, ~50 full-size frames) is the only source of RTT: veths add none.
LINK_MBIT = 20
POOL_PATH_MBIT = 10
TBF = {"burst": "32kbit", "latency": "30ms"}
MAX_PATHS = 8  # the kernel's subflow limit per connection
MPTCP_PORT = 5001
TCP_PORT = 5002
POOL_TCP_FLOWS = 3
SAMPLE_S = 0.1  # how often the receiver notes each connection's byte count
# A full-size TCP segment carries 1448 payload bytes in a 1514-byte frame (timestamps on), and
# tbf counts the frame: goodput can reach at most ~95.6% of the tbf rate (less for MPTCP, whose
# DSS option takes from the payload).
FRAME_PAYLOAD = 1448 / 1514

# Goals (task "cc bench").
GOAL_SHARE = (0.40, 0.60)
GOAL_TOTAL = 0.95  # coupled: total goodput / link rate
GOAL_UNCOUPLED_GROWTH = 0.2  # uncoupled: share(N max) - share(N=1) at least this...
GOAL_UNCOUPLED_DIP = 0.05  # ...and never falling by more than this from one N to the next
GOAL_POOL_TOTAL = 0.90  # aggregate / (2 x 10 Mbit/s)
GOAL_POOL_TCP = 0.90  # each TCP flow / (10 Mbit/s / 3)

# Full: 6 N x 4 algorithms x (3 + 20 s + ~4 s daemon up/down) + 4 pooling runs: ~13 minutes.
# Quick: 2 N x 2 algorithms x (1 + 4 s) + 2 pooling runs: ~1.5 minutes.
FULL = {"ns": (1, 2, 3, 4, 6, 8), "algos": ("uncoupled", "lia", "olia", "balia"),
        "skip": 3.0, "measure": 20.0}
QUICK = {"ns": (1, 2), "algos": ("uncoupled", "lia"), "skip": 1.0, "measure": 4.0}


# --- workers: run as `python -m bench.cc _<role> ...` inside a bench namespace ----------------


def worker_recv(expect: int, deadline_s: float) -> None:
    """Listen for MPTCP on MPTCP_PORT and plain TCP on TCP_PORT (wildcard, so joins to any
    address find the listener); read every connection to EOF; note each one's byte count every
    SAMPLE_S (CLOCK_MONOTONIC, shared by all namespaces). Ends when `expect` connections have
    hit EOF or after deadline_s; prints one JSON line."""
    conns: list[dict] = []
    lock = threading.Lock()

    def reader(sock: socket.socket, rec: dict) -> None:
        buf = bytearray(1 << 18)
        with sock:
            while True:
                try:
                    got = sock.recv_into(buf)
                except OSError:
                    got = 0
                if not got:
                    break
                rec["bytes"] += got
        rec["eof"] = time.monotonic()

    def acceptor(ls: socket.socket, kind: str) -> None:
        while True:
            try:
                sock, peer = ls.accept()
            except OSError:
                return
            rec = {"kind": kind, "peer": f"{peer[0]}:{peer[1]}", "bytes": 0, "eof": None,
                   "samples": []}
            with lock:
                conns.append(rec)
            threading.Thread(target=reader, args=(sock, rec), daemon=True).start()

    listeners = []
    for kind, proto, port in (("mptcp", IPPROTO_MPTCP, MPTCP_PORT),
                              ("tcp", socket.IPPROTO_TCP, TCP_PORT)):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(16)
        listeners.append(ls)
        threading.Thread(target=acceptor, args=(ls, kind), daemon=True).start()
    print("ready", flush=True)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        now = time.monotonic()
        with lock:
            for rec in conns:
                rec["samples"].append((round(now, 4), rec["bytes"]))
            done = len(conns) >= expect and all(r["eof"] for r in conns)
        if done:
            break
        time.sleep(SAMPLE_S)
    for ls in listeners:
        ls.close()
    with lock:
        print(json.dumps({"conns": conns}), flush=True)


def worker_send(addr: str, port: int, proto: str, count: int, seconds: float) -> None:
    """`count` connections to addr:port, each sending as fast as it can for `seconds`."""
    number = IPPROTO_MPTCP if proto == "mptcp" else socket.IPPROTO_TCP
    end = time.monotonic() + seconds
    block = bytes(1 << 16)

    def one() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, number) as s:
            s.connect((addr, port))
            s.settimeout(0.5)
            while time.monotonic() < end:
                with contextlib.suppress(TimeoutError):
                    s.send(block)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- namespaces --------------------------------------------------------------------------------


class BenchError(Exception):
    """A command the bench needs failed."""


def _run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise BenchError(f"`{' '.join(argv)}` failed: {msg[-1] if msg else cp.returncode}")
    return cp


class Namespaces:
    """The namespaces this bench made (unique suffix) and the daemons it started in them;
    close() stops the daemons, kills what runs inside, deletes the namespaces (their veths go
    with them), in reverse order of creation."""

    def __init__(self) -> None:
        self.suffix = secrets.token_hex(3)
        self.made: list[str] = []
        self.daemons: list[str] = []

    def add(self, role: str, forward: bool = False) -> str:
        name = f"ccb-{role}-{self.suffix}"
        _run(["ip", "netns", "add", name])
        self.made.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        sysctls = ["net.mptcp.enabled=1", "net.ipv4.tcp_congestion_control=reno",
                   # no cached ssthresh from the previous run towards the same server
                   "net.ipv4.tcp_no_metrics_save=1",
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        if forward:
            sysctls.append("net.ipv4.ip_forward=1")
        for kv in sysctls:
            _run(["ip", "netns", "exec", name, "sysctl", "-qw", kv])
        return name

    def veth(self, a_ns: str, a_if: str, a_cidr: str, b_ns: str, b_if: str, b_cidr: str) -> None:
        """A veth pair made directly in its two namespaces, addressed, offloads off (tbf must
        see wire-size frames), up."""
        _run(["ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if,
              "netns", b_ns])
        for ns, dev, cidr in ((a_ns, a_if, a_cidr), (b_ns, b_if, b_cidr)):
            _run(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "off", "tso", "off",
                  "gso", "off"])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])

    def close(self) -> None:
        for ns in reversed(self.daemons):
            _run(_mptcpctl("down", "--netns", ns), check=False, timeout=60)
        self.daemons.clear()
        for ns in reversed(self.made):
            cp = _run(["ip", "netns", "pids", ns], check=False)
            for tok in cp.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(tok), 9)
            _run(["ip", "netns", "del", ns], check=False)
        self.made.clear()


def _tbf(ns: str, dev: str, mbit: int) -> None:
    _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
          "burst", TBF["burst"], "latency", TBF["latency"]])


def _source_route(ns: str, addr: str, dev: str, gw: str, table: int) -> None:
    """Traffic from `addr` leaves by `dev` (what the daemon's subflows from it rely on)."""
    _run(["ip", "-n", ns, "rule", "add", "from", addr, "table", str(table),
          "priority", str(1000 + table)])
    _run(["ip", "-n", ns, "route", "add", "default", "via", gw, "dev", dev, "table", str(table)])


def build_shared(nets: Namespaces) -> dict:
    """MPTCP client (MAX_PATHS veths, 10.70.i.0/24, source-routed) and TCP client (10.71.0.0/24)
    to a router; router to server (10.72.0.0/24) through the tbf bottleneck."""
    mc, tc_, r, s = (nets.add("m"), nets.add("t"), nets.add("r", forward=True), nets.add("s"))
    for i in range(MAX_PATHS):
        nets.veth(mc, f"m{i}", f"10.70.{i}.2/24", r, f"rm{i}", f"10.70.{i}.1/24")
        _source_route(mc, f"10.70.{i}.2", f"m{i}", f"10.70.{i}.1", 100 + i)
    _run(["ip", "-n", mc, "route", "add", "default", "via", "10.70.0.1", "dev", "m0"])
    nets.veth(tc_, "t0", "10.71.0.2/24", r, "rt", "10.71.0.1/24")
    _run(["ip", "-n", tc_, "route", "add", "default", "via", "10.71.0.1"])
    nets.veth(r, "rs", "10.72.0.1/24", s, "s0", "10.72.0.2/24")
    _run(["ip", "-n", s, "route", "add", "default", "via", "10.72.0.1"])
    _tbf(r, "rs", LINK_MBIT)
    _run(["ip", "-n", s, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])
    return {"mptcp": mc, "tcp": tc_, "router": r, "server": s, "server_addr": "10.72.0.2",
            "bottlenecks": [(r, "rs")]}


def build_pool(nets: Namespaces) -> dict:
    """Path A: MPTCP client 10.73.1.0/24 -> router -> server (10.75.0.0/24), tbf 10 Mbit/s on
    the router's egress to the server, shared with the TCP client (10.74.0.0/24). Path B:
    MPTCP client 10.73.2.0/24 -> a second router -> server (10.76.0.0/24), tbf 10 Mbit/s on
    that router's egress. Both shapers sit on a router: a shaper on the sender's own egress
    would be throttled by TCP Small Queues (a couple of packets per socket in the local qdisc)
    and by local-drop CWR, not by the link. The server has one address per path; the MPTCP
    connection goes to path A's, and path B's subflow reaches it through the second router."""
    mc, tc_, r = nets.add("m"), nets.add("t"), nets.add("r", forward=True)
    q, s = nets.add("q", forward=True), nets.add("s")
    nets.veth(mc, "mA", "10.73.1.2/24", r, "ra", "10.73.1.1/24")
    nets.veth(mc, "mB", "10.73.2.2/24", q, "qb", "10.73.2.1/24")
    nets.veth(tc_, "t0", "10.74.0.2/24", r, "rt", "10.74.0.1/24")
    nets.veth(r, "rs", "10.75.0.1/24", s, "s0", "10.75.0.2/24")
    nets.veth(q, "qs", "10.76.0.1/24", s, "s1", "10.76.0.2/24")
    _source_route(mc, "10.73.1.2", "mA", "10.73.1.1", 101)
    _source_route(mc, "10.73.2.2", "mB", "10.73.2.1", 102)
    _run(["ip", "-n", mc, "route", "add", "default", "via", "10.73.1.1", "dev", "mA"])
    _run(["ip", "-n", tc_, "route", "add", "default", "via", "10.74.0.1"])
    # path B's router reaches the server's path-A address over its own link
    _run(["ip", "-n", q, "route", "add", "10.75.0.2/32", "via", "10.76.0.2", "dev", "qs"])
    # the server answers path B's client address by path B (unshaped direction)
    _run(["ip", "-n", s, "route", "add", "10.73.2.0/24", "via", "10.76.0.1", "dev", "s1"])
    _run(["ip", "-n", s, "route", "add", "default", "via", "10.75.0.1"])
    _tbf(r, "rs", POOL_PATH_MBIT)
    _tbf(q, "qs", POOL_PATH_MBIT)
    _run(["ip", "-n", s, "mptcp", "limits", "set", "subflows", "8", "add_addr_accepted", "8"])
    return {"mptcp": mc, "tcp": tc_, "router": r, "server": s, "server_addr": "10.75.0.2",
            "bottlenecks": [(r, "rs"), (q, "qs")]}


# --- one run -----------------------------------------------------------------------------------


def _mptcpctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def _worker(ns: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.cc", *args],
                            cwd=ROOT, env=env, text=True, **kw)


def _tbf_stats(ns: str, dev: str) -> dict:
    cp = _run(["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev], check=False)
    with contextlib.suppress(ValueError, TypeError):
        for q in json.loads(cp.stdout or "[]"):
            if q.get("kind") == "tbf":
                return {"bytes": q.get("bytes", 0), "drops": q.get("drops", 0)}
    return {"bytes": 0, "drops": 0}


def _subflow_check(ns: str, server: str) -> dict:
    """Subflows of the client connection as the daemon (`status --json`) and `ss` see them, with
    the daemon's per-subflow cwnd and clamp (for the diagnosis)."""
    out: dict = {"status": None, "ss": None, "windows": []}
    cp = _run(_mptcpctl("status", "--netns", ns, "--json"), check=False)
    with contextlib.suppress(ValueError):
        data = json.loads(cp.stdout)
        for c in data.get("connections", []):
            if c.get("side") == "client" and c.get("remote") == server:
                est = [sf for sf in c["subflows"] if sf.get("established")]
                out["status"] = len(est)
                out["windows"] = [{"local": sf["local"], "cwnd": sf.get("cwnd"),
                                   "clamp": sf.get("clamp"), "rtt_ms": sf.get("rtt_ms")}
                                  for sf in est]
    cp = ns_exec(ns, ["ss", "-tniH", "dst", f"{server}:{MPTCP_PORT}"], capture_output=True,
                 text=True, timeout=10)
    out["ss"] = sum(1 for sf in parse_ss(cp.stdout) if sf["mptcp"])
    return out


def _rate_mbit(samples: list, t_from: float, t_to: float) -> float:
    """Goodput over [t_from, t_to] from (time, bytes) samples (nearest samples inside)."""
    inside = [(t, b) for t, b in samples if t_from <= t <= t_to]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    (t0, b0), (t1, b1) = inside[0], inside[-1]
    return (b1 - b0) * 8 / (t1 - t0) / 1e6


def run_flows(topo: dict, algo: str, ifaces: list[str], tcp_flows: int, skip: float,
              measure: float, nets: Namespaces) -> dict:
    """mptcpctl up on the MPTCP client, one MPTCP bulk flow and `tcp_flows` TCP bulk flows to
    the server for skip + measure seconds; goodputs over the last `measure` seconds."""
    mc, server = topo["mptcp"], topo["server_addr"]
    argv = _mptcpctl("up", "--netns", mc, "--cc", algo)
    for dev in ifaces:
        argv += ["--iface", dev]
    _run(argv, timeout=90)
    nets.daemons.append(mc)
    procs: list[subprocess.Popen] = []
    try:
        total = skip + measure + 0.5
        recv = _worker(topo["server"], "_recv", "--expect", str(1 + tcp_flows),
                       "--deadline", str(total + 10), stdout=subprocess.PIPE)
        procs.append(recv)
        if recv.stdout.readline().strip() != "ready":
            raise BenchError("receiver did not start")
        t0 = time.monotonic()
        procs.append(_worker(mc, "_send", "--connect", server, "--port", str(MPTCP_PORT),
                             "--proto", "mptcp", "--seconds", str(total)))
        procs.append(_worker(topo["tcp"], "_send", "--connect", server, "--port",
                             str(TCP_PORT), "--proto", "tcp", "--count", str(tcp_flows),
                             "--seconds", str(total)))
        a, b = t0 + skip, t0 + skip + measure
        time.sleep(max(0.0, a - time.monotonic()))
        wire0 = [_tbf_stats(ns, dev) for ns, dev in topo["bottlenecks"]]
        checks = [_subflow_check(mc, server)]
        time.sleep(max(0.0, b - 2.0 - time.monotonic()))
        checks.append(_subflow_check(mc, server))
        time.sleep(max(0.0, b - time.monotonic()))
        wire1 = [_tbf_stats(ns, dev) for ns, dev in topo["bottlenecks"]]
        wire_t = time.monotonic() - a
        out, _ = recv.communicate(timeout=total + 30)
        for p in procs[1:]:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        _run(_mptcpctl("down", "--netns", mc), check=False, timeout=60)
        nets.daemons.remove(mc)
    conns = json.loads(out.strip().splitlines()[-1])["conns"]
    mptcp = [_rate_mbit(c["samples"], a, b) for c in conns if c["kind"] == "mptcp"]
    tcp = [_rate_mbit(c["samples"], a, b) for c in conns if c["kind"] == "tcp"]
    if len(mptcp) != 1 or len(tcp) != tcp_flows:
        raise BenchError(f"expected 1 MPTCP and {tcp_flows} TCP connections, the receiver saw "
                         f"{len(mptcp)} and {len(tcp)}")
    total_mbit = mptcp[0] + sum(tcp)
    return {
        "mptcp_mbit": round(mptcp[0], 3), "tcp_mbit": [round(x, 3) for x in tcp],
        "total_mbit": round(total_mbit, 3),
        "share": round(mptcp[0] / total_mbit, 4) if total_mbit else None,
        "wire_mbit": [round((w1["bytes"] - w0["bytes"]) * 8 / wire_t / 1e6, 3)
                      for w0, w1 in zip(wire0, wire1, strict=True)],
        "drops": [w1["drops"] - w0["drops"] for w0, w1 in zip(wire0, wire1, strict=True)],
        "subflows_status": [c["status"] for c in checks],
        "subflows_ss": [c["ss"] for c in checks],
        "windows": checks[-1]["windows"],
    }


# --- goals, table, plot ------------------------------------------------------------------------


def shared_goals(algo: str, runs: dict[int, dict]) -> dict:
    ns = sorted(runs)
    ok_runs = [n for n in ns if "error" not in runs[n]]
    subflows_ok = all(
        min(s for s in runs[n]["subflows_status"] + runs[n]["subflows_ss"] if s is not None) == n
        and max(runs[n]["subflows_status"] + runs[n]["subflows_ss"]) == n
        for n in ok_runs if None not in runs[n]["subflows_status"])
    if len(ok_runs) != len(ns):
        return {"met": False, "why": "a run failed", "subflows_ok": subflows_ok}
    shares = [runs[n]["share"] for n in ns]
    if algo == "uncoupled":
        growth = shares[-1] - shares[0]
        dips = [a - b for a, b in zip(shares, shares[1:], strict=False)]
        met = growth >= GOAL_UNCOUPLED_GROWTH and all(d <= GOAL_UNCOUPLED_DIP for d in dips)
        why = f"share {shares[0]:.2f} -> {shares[-1]:.2f}"
    else:
        in_band = all(GOAL_SHARE[0] <= s <= GOAL_SHARE[1] for s in shares)
        totals = [runs[n]["total_mbit"] / LINK_MBIT for n in ns]
        met = in_band and min(totals) >= GOAL_TOTAL
        why = (f"share {min(shares):.2f}..{max(shares):.2f}, "
               f"total >= {min(totals):.0%} of the link")
    return {"met": met and subflows_ok, "why": why, "subflows_ok": subflows_ok}


def pool_goals(run: dict) -> dict:
    if "error" in run:
        return {"met": False, "why": "the run failed"}
    agg = run["total_mbit"] / (2 * POOL_PATH_MBIT)
    tcp_min = min(run["tcp_mbit"]) / (POOL_PATH_MBIT / POOL_TCP_FLOWS)
    return {"met": agg >= GOAL_POOL_TOTAL and tcp_min >= GOAL_POOL_TCP,
            "aggregate_frac": round(agg, 4), "tcp_min_frac": round(tcp_min, 4)}


def render(results: dict):
    from rich.table import Table

    ns = results["n_values"]
    reps = results.get("repeat", 1)
    t1 = Table(title=f"Shared {LINK_MBIT} Mbit/s bottleneck: MPTCP share of goodput "
                     f"(total / link) vs one Reno TCP, {results['measure_seconds']:.0f} s runs"
                     + (f", median [range] of {reps}" if reps > 1 else ""))
    t1.add_column("cc")
    for n in ns:
        t1.add_column(f"N={n}", justify="right")
    t1.add_column("goal")
    for algo, runs in results["shared"].items():
        cells = []
        for n in ns:
            r = runs[str(n)]
            if "error" in r:
                cells.append("[red]error[/]")
                continue
            lo, hi = GOAL_SHARE
            colour = "green" if lo <= r["share"] <= hi else "yellow"
            sub = "" if set(r["subflows_status"] + r["subflows_ss"]) == {n} else " [red]sf?[/]"
            spread = (f" [{min(r['share_runs']):.2f}-{max(r['share_runs']):.2f}]"
                      if len(r.get("share_runs", [])) > 1 else "")
            cells.append(f"[{colour}]{r['share']:.2f}[/]{spread} "
                         f"({r['total_mbit'] / LINK_MBIT:.0%}){sub}")
        g = results["goals"]["shared"][algo]
        cells.append(("[green]met[/] " if g["met"] else "[red]missed[/] ") + g["why"])
        t1.add_row(algo, *cells)

    t2 = Table(title=f"Resource pooling: two {POOL_PATH_MBIT} Mbit/s bottlenecks, "
                     f"{POOL_TCP_FLOWS} Reno TCP on path A")
    for col in ("cc", "aggregate Mbit/s", "of 20", "MPTCP Mbit/s", "path A / B wire",
                "TCP flows Mbit/s", "min TCP / (10/3)", "goal"):
        t2.add_column(col, justify="left" if col in ("cc", "goal") else "right")
    for algo, r in results["pooling"].items():
        if "error" in r:
            t2.add_row(algo, "[red]error[/]", "", "", "", "", "", r["error"][:60])
            continue
        g = results["goals"]["pooling"][algo]
        t2.add_row(algo, f"{r['total_mbit']:.2f}", f"{g['aggregate_frac']:.0%}",
                   f"{r['mptcp_mbit']:.2f}", " / ".join(f"{w:.1f}" for w in r["wire_mbit"]),
                   " ".join(f"{x:.2f}" for x in r["tcp_mbit"]), f"{g['tcp_min_frac']:.0%}",
                   "[green]met[/]" if g["met"] else "[red]missed[/]")
    return t1, t2


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhspan(*GOAL_SHARE, color="tab:green", alpha=0.12, label="goal band 0.40-0.60")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ns = results["n_values"]
    ax.plot(ns, [n / (n + 1) for n in ns], color="grey", ls="--", lw=1,
            label="N/(N+1): N independent Renos")
    for algo, runs in results["shared"].items():
        # Shares kept from an earlier --part shared run may cover other N than this run's.
        pts = [(n, runs[str(n)]["share"]) for n in ns
               if "error" not in runs.get(str(n), {"error": "not run"})]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=algo)
    ax.set_xlabel("MPTCP subflows N (one path each)")
    ax.set_ylabel("MPTCP share of total goodput")
    ax.set_title(f"MPTCP vs one Reno TCP at a shared {LINK_MBIT} Mbit/s tbf bottleneck")
    ax.set_xticks(ns)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    RESULTS_PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS_PNG, dpi=120)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------


def bench(quick: bool, parts: tuple[str, ...], console, override: dict | None = None) -> dict:
    """Run the parts asked for; a part not run keeps its results from an existing cc.json of
    the same mode (so one part can be re-run alone). `override` replaces profile entries (ns,
    algos, measure) for a partial exploration run."""
    prof = dict(QUICK if quick else FULL, **(override or {}))
    skip, measure = prof["skip"], prof["measure"]
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "mode": ("quick" if quick else "full") + ("+custom" if override else ""),
        "skip_seconds": skip, "measure_seconds": measure, "link_mbit": LINK_MBIT,
        "tbf": TBF, "frame_payload_ceiling": round(FRAME_PAYLOAD, 4),
        "n_values": list(prof["ns"]), "shared": {}, "pooling": {},
        "goals": {"shared": {}, "pooling": {}},
    }
    if set(parts) != {"shared", "pooling"} and RESULTS_JSON.exists():
        with contextlib.suppress(ValueError):
            old = json.loads(RESULTS_JSON.read_text())
            if old.get("mode") == results["mode"]:
                for part in {"shared", "pooling"} - set(parts):
                    results[part] = old.get(part, {})
                    results["goals"][part] = old.get("goals", {}).get(part, {})
                    results[f"{part}_date"] = old.get(f"{part}_date", old.get("date"))
    for part in parts:
        results[f"{part}_date"] = results["date"]
    if "shared" in parts:
        _bench_shared(prof, results, console)
    if "pooling" in parts:
        _bench_pooling(prof, results, console)
    return results


def median_run(rounds: list[dict]) -> dict:
    """Of repeated runs of one (algo, N): the run with the median share, with every run's share
    in "share_runs"; a failed run fails the cell."""
    bad = [r for r in rounds if "error" in r]
    if bad:
        return bad[0]
    ordered = sorted(rounds, key=lambda r: r["share"])
    return dict(ordered[(len(ordered) - 1) // 2], share_runs=[r["share"] for r in rounds])


def _bench_shared(prof: dict, results: dict, console) -> None:
    skip, measure, repeat = prof["skip"], prof["measure"], prof.get("repeat", 1)
    results["repeat"] = repeat
    nets = Namespaces()
    rounds: dict[tuple[str, int], list[dict]] = {}
    try:
        topo = build_shared(nets)
        # Rounds outermost: the machine's noise drifts, so each round sees every cell once.
        for rnd in range(repeat):
            for algo in prof["algos"]:
                for n in prof["ns"]:
                    try:
                        r = run_flows(topo, algo, [f"m{i}" for i in range(n)], 1, skip,
                                      measure, nets)
                    except (BenchError, subprocess.SubprocessError, ValueError, OSError) as e:
                        r = {"error": str(e)}
                    rounds.setdefault((algo, n), []).append(r)
                    tag = f" round {rnd + 1}/{repeat}" if repeat > 1 else ""
                    console.print(f"shared {algo:9} N={n}{tag}: " + (
                        f"share {r['share']:.3f} total {r['total_mbit']:.2f} Mbit/s "
                        f"subflows {r['subflows_status']}/{r['subflows_ss']} drops {r['drops']}"
                        if "error" not in r else f"[red]{r['error']}[/]"))
        for algo in prof["algos"]:
            runs = {str(n): median_run(rounds[algo, n]) for n in prof["ns"]}
            results["shared"][algo] = runs
            results["goals"]["shared"][algo] = shared_goals(
                algo, {int(k): v for k, v in runs.items()})
    finally:
        nets.close()


def _bench_pooling(prof: dict, results: dict, console) -> None:
    skip, measure = prof["skip"], prof["measure"]
    nets = Namespaces()
    try:
        topo = build_pool(nets)
        for algo in prof["algos"]:
            try:
                r = run_flows(topo, algo, ["mA", "mB"], POOL_TCP_FLOWS, skip, measure, nets)
            except (BenchError, subprocess.SubprocessError, ValueError, OSError) as e:
                r = {"error": str(e)}
            results["pooling"][algo] = r
            results["goals"]["pooling"][algo] = pool_goals(r)
            console.print(f"pooling {algo:9}: " + (
                f"total {r['total_mbit']:.2f} MPTCP {r['mptcp_mbit']:.2f} TCP {r['tcp_mbit']} "
                f"subflows {r['subflows_status']}/{r['subflows_ss']}"
                if "error" not in r else f"[red]{r['error']}[/]"))
    finally:
        nets.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_recv":
        ap = argparse.ArgumentParser(prog="bench.cc _recv")
        ap.add_argument("--expect", type=int, required=True)
        ap.add_argument("--deadline", type=float, required=True)
        a = ap.parse_args(argv[1:])
        worker_recv(a.expect, a.deadline)
        return 0
    if argv and argv[0] == "_send":
        ap = argparse.ArgumentParser(prog="bench.cc _send")
        ap.add_argument("--connect", required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--proto", choices=("mptcp", "tcp"), required=True)
        ap.add_argument("--count", type=int, default=1)
        ap.add_argument("--seconds", type=float, required=True)
        a = ap.parse_args(argv[1:])
        worker_send(a.connect, a.port, a.proto, a.count, a.seconds)
        return 0

    ap = argparse.ArgumentParser(prog="python -m bench.cc", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="N in {1, 2}, uncoupled and lia, 5 s runs (a smoke run)")
    ap.add_argument("--part", choices=("all", "shared", "pooling"), default="all",
                    help="run one part only; the other keeps its results from cc.json")
    ap.add_argument("--n", help="comma-separated subflow counts (default: the profile's)")
    ap.add_argument("--algo", help="comma-separated algorithms (default: the profile's)")
    ap.add_argument("--seconds", type=float, help="measured seconds per run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per shared-bottleneck cell, interleaved; the median counts")
    args = ap.parse_args(argv)
    finally_on_sigterm()
    override: dict = {}
    try:
        if args.n:
            override["ns"] = tuple(int(x) for x in args.n.split(","))
            if not all(1 <= n <= MAX_PATHS for n in override["ns"]):
                raise ValueError
    except ValueError:
        print(f"--n takes subflow counts between 1 and {MAX_PATHS}", file=sys.stderr)
        return 2
    if args.algo:
        override["algos"] = tuple(args.algo.split(","))
        bad = set(override["algos"]) - set(FULL["algos"])
        if bad:
            print(f"unknown algorithm {sorted(bad)[0]!r}; choose from {', '.join(FULL['algos'])}",
                  file=sys.stderr)
            return 2
    if args.seconds:
        override["measure"] = args.seconds
    if args.repeat != 1:
        if not 1 <= args.repeat <= 20:
            print("--repeat takes 1 to 20 runs", file=sys.stderr)
            return 2
        override["repeat"] = args.repeat
    if os.geteuid() != 0:
        print("bench.cc needs root (network namespaces, BPF)", file=sys.stderr)
        return 1
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    started = time.monotonic()
    parts = ("shared", "pooling") if args.part == "all" else (args.part,)
    results = bench(args.quick, parts, console, override)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    plot(results)
    for table in render(results):
        console.print(table)
    console.print(f"goodput ceiling from headers alone: {FRAME_PAYLOAD:.1%} of the tbf rate "
                  f"(1448-byte payload per 1514-byte frame); 'wire' columns are tbf's own count")
    console.print(f"wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_PNG.relative_to(ROOT)} "
                  f"in {results['wall_seconds']:.0f} s")
    met = all(g["met"] for part in results["goals"].values() for g in part.values())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
