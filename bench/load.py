"""Load benchmark on one netns lab: thousands of concurrent MPTCP connections whose second
subflow mptcpctl creates; every byte checked, every path-manager event counted, the daemon's
memory and CPU measured. Prints a table, writes bench/results/load.json. Run as root:
`python -m bench.load [--quick]`."""

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.common import finally_on_sigterm
from controller import diag, pm
from controller import lab as labmod

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "load.json"
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
# linux/mptcp.h: getsockopt(SOL_MPTCP, MPTCP_INFO); struct mptcp_info's first byte counts the
# subflows beyond the initial one.
SOL_MPTCP = 284
MPTCP_INFO = 1

# Goals (issue "Hostile networks and bad input / faults and load").
GOAL_RSS_MB = 150

# Full: 2,000 connections x 64 KiB (~128 MiB through the lab). Quick: 200 connections.
FULL = {"connections": 2000, "bytes": 64 * 1024, "phase_timeout": 150.0}
QUICK = {"connections": 200, "bytes": 64 * 1024, "phase_timeout": 40.0}
# Path rates: this measures the daemon under load, not the shapers; 20/10 Mbit would make a
# 128 MiB run take over half a minute of queueing and SYN retries on top.
WIFI_MBIT, LTE_MBIT = 200, 100
BLOCK = 1 << 20              # seeded pseudo-random block each connection's payload is cut from
HEADER = struct.Struct("!II")  # connection id, payload length: what the server checks against
JOIN_WAIT = 5.0              # after the last byte is queued, how long to wait for missing joins
LISTEN_BACKLOG = 8192        # server listen(); somaxconn and tcp_max_syn_backlog raised to match
SETTLE = 15.0                # after the client exits, how long to wait for the last CLOSED events
SAMPLE_PERIOD = 0.25         # daemon /proc sampling, seconds
CLK_TCK = os.sysconf("SC_CLK_TCK")
PM_EVENTS = ("created", "established", "closed", "announced", "removed", "sub_established",
             "sub_closed", "sub_priority", "listener_created", "listener_closed")


# --- shared by client and server: what connection i sends -----------------------------------


def _block() -> bytes:
    """The seeded block, twice over, so any BLOCK-long window is one slice."""
    b = random.Random(20240601).randbytes(BLOCK)
    return b + b


def _payload(block: bytes, conn_id: int, nbytes: int) -> memoryview:
    off = (conn_id * 7919) % BLOCK
    return memoryview(block)[off:off + nbytes]


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        hard = max(hard, want)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _extra_subflows(s: socket.socket) -> int | None:
    try:
        return s.getsockopt(SOL_MPTCP, MPTCP_INFO, 64)[0]
    except OSError:
        return None


# --- workers: run as `python -m bench.load _<role> ...` inside a lab namespace ----------------


class _Rx:
    """Server side of one connection: the header, then bytes hashed until EOF."""

    def __init__(self, sock: socket.socket):
        self.sock, self.head, self.hash, self.got = sock, b"", hashlib.sha256(), 0
        self.reply = b""


