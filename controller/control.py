"""The daemon's control socket: a Unix stream socket (mode 0600, peer credentials checked:
uid 0 only) speaking one JSON object per line each way. The CLI is the client."""

from __future__ import annotations

import json
import os
import socket
import struct

from .errors import MptcpctlError

MAX_REQUEST = 64 * 1024


class ControlError(MptcpctlError):
    """The daemon could not be reached, refused us, or answered with an error."""


def listen(path: str) -> socket.socket:
    """A listening control socket at `path` (replacing a stale one), mode 0600."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(16)
    s.setblocking(False)
    return s


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _read_line(conn: socket.socket, limit: int | None = None) -> bytes:
    """Bytes up to the first newline (or EOF); ValueError past `limit` bytes."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if limit is not None and len(buf) > limit:
            raise ValueError("request too long")
    return buf


def read_request(conn: socket.socket, timeout: float = 2.0) -> dict:
    """One JSON object terminated by a newline; raises ValueError on anything else."""
    conn.settimeout(timeout)
    try:
        req = json.loads(_read_line(conn, MAX_REQUEST).decode() or "null")
    except RecursionError as e:
        raise ValueError("request nested too deeply") from e
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        raise ValueError('a request is a JSON object with a string "cmd"')
    return req


def send(conn: socket.socket, obj) -> None:
    conn.sendall(json.dumps(obj, default=str).encode() + b"\n")


def request(path: str, cmd: str, timeout: float = 5.0, **args) -> dict:
    """Send one request to the daemon at `path` and return its answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
        send(s, {"cmd": cmd, **args})
        buf = _read_line(s)
    except FileNotFoundError as e:
        raise ControlError("mptcpctl is not running (no control socket)") from e
    except ConnectionRefusedError as e:
        raise ControlError("mptcpctl is not running (stale control socket)") from e
    except PermissionError as e:
        raise ControlError("the control socket is root-only") from e
    except OSError as e:
        raise ControlError(f"talking to the daemon failed: {e.strerror or e}") from e
    finally:
        s.close()
    try:
        answer = json.loads(buf.decode())
    except ValueError as e:
        raise ControlError("the daemon sent no valid answer") from e
    if not isinstance(answer, dict):
        raise ControlError("the daemon sent no valid answer")
    if answer.get("error"):
        raise ControlError(f"daemon: {answer['error']}")
    return answer
