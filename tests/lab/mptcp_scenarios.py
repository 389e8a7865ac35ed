"""Real kernel MPTCP traffic for the interop tier: a tcpdump capture in the lab's router, MPTCP
peers in the client and server namespaces driven line by line, and polls (with deadlines) on
what the capture already holds."""

import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

from controller import pcap
from controller.errors import BadInput
from controller.lab import ns_exec

# MPTCP option kind (RFC 8684 section 3) and subtype names by wire value
TCPOPT_MPTCP = 30
SUBTYPES = {0: "MP_CAPABLE", 1: "MP_JOIN", 2: "DSS", 3: "ADD_ADDR", 4: "REMOVE_ADDR",
            5: "MP_PRIO", 6: "MP_FAIL", 7: "MP_FASTCLOSE", 8: "MP_TCPRST"}
# headers only: Ethernet 14 + IPv6 40 + TCP 60 fits with room to spare
SNAPLEN = 200
POLL = 0.05  # seconds between polls

# A server in its namespace: listens on argv[1]:argv[2] (MPTCP); for each connection, "drain"
# reads to EOF and closes, "hold" reads nothing and keeps it open until stdin closes.
SERVER = textwrap.dedent("""
    import socket, sys, threading
    addr, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM, 262)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(8)
    print("ready", flush=True)
    held = []
    def drain(c):
        while c.recv(1 << 16):
            pass
        c.close()
    def accept():
        while True:
            c, _ = ls.accept()
            if mode == "drain":
                threading.Thread(target=drain, args=(c,), daemon=True).start()
            else:
                held.append(c)
    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()
""")

# A client in its namespace, one command per stdin line, "ok" (or "error ...") per command:
#   send N   -- send N bytes (blocking)
#   stuff    -- fill the send buffer without blocking (data left in flight)
#   close    -- half-close, wait for the server's close, close (DATA_FIN both ways)
#   abort    -- SO_LINGER (1, 0) and close: an abortive close (MP_FASTCLOSE)
CLIENT = textwrap.dedent("""
    import socket, struct, sys
    addr, port = sys.argv[1], int(sys.argv[2])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM, 262)
    s.connect((addr, port))
    print("ok", flush=True)
    block = bytes(range(256)) * 256
    for line in sys.stdin:
        cmd = line.split()
        try:
            if cmd[0] == "send":
                left = int(cmd[1])
                while left:
                    left -= s.send(block[:min(left, len(block))])
            elif cmd[0] == "stuff":
                s.setblocking(False)
                try:
                    while True:
                        s.send(block)
                except BlockingIOError:
                    pass
                s.setblocking(True)
            elif cmd[0] == "close":
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
                s.close()
            elif cmd[0] == "abort":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            print("ok", flush=True)
        except OSError as e:
            print("error", e, flush=True)
""")


class ScenarioError(AssertionError):
    """A scenario step did not happen before its deadline."""