def worker_server(count: int, timeout: float) -> None:
    """Accept `count` connections; per connection read id + length, then the payload to EOF;
    check length and SHA-256 against the seeded data; answer "ok|bad LEN SHA"; close. One
    process, one selector. Prints one JSON summary line."""
    _raise_nofile(count * 2 + 256)
    block = _block()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", 0))
    ls.listen(LISTEN_BACKLOG)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    print(f"ready {ls.getsockname()[1]}", flush=True)
    res = Counter()
    bad: list[str] = []
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    deadline = time.monotonic() + timeout
    while res["done"] < count and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            if key.data is None:
                while True:
                    try:
                        conn, _ = ls.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    res["accepted"] += 1
                    sel.register(conn, selectors.EVENT_READ, _Rx(conn))
                continue
            rx: _Rx = key.data
            try:
                n = rx.sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError as e:
                res["done"] += 1
                res["errors"] += 1
                bad.append(f"recv: {e}")
                sel.unregister(rx.sock)
                rx.sock.close()
                continue
            chunk = view[:n]
            if len(rx.head) < HEADER.size:
                take = HEADER.size - len(rx.head)
                rx.head += bytes(chunk[:take])
                chunk = chunk[take:]
            rx.hash.update(chunk)
            rx.got += len(chunk)
            if n:
                continue
            # EOF: check what arrived against what connection <id> sends
            res["done"] += 1
            sha = rx.hash.hexdigest()
            status = "bad"
            if len(rx.head) == HEADER.size:
                conn_id, nbytes = HEADER.unpack(rx.head)
                want = hashlib.sha256(_payload(block, conn_id, nbytes)).hexdigest()
                if rx.got == nbytes and sha == want:
                    status = "ok"
                else:
                    bad.append(f"conn {conn_id}: {rx.got}/{nbytes} bytes, sha ok={sha == want}")
            else:
                bad.append(f"short header ({len(rx.head)} bytes)")
            res[status] += 1
            res["bytes"] += rx.got
            sel.unregister(rx.sock)
            with contextlib.suppress(OSError):
                rx.sock.setblocking(True)
                rx.sock.settimeout(2)
                rx.sock.sendall(f"{status} {rx.got} {sha}\n".encode())
            rx.sock.close()
    print(json.dumps({"accepted": res["accepted"], "done": res["done"], "ok": res["ok"],
                      "bad": res["bad"], "errors": res["errors"], "bytes": res["bytes"],
                      "timed_out": res["done"] < count, "problems": bad[:20]}), flush=True)


class _Tx:
    """Client side of one connection: the bytes to send, how far, and what came back."""

    def __init__(self, conn_id: int, sock: socket.socket, data: memoryview):
        self.id, self.sock, self.data, self.sent = conn_id, sock, data, 0
        self.sha = hashlib.sha256(data[HEADER.size:]).hexdigest()
        self.joined = False
        self.error: str | None = None
        self.reply = b""


def worker_client(addr: str, port: int, count: int, nbytes: int, timeout: float) -> None:
    """Open `count` MPTCP connections at once (non-blocking), send each one's header and
    payload, wait until every connection has its extra subflow (or JOIN_WAIT passes), print a
    "hold" line and keep them all open until a line arrives on stdin; then half-close each,
    read the server's verdict, close. Prints one JSON summary line."""
    _raise_nofile(count * 2 + 256)
    block = _block()
    sel = selectors.DefaultSelector()
    conns: list[_Tx] = []
    t0 = time.monotonic()
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        s.setblocking(False)
        data = memoryview(HEADER.pack(i, nbytes) + bytes(_payload(block, i, nbytes)))
        tx = _Tx(i, s, data)
        conns.append(tx)
        err = s.connect_ex((addr, port))
        if err not in (0, 115):  # EINPROGRESS
            tx.error = f"connect: {os.strerror(err)}"
            continue
        sel.register(s, selectors.EVENT_WRITE, tx)
    t_opened = time.monotonic() - t0
    deadline = t0 + timeout
    pending = {tx.id for tx in conns if tx.error is None}
    last_sent = None
    next_poll = 0.0
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            tx: _Tx = key.data
            try:
                tx.sent += tx.sock.send(tx.data[tx.sent:])
            except BlockingIOError:
                continue
            except OSError as e:
                tx.error = f"send: {e}"
            if tx.error or tx.sent == len(tx.data):
                sel.unregister(tx.sock)
                pending.discard(tx.id)
                if not pending:
                    last_sent = time.monotonic()
        now = time.monotonic()
        if now >= next_poll:
            next_poll = now + 0.1
            for tx in conns:
                if not tx.joined and tx.error is None:
                    tx.joined = bool(_extra_subflows(tx.sock))
        if last_sent is not None and (all(tx.joined or tx.error for tx in conns)
                                      or now - last_sent > JOIN_WAIT):
            break
    t_sent = time.monotonic() - t0
    for tx in conns:
        if tx.id in pending:
            tx.error = tx.error or f"send timed out ({tx.sent}/{len(tx.data)} bytes)"
    live = [tx for tx in conns if tx.error is None]
    print(json.dumps({"hold": True, "live": len(live), "joined": sum(tx.joined for tx in conns),
                      "t": round(t_sent, 3)}), flush=True)
    sys.stdin.readline()  # the bench counts subflows while everything is open
    t_release = time.monotonic()
    for tx in live:
        try:
            tx.sock.shutdown(socket.SHUT_WR)
            sel.register(tx.sock, selectors.EVENT_READ, tx)
        except OSError as e:
            tx.error = f"shutdown: {e}"
    open_ = {tx.id for tx in live if tx.error is None}
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            tx = key.data
            try:
                got = tx.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError as e:
                tx.error, got = f"recv: {e}", b""
            tx.reply += got
            if not got:
                sel.unregister(tx.sock)
                open_.discard(tx.id)
    verdict = Counter()
    problems: list[str] = []
    for tx in conns:
        parts = tx.reply.decode(errors="replace").split()
        if tx.id in open_:
            tx.error = tx.error or "no verdict in time"
        if tx.error is None and parts == ["ok", str(nbytes), tx.sha]:
            verdict["intact"] += 1
        else:
            verdict["failed"] += 1
            problems.append(f"conn {tx.id}: {tx.error or ' '.join(parts)[:80]}")
        tx.sock.close()
    print(json.dumps({"connections": count, "intact": verdict["intact"],
                      "failed": verdict["failed"], "joined": sum(tx.joined for tx in conns),
                      "open_s": round(t_opened, 3), "sent_s": round(t_sent, 3),
                      "close_s": round(time.monotonic() - t_release, 3),
                      "problems": problems[:20]}), flush=True)


