"""MPTCP bulk transfer: a server that hashes what it receives, a client that sends N seeded
pseudo-random bytes, and run_transfer() that runs both across a netns lab.
Usage: python -m controller.transfer server|client ... (see --help)."""

import argparse
import hashlib
import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path as FsPath

from .errors import BadInput, MptcpctlError

# IPPROTO_MPTCP from linux/in.h; Python < 3.10 on some builds lacks the constant
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
BLOCK = 1 << 20  # one pseudo-random block, repeated: cheap to generate, fast to send
READY = "ready"  # first stdout line of a listening server: "ready <addr> <port>"
_PROJECT_ROOT = FsPath(__file__).resolve().parents[1]


class TransferError(MptcpctlError):
    """A lab transfer failed or timed out."""


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def parse_rate(text: str) -> float:
    """'20mbit', '500kbit', '1gbit', '2000000' (bit/s) -> bytes per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit)?\s*", text.lower())
    if not m:
        raise BadInput(f"bad rate {text!r}: use e.g. 20mbit, 500kbit, 1000000")
    mult = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    bps = float(m.group(1)) * mult
    if bps <= 0:
        raise BadInput(f"bad rate {text!r}: must be positive")
    return bps / 8


def serve(bind: str, port: int, once: bool, out_json: bool, out=sys.stdout) -> None:
    """Listen on bind:port (MPTCP); per connection, read to EOF and report bytes + SHA-256."""
    with socket.socket(_family(bind), socket.SOCK_STREAM, IPPROTO_MPTCP) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((bind, port))
        ls.listen(16)
        print(f"{READY} {bind} {ls.getsockname()[1]}", file=out, flush=True)
        while True:
            conn, peer = ls.accept()
            with conn:
                h, n, t0 = hashlib.sha256(), 0, time.monotonic()
                buf = bytearray(BLOCK)
                view = memoryview(buf)
                while True:
                    got = conn.recv_into(buf)
                    if not got:
                        break
                    h.update(view[:got])
                    n += got
                result = {"bytes": n, "sha256": h.hexdigest(), "peer": peer[0],
                          "seconds": round(time.monotonic() - t0, 3)}
            if out_json:
                print(json.dumps(result), file=out, flush=True)
            else:
                print(f"{n} bytes sha256 {result['sha256']} from {peer[0]}", file=out, flush=True)
            if once:
                return


def send(connect: str, port: int, nbytes: int, seed: int = 0,
         rate_limit: float | None = None) -> dict:
    """Send nbytes of seeded pseudo-random data over MPTCP; return {"bytes", "sha256", ...}.
    rate_limit is in bytes per second (application-level pacing), None for as fast as possible."""
    block = random.Random(seed).randbytes(BLOCK)
    h, sent, t0 = hashlib.sha256(), 0, time.monotonic()
    chunk = 64 * 1024 if rate_limit else BLOCK
    with socket.socket(_family(connect), socket.SOCK_STREAM, IPPROTO_MPTCP) as s:
        s.connect((connect, port))
        view = memoryview(block)
        while sent < nbytes:
            off = sent % BLOCK
            piece = view[off:min(BLOCK, off + chunk, off + nbytes - sent)]
            s.sendall(piece)
            h.update(piece)
            sent += len(piece)
            if rate_limit:
                ahead = sent / rate_limit - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        # the kernel's view of the subflows once the last byte is queued (they are gone once
        # the MPTCP-level close completes, so this cannot wait for EOF)
        subflows = subflows_by_ss(connect, port)
        s.shutdown(socket.SHUT_WR)
        # wait for the server to close: every byte was read before we report success
        while s.recv(4096):
            pass
    return {"bytes": sent, "sha256": h.hexdigest(), "seconds": round(time.monotonic() - t0, 3),
            "subflows": subflows}


def parse_ss(text: str) -> list[dict]:
    """`ss -tniH` output -> [{"local", "remote", "state", "bytes_sent", "bytes_acked",
    "mptcp"}]."""
    out: list[dict] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            cols = line.split()
            # [State] Recv-Q Send-Q Local Peer
            # "10.81.2.2%lte-x:37075": drop the bound-device part
            local, remote = (re.sub(r"%[^:\]]+", "", c) for c in cols[-2:])
            state = cols[0] if len(cols) >= 5 else ""
            out.append({"local": local, "remote": remote, "state": state, "bytes_sent": 0,
                        "bytes_acked": 0, "mptcp": False})
        elif out:
            for key in ("bytes_sent", "bytes_acked"):
                m = re.search(rf"\b{key}:(\d+)", line)
                if m:
                    out[-1][key] = int(m.group(1))
            if "tcp-ulp-mptcp" in line:
                out[-1]["mptcp"] = True
    return out


def subflows_by_ss(addr: str, port: int) -> list[dict]:
    """TCP subflows in this netns towards addr:port, as `ss -tni` reports them."""
    dst = f"[{addr}]" if ":" in addr else addr
    try:
        cp = subprocess.run(["ss", "-tniH", "dst", f"{dst}:{port}"],
                            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [sf for sf in parse_ss(cp.stdout) if sf["mptcp"]]


def _read_line(proc: subprocess.Popen, deadline: float) -> tuple[str, bytes]:
    """First stdout line from proc and what was read past it; TransferError at the deadline
    or if proc exits first."""
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransferError("transfer server did not become ready in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise TransferError(f"transfer server exited before ready: {err[-300:]}")
            buf += chunk
    line, rest = buf.split(b"\n", 1)
    return line.decode(), rest


def run_transfer(lab, nbytes: int, timeout: float = 30.0, *, ipv6: bool = False,
                 rate_limit: str | None = None, seed: int = 0) -> tuple[dict, dict]:
    """Server in lab.server, client in lab.client, nbytes across; returns (client, server)
    results. Polls with deadlines; kills the server it started on any failure."""
    deadline = time.monotonic() + timeout
    addr = lab.server_addr6 if ipv6 else lab.server_addr
    # The wildcard, so that joins to other addresses the server announces find the listener.
    bind = "::" if ipv6 else "0.0.0.0"
    py = [sys.executable, "-m", "controller.transfer"]
    env = dict(os.environ, PYTHONPATH=str(_PROJECT_ROOT))
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.server, *py, "server", "--bind", bind, "--port", "0",
         "--once", "--out-json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=_PROJECT_ROOT, env=env,
    )
    try:
        line, early = _read_line(server, deadline)
        parts = line.split()
        if len(parts) != 3 or parts[0] != READY:
            raise TransferError(f"unexpected first line from transfer server: {line!r}")
        port = parts[2]
        argv = ["ip", "netns", "exec", lab.client, *py, "client", "--connect", addr,
                "--port", port, "--bytes", str(nbytes), "--seed", str(seed)]
        if rate_limit:
            argv += ["--rate-limit", rate_limit]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, cwd=_PROJECT_ROOT,
                                env=env, timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            raise TransferError(f"transfer client timed out after {timeout}s") from e
        if cp.returncode != 0:
            raise TransferError(f"transfer client failed: {cp.stderr.strip()[-300:]}")
        client = json.loads(cp.stdout.strip().splitlines()[-1])
        try:
            out, err = server.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            raise TransferError("transfer server did not finish in time") from e
        if server.returncode != 0:
            raise TransferError(f"transfer server failed: {err.decode().strip()[-300:]}")
        # the ready line was consumed by _read_line; the result is the last JSON line
        server_result = json.loads((early + out).decode().strip().splitlines()[-1])
        return client, server_result
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for f in (server.stdout, server.stderr):
            if f:
                f.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.transfer",
                                 description="MPTCP bulk transfer with SHA-256 check")
    sub = ap.add_subparsers(dest="role", required=True)
    sp = sub.add_parser("server", help="receive until EOF, report bytes and SHA-256")
    sp.add_argument("--bind", required=True)
    sp.add_argument("--port", type=int, required=True, help="0 picks a free port")
    sp.add_argument("--once", action="store_true", help="exit after one connection")
    sp.add_argument("--out-json", action="store_true", help="one JSON object per connection")
    cp = sub.add_parser("client", help="send N seeded pseudo-random bytes, print JSON")
    cp.add_argument("--connect", required=True)
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--bytes", type=int, required=True)
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--rate-limit", help="pace the sender, e.g. 5mbit (bits per second)")
    args = ap.parse_args(argv)
    try:
        if args.role == "server":
            serve(args.bind, args.port, args.once, args.out_json)
        else:
            if args.bytes < 0:
                raise BadInput("--bytes must be >= 0")
            rate = parse_rate(args.rate_limit) if args.rate_limit else None
            print(json.dumps(send(args.connect, args.port, args.bytes, args.seed, rate)),
                  flush=True)
    except (MptcpctlError, OSError) as e:
        print(f"transfer: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