def _readline(proc: subprocess.Popen, deadline: float, what: str) -> str:
    """One stdout line from proc, or ScenarioError at the deadline or if proc exits."""
    fd = proc.stdout.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ScenarioError(f"{what}: no answer in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            ch = os.read(fd, 1)
            if not ch:
                err = proc.stderr.read().decode(errors="replace").strip()
                raise ScenarioError(f"{what}: process exited: {err[-400:]}")
            buf += ch
    return buf.decode().strip()


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process this module started (by its own pid), then reap it."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def server(ns: str, addr: str, port: int, mode: str, timeout: float = 10.0):
    """An MPTCP server in ns (see SERVER); yields once it listens."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, addr,
                             str(port), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _readline(proc, time.monotonic() + timeout, "server start")
        if line != "ready":
            raise ScenarioError(f"server start: unexpected {line!r}")
        yield proc
    finally:
        proc.stdin.close()
        _stop(proc)


class Client:
    """An MPTCP client process in a namespace (see CLIENT), driven one command at a time."""

    def __init__(self, ns: str, addr: str, port: int, timeout: float = 10.0):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, addr, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._expect_ok("connect", timeout)

    def _expect_ok(self, what: str, timeout: float) -> None:
        line = _readline(self.proc, time.monotonic() + timeout, f"client {what}")
        if line != "ok":
            raise ScenarioError(f"client {what}: {line}")

    def do(self, command: str, timeout: float = 10.0) -> None:
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        self._expect_ok(command, timeout)

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        _stop(self.proc)


@contextmanager
def client(ns: str, addr: str, port: int, timeout: float = 10.0):
    c = Client(ns, addr, port, timeout)
    try:
        yield c
    finally:
        c.stop()


@contextmanager
def tcpdump(ns: str, dev: str, path, timeout: float = 10.0):
    """tcpdump on dev in ns writing TCP headers to path (packet-buffered); yields once it
    listens, and on exit stops it so the file is complete."""
    # --immediate-mode: each packet reaches the file at once, not after the ring's timeout
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-nn", "-U",
                             "--immediate-mode",
                             "-s", str(SNAPLEN), "-w", str(path), "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        err = b""
        # tcpdump says "listening on DEV" on stderr once its socket is bound
        while b"listening on" not in err:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise ScenarioError(f"tcpdump did not start: {err.decode(errors='replace')}")
            ready, _, _ = select.select([proc.stderr], [], [], left)
            if ready:
                err += os.read(proc.stderr.fileno(), 4096)
        yield proc
    finally:
        # SIGINT: tcpdump flushes and closes the file
        _stop(proc, signal.SIGINT)


def mptcp_options(frame: bytes) -> list[tuple[str, bytes]]:
    """(subtype name, option bytes) of each MPTCP option in one Ethernet frame, in order (a
    small independent walk, used only to poll a capture for progress)."""
    if len(frame) < 14:
        return []
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto, tcp = frame[23], 14 + ihl
    elif ethertype == 0x86DD and len(frame) >= 54:
        proto, tcp = frame[20], 54
    else:
        return []
    if proto != 6 or len(frame) < tcp + 20:
        return []
    end = min(len(frame), tcp + (frame[tcp + 12] >> 4) * 4)
    i, found = tcp + 20, []
    while i < end:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or frame[i + 1] < 2:
            break
        if kind == TCPOPT_MPTCP and i + 2 < end:
            raw = frame[i:min(end, i + frame[i + 1])]
            found.append((SUBTYPES.get(frame[i + 2] >> 4, "UNKNOWN"), raw))
        i += frame[i + 1]
    return found


def options_in(path) -> list[tuple[str, bytes]]:
    """Every MPTCP option the capture holds so far (a partly written capture is fine)."""
    try:
        frames = list(pcap.open_capture(path).frames())
    except (BadInput, OSError):
        return []
    return [opt for _, _, frame in frames for opt in mptcp_options(frame)]


def subtypes_in(path) -> dict[str, int]:
    """How many options of each MPTCP subtype the capture holds so far."""
    counts: dict[str, int] = {}
    for name, _ in options_in(path):
        counts[name] = counts.get(name, 0) + 1
    return counts


def is_data_fin(name: str, raw: bytes) -> bool:
    """A DSS option with its F flag (RFC 8684 3.3: flags byte, bit 0x10)."""
    return name == "DSS" and len(raw) > 3 and bool(raw[3] & 0x10)


def wait_for_data_fins(path, at_least: int = 2, timeout: float = 10.0) -> None:
    """Wait until the capture holds `at_least` DATA_FINs (2: one each way, the clean close)."""
    wait_for(f"{at_least} DATA_FIN(s) in {path}",
             lambda: sum(is_data_fin(*o) for o in options_in(path)) >= at_least, timeout)


def wait_for(what: str, check, timeout: float = 10.0):
    """Poll check() until it returns something truthy; ScenarioError naming `what` at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise ScenarioError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


def wait_for_subtype(path, name: str, at_least: int = 1, timeout: float = 10.0) -> None:
    """Wait until the capture holds at least `at_least` options of subtype `name`."""
    wait_for(f"{at_least} {name} option(s) in {path}",
             lambda: subtypes_in(path).get(name, 0) >= at_least, timeout)


def subflow_count(ns: str, port: int) -> int:
    """Established MPTCP subflows in ns towards `port` on any address."""
    cp = ns_exec(ns, ["ss", "-tniH", "state", "established", "dport", "=", str(port)],
                 capture_output=True, text=True, timeout=10)
    return cp.stdout.count("tcp-ulp-mptcp")


def ip(ns: str, *argv: str) -> str:
    """`ip -n ns ARGV`, its stdout; AssertionError with stderr if it fails."""
    cp = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        raise ScenarioError(f"`ip -n {ns} {' '.join(argv)}` failed: {cp.stderr.strip()}")
    return cp.stdout


def endpoint_id(ns: str, addr: str) -> int:
    """The id of the MPTCP endpoint for addr in ns."""
    for line in ip(ns, "mptcp", "endpoint", "show").splitlines():
        cols = line.split()
        if cols and cols[0] == addr and "id" in cols:
            return int(cols[cols.index("id") + 1])
    raise ScenarioError(f"no MPTCP endpoint for {addr} in {ns}")


@contextmanager
def sysctl(namespaces, name: str, value: str):
    """Set a sysctl in each namespace, restore the old values after."""
    old = {}
    try:
        for ns in namespaces:
            cp = ns_exec(ns, ["sysctl", "-n", name], capture_output=True, text=True, check=True)
            old[ns] = cp.stdout.strip()
            ns_exec(ns, ["sysctl", "-qw", f"{name}={value}"], check=True)
        yield
    finally:
        for ns, v in old.items():
            ns_exec(ns, ["sysctl", "-qw", f"{name}={v}"])