def worker_main(argv: list[str]) -> int:
    role, args = argv[0], argv[1:]
    if role == "_server":
        worker_server(int(args[0]), float(args[1]))
    elif role == "_client":
        worker_client(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]))
    else:
        print(f"unknown worker role {role}", file=sys.stderr)
        return 2
    return 0


# --- the lab side --------------------------------------------------------------------------


def _py_in(ns: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.load",
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


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
                        text=True, cwd=ROOT, timeout=120)
    if check and cp.returncode != 0:
        raise RuntimeError(f"mptcpctl {' '.join(args)}: {cp.stderr.strip()}")
    return cp


def _status(ns: str) -> dict:
    return json.loads(_cli("status", "--netns", ns, "--json").stdout)


def _json_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The next stdout line of a worker as JSON; RuntimeError if it exits or stays silent."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    line = box[0] if box else ""
    if not line.strip():
        err = "" if proc.poll() is None else proc.stderr.read()[-300:]
        raise RuntimeError(f"worker said nothing within {timeout:.0f} s {err}".strip())
    return json.loads(line)


class EventCounter:
    """Counts mptcp_pm events in a namespace from a thread of its own, on a socket with a
    large receive buffer; an ENOBUFS (the kernel dropped events for us) is counted too."""

    def __init__(self, ns: str):
        self.sub = pm.PMEvents(ns)
        self.sock = socket.socket(fileno=os.dup(self.sub.fileno()))
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE: root may pass rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)
        self.sock.settimeout(0.1)
        self.types: Counter = Counter()
        self.tokens: dict[str, set[int]] = {}
        self.overruns = 0
        self.last_t: dict[str, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(pm.PMEvents.RECV_SIZE)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS
                self.overruns += 1
                continue
            now = time.time()
            for e in pm.decode_events(data):
                self.types[e.type] += 1
                self.last_t[e.type] = now
                if e.token is not None:
                    self.tokens.setdefault(e.type, set()).add(e.token)

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()
        self.sub.close()


class DaemonSampler:
    """VmRSS, VmHWM and utime+stime of one pid every SAMPLE_PERIOD seconds."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[dict] = []
        self.done = threading.Event()
        self.first = self.read()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def read(self) -> dict | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        kb = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        # fields after "(comm)": state is field 3; utime, stime are fields 14 and 15
        fields = stat.rsplit(")", 1)[1].split()
        return {"t": time.monotonic(), "rss_mb": int(kb.get("VmRSS", 0)) / 1024,
                "hwm_mb": int(kb.get("VmHWM", 0)) / 1024,
                "cpu_s": (int(fields[11]) + int(fields[12])) / CLK_TCK}

    def _loop(self) -> None:
        while not self.done.wait(SAMPLE_PERIOD):
            s = self.read()
            if s is not None:
                self.samples.append(s)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join(2)
        last = self.read() or (self.samples[-1] if self.samples else self.first)
        first = self.first or {"t": 0, "rss_mb": 0, "hwm_mb": 0, "cpu_s": 0}
        last = last or first
        seconds = max(1e-9, last["t"] - first["t"])
        cpu = last["cpu_s"] - first["cpu_s"]
        return {"pid": self.pid, "rss_start_mb": round(first["rss_mb"], 1),
                "rss_end_mb": round(last["rss_mb"], 1),
                "rss_max_sampled_mb": round(max((s["rss_mb"] for s in self.samples),
                                                default=last["rss_mb"]), 1),
                "vmhwm_mb": round(last["hwm_mb"], 1), "cpu_s": round(cpu, 2),
                "wall_s": round(seconds, 2), "cpu_share": round(cpu / seconds, 3),
                "samples": len(self.samples)}


def daemon_log(ns: str) -> Path:
    """Where a daemonized `mptcpctl up` logs when there is no /dev/log (see cli daemon)."""
    return Path(f"/var/log/mptcpctl-{ns}.log")


def count_daemon_log(text: str) -> dict:
    """Per event type, how many the daemon logged (its `_note` lines), plus its warnings about
    the event socket (ENOBUFS) and the time of its last CLOSED line."""
    seen: Counter = Counter()
    overruns = 0
    last_closed = None
    for line in text.splitlines():
        m = re.match(r"^(\S+ \S+) INFO (\w+)\b", line)
        if m and m.group(2) in PM_EVENTS:
            seen[m.group(2)] += 1
            if m.group(2) == "closed":
                last_closed = m.group(1)
        elif "event socket" in line:
            overruns += 1
    return {"events": dict(seen), "overruns": overruns, "last_closed": last_closed}


def _log_time(stamp: str | None) -> float | None:
    """logging's asctime ("2025-01-02 03:04:05,678") -> epoch seconds."""
    if not stamp:
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def kernel_view(lab: labmod.Lab, port: int) -> dict:
    """`ss -M` in the client while every connection is open: MPTCP connections to the server
    port, how many report an extra subflow, TCP subflows and connections with two."""
    conns, subs = diag.snapshot(lab.client)
    mine = [c for c in conns if c.rport == port]
    per_token = Counter(s.token for s in subs if s.rport == port and s.token)
    return {"mptcp_conns": len(mine),
            "conns_with_extra_subflow": sum(1 for c in mine if c.extra_subflows >= 1),
            "tcp_subflows": sum(per_token.values()),
            "tokens_with_2_subflows": sum(1 for n in per_token.values() if n >= 2),
            "lte_subflows": sum(1 for s in subs if s.rport == port
                                and s.local == lab.paths["lte"].client_addr)}


def daemon_view(status: dict, port: int) -> dict:
    """What the daemon's status says about the same connections."""
    mine = [c for c in status.get("connections", []) if c.get("rport") == port]
    est = [sum(1 for s in c["subflows"] if s.get("established")) for c in mine]
    return {"connections": len(mine), "subflows_established": sum(est),
            "conns_with_2_established": sum(1 for n in est if n >= 2)}


def run(cfg: dict) -> dict:
    n, nbytes = cfg["connections"], cfg["bytes"]
    out: dict = {"notes": []}
    lab = labmod.lab_up(endpoints=False, wifi_mbit=cfg["wifi_mbit"], lte_mbit=cfg["lte_mbit"])
    server = client = counter = sampler = None
    up = False
    logfile = daemon_log(lab.client)
    try:
        _sh(lab.client, "ip", "mptcp", "endpoint", "flush", check=False)
        for ns in (lab.client, lab.server):
            _sh(ns, "sysctl", "-qw", f"net.core.somaxconn={LISTEN_BACKLOG}",
                f"net.ipv4.tcp_max_syn_backlog={LISTEN_BACKLOG}")
        _sh(lab.server, "ip", "mptcp", "limits", "set", "subflows", "8",
            "add_addr_accepted", "8")
        log_offset = logfile.stat().st_size if logfile.exists() else 0
        counter = EventCounter(lab.client)
        _cli("up", "--netns", lab.client)
        up = True
        pid = int(_status(lab.client)["pid"])
        sampler = DaemonSampler(pid)

        t0 = time.monotonic()
        server = _py_in(lab.server, "_server", str(n), str(cfg["phase_timeout"] * 2 + 30))
        port = int(server.stdout.readline().split()[1])
        client = _py_in(lab.client, "_client", lab.server_addr, str(port), str(n),
                        str(nbytes), str(cfg["phase_timeout"]), stdin=subprocess.PIPE)
        hold = _json_line(client, cfg["phase_timeout"] + 30)
        out["hold"] = hold
        out["t_hold_s"] = round(time.monotonic() - t0, 2)
        print(f"[{out['t_hold_s']:5.1f}s] {hold['live']} open, {hold['joined']} joined; "
              "counting", file=sys.stderr)
        out["kernel_at_hold"] = kernel_view(lab, port)
        out["daemon_at_hold"] = daemon_view(_status(lab.client), port)
        client.stdin.write("go\n")
        client.stdin.flush()
        out["client"] = _json_line(client, cfg["phase_timeout"] + 30)
        out["server"] = _json_line(server, 60)
        out["t_done_s"] = round(time.monotonic() - t0, 2)
        print(f"[{out['t_done_s']:5.1f}s] client and server done; waiting for CLOSED events",
              file=sys.stderr)
        settle = time.monotonic() + SETTLE
        while counter.types["closed"] < counter.types["created"] and time.monotonic() < settle:
            time.sleep(0.1)
        time.sleep(1.0)  # the daemon's last events
        out["t_settled_s"] = round(time.monotonic() - t0, 2)
        final = _status(lab.client)
        out["daemon_after"] = {"connections": len(final.get("connections", [])),
                               "events_tail": final.get("events", [])[-5:]}
        out["daemon_proc"] = sampler.stop()
        sampler = None
    finally:
        if sampler is not None:
            out["daemon_proc"] = sampler.stop()
        if client is not None and client.stdin:
            with contextlib.suppress(OSError):
                client.stdin.close()
        _stop(client)
        _stop(server)
        if up:
            with contextlib.suppress(Exception):
                _cli("down", "--netns", lab.client, check=False)
        if counter is not None:
            counter.close()
        labmod.lab_down(lab.suffix)

    out["events"] = {"types": dict(counter.types), "overruns": counter.overruns,
                     "distinct_tokens": {k: len(v) for k, v in counter.tokens.items()}}
    text = ""
    with contextlib.suppress(OSError), open(logfile, errors="replace") as f:
        f.seek(log_offset)
        text = f.read()
    seen = count_daemon_log(text)
    last_daemon = _log_time(seen.pop("last_closed"))
    mine = counter.last_t.get("closed")
    seen["lag_last_closed_s"] = (round(last_daemon - mine, 3)
                                 if last_daemon is not None and mine is not None else None)
    seen["log"] = str(logfile)
    out["daemon_log"] = seen
    return out


# --- report --------------------------------------------------------------------------------


def checks(n: int, r: dict) -> list[dict]:
    """One row per thing the issue asks for: what, wanted, got, met."""
    ev = r["events"]["types"]
    dlog = r["daemon_log"]["events"]
    proc = r["daemon_proc"]
    rss = max(proc["vmhwm_mb"], proc["rss_max_sampled_mb"])
    rows = [
        ("connections intact (client)", f"{n}", r["client"]["intact"],
         r["client"]["intact"] == n),
        ("connections verified (server)", f"{n}", r["server"]["ok"], r["server"]["ok"] == n),
        ("CREATED events (client netns)", f"{n}", ev.get("created", 0),
         ev.get("created", 0) == n),
        ("CLOSED events (client netns)", f"{n}", ev.get("closed", 0), ev.get("closed", 0) == n),
        ("SUB_ESTABLISHED events", f">= {n}", ev.get("sub_established", 0),
         ev.get("sub_established", 0) >= n),
        ("conns with a join (distinct tokens)", f"{n}",
         r["events"]["distinct_tokens"].get("sub_established", 0),
         r["events"]["distinct_tokens"].get("sub_established", 0) == n),
        ("event socket overruns (ours)", "0", r["events"]["overruns"],
         r["events"]["overruns"] == 0),
        ("daemon: CREATED logged", f"{ev.get('created', 0)}", dlog.get("created", 0),
         dlog.get("created", 0) == ev.get("created", 0)),
        ("daemon: CLOSED logged", f"{ev.get('closed', 0)}", dlog.get("closed", 0),
         dlog.get("closed", 0) == ev.get("closed", 0)),
        ("daemon: SUB_ESTABLISHED logged", f"{ev.get('sub_established', 0)}",
         dlog.get("sub_established", 0),
         dlog.get("sub_established", 0) == ev.get("sub_established", 0)),
        ("daemon: event socket overruns", "0", r["daemon_log"]["overruns"],
         r["daemon_log"]["overruns"] == 0),
        ("ss at hold: conns with 2 subflows", f"{n}",
         r["kernel_at_hold"]["tokens_with_2_subflows"],
         r["kernel_at_hold"]["tokens_with_2_subflows"] == n),
        ("daemon at hold: conns with 2 established", f"{n}",
         r["daemon_at_hold"]["conns_with_2_established"],
         r["daemon_at_hold"]["conns_with_2_established"] == n),
        ("daemon: connections left after close", "0", r["daemon_after"]["connections"],
         r["daemon_after"]["connections"] == 0),
        ("daemon peak RSS (VmHWM) MB", f"<= {GOAL_RSS_MB}", round(rss, 1), rss <= GOAL_RSS_MB),
    ]
    return [{"check": c, "want": w, "got": g, "met": bool(m)} for c, w, g, m in rows]


def render(rows: list[dict], r: dict, meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Load: {meta['connections']} concurrent MPTCP connections x "
              f"{meta['bytes'] // 1024} KiB, mptcpctl creating the second subflow "
              f"(kernel {meta['kernel']})")
    for col in ("check", "want", "got", "met"):
        t.add_column(col, justify="left" if col == "check" else "right")
    for row in rows:
        t.add_row(row["check"], row["want"], str(row["got"]),
                  "[green]yes[/]" if row["met"] else "[red]no[/]")
    p = r["daemon_proc"]
    d = Table(title="Daemon process over the run")
    for col in ("RSS start", "RSS end", "RSS max (sampled)", "VmHWM", "CPU (user+sys)",
                "wall", "CPU share", "lag of last CLOSED"):
        d.add_column(col, justify="right")
    lag = r["daemon_log"]["lag_last_closed_s"]
    d.add_row(f"{p['rss_start_mb']} MB", f"{p['rss_end_mb']} MB",
              f"{p['rss_max_sampled_mb']} MB", f"{p['vmhwm_mb']} MB", f"{p['cpu_s']} s",
              f"{p['wall_s']} s", f"{p['cpu_share'] * 100:.0f}%",
              "-" if lag is None else f"{lag * 1000:.0f} ms")
    console = Console(width=max(Console().width, 120))
    console.print(t)
    console.print(d)
    c = r["client"]
    console.print(f"client: opened in {c['open_s']} s, all sent in {c['sent_s']} s, "
                  f"closed in {c['close_s']} s; event types seen: {r['events']['types']}")
    for prob in (c["problems"] + r["server"]["problems"])[:10]:
        console.print(f"  problem: {prob}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return worker_main(argv)
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="200 connections (~30 s)")
    ap.add_argument("--connections", type=int, help="concurrent connections")
    ap.add_argument("--bytes", type=int, help="bytes per connection (at most 1 MiB)")
    args = ap.parse_args(argv)
    finally_on_sigterm()
    if os.geteuid() != 0:
        print("bench.load needs root (network namespaces)", file=sys.stderr)
        return 1
    cfg = dict(QUICK if args.quick else FULL, wifi_mbit=WIFI_MBIT, lte_mbit=LTE_MBIT)
    cfg["connections"] = args.connections or cfg["connections"]
    cfg["bytes"] = min(args.bytes or cfg["bytes"], BLOCK)
    t0 = time.monotonic()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    r = run(cfg)
    rows = checks(cfg["connections"], r)
    meta = {"kernel": platform.release(), "date": datetime.datetime.now().isoformat(),
            "quick": args.quick, "connections": cfg["connections"], "bytes": cfg["bytes"],
            "wifi_mbit": cfg["wifi_mbit"], "lte_mbit": cfg["lte_mbit"],
            "seconds": round(time.monotonic() - t0, 1), "cpus": os.cpu_count()}
    RESULTS.write_text(json.dumps({"meta": meta, "goals": {"rss_mb": GOAL_RSS_MB},
                                   "checks": rows, "run": r}, indent=2, default=str) + "\n")
    render(rows, r, meta)
    print(f"wrote {RESULTS.relative_to(ROOT)} ({meta['seconds']} s)")
    return 0 if all(row["met"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
