"""Existing MPTCP connections and their TCP subflows in a netns, from `ss -MtinH` (iproute2's
sock_diag client) run inside it: for adopting connections after a daemon restart and for
`mptcpctl status`. The parser is pure (parse_ss) so recorded outputs test it."""

from __future__ import annotations

import ipaddress
import math
import re
import shutil
import subprocess
from dataclasses import dataclass

from .errors import MissingFeature, MptcpctlError
from .netns import entered

SS_ARGS = ["-MtinmH"]  # MPTCP and TCP sockets, numeric, internal info, memory, no header
SS_TIMEOUT = 10        # seconds

# tcp-ulp-mptcp subflow flag letters printed by ss (iproute2 ss.c, from MPTCP_SUBFLOW_FLAG_*):
# M/m MP_CAPABLE remote/local, J/j MP_JOIN remote/local, B/b backup remote/local,
# e fully established, c connected, v mapping valid
FLAG_BACKUP_LOCAL = "b"
FLAG_BACKUP_REMOTE = "B"

# ss prints tokens as at most 8 hex digits, ids and counters as ASCII decimals: anything else
# is not a value of ss's (and str.isdigit() takes "²", which int() refuses)
TOKEN_RE = re.compile(r"token:([0-9a-f]{1,8})\(id:([0-9]{1,3})\)"
                      r"/([0-9a-f]{1,8})\(id:([0-9]{1,3})\)")
HEX32_RE = re.compile(r"[0-9a-f]{1,8}")
UINT_RE = re.compile(r"[0-9]+")
RTT_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?)(?:/.*)?")
RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]*)?)([KMGT]?)bps$")
RATE_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@dataclass
class MptcpConn:
    """An MPTCP socket (the connection), as `ss -M` shows it. `token`: the local token.
    `extra_subflows`: subflows besides the initial one (mptcpi_subflows)."""

    token: int | None
    family: int
    state: str
    local: str
    lport: int
    remote: str
    rport: int
    extra_subflows: int = 0


@dataclass
class TcpSubflow:
    """A TCP subflow of an MPTCP connection. `token`: the local connection token (matches
    MptcpConn.token); `remote_token`: the peer's (0 on the initial subflow: not reported)."""

    family: int
    state: str
    local: str
    lport: int
    remote: str
    rport: int
    dev: str | None = None            # the device the subflow is bound to (ADDR%DEV)
    token: int | None = None
    remote_token: int | None = None
    loc_id: int | None = None
    rem_id: int | None = None
    flags: str = ""
    backup: bool = False              # we asked for backup (flag b)
    peer_backup: bool = False         # the peer asked for backup (flag B)
    rtt_ms: float | None = None
    cwnd: int | None = None
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_acked: int = 0
    retrans: int = 0                  # total retransmitted segments
    delivery_rate: int | None = None  # bits per second
    sndbuf: int | None = None         # sk_sndbuf bytes (skmem tb)


def split_endpoint(text: str) -> tuple[str, str | None, int]:
    """'10.0.0.1%eth0:443' / '[fd00::1]%eth0:443' / '[::]:*' -> (address, device, port)."""
    host, _, port = text.rpartition(":")
    dev = None
    if "%" in host:
        host, dev = host.split("%", 1)
    host = host.strip("[]")
    return host, dev, (int(port) if UINT_RE.fullmatch(port) and int(port) < 65536 else 0)


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def uint(text: str) -> int | None:
    """An unsigned decimal number as ss prints it, or None."""
    return int(text) if UINT_RE.fullmatch(text) else None


def family_of(addr: str) -> int:
    return 6 if ":" in addr else 4


def parse_rate(text: str) -> int | None:
    m = RATE_RE.match(text)
    bps = float(m.group(1)) * RATE_UNITS[m.group(2)] if m else math.inf
    return int(bps) if math.isfinite(bps) else None


def records(text: str) -> list[tuple[list[str], list[str]]]:
    """Group ss output into (header fields, info fields): a socket's info lines are indented."""
    out: list[tuple[list[str], list[str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if out:
                out[-1][1].extend(line.split())
        else:
            out.append((line.split(), []))
    return out


def info_fields(info: list[str]) -> dict[str, str]:
    """'key:value' fields, plus the 'key value' pairs ss prints for rates (delivery_rate ...)."""
    fields: dict[str, str] = {}
    for i, word in enumerate(info):
        key, sep, value = word.partition(":")
        if sep:
            fields.setdefault(key, value)
        elif word in ("delivery_rate", "pacing_rate", "send") and i + 1 < len(info):
            fields.setdefault(word, info[i + 1])
    return fields


def parse_subflow(state: str, local: str, remote: str, info: list[str]) -> TcpSubflow | None:
    if "tcp-ulp-mptcp" not in info:
        return None   # a plain TCP socket
    laddr, dev, lport = split_endpoint(local)
    raddr, _, rport = split_endpoint(remote)
    if not (is_address(laddr) and is_address(raddr)):
        return None   # not a socket line of ss's
    sub = TcpSubflow(family=family_of(laddr), state=state, local=laddr, lport=lport,
                     remote=raddr, rport=rport, dev=dev)
    ulp = info[info.index("tcp-ulp-mptcp") + 1:]
    for word in ulp:
        m = TOKEN_RE.fullmatch(word)
        if m and int(m.group(2)) < 256 and int(m.group(4)) < 256:
            sub.remote_token, sub.rem_id = int(m.group(1), 16), int(m.group(2))
            sub.token, sub.loc_id = int(m.group(3), 16), int(m.group(4))
        elif word.startswith("flags:"):
            sub.flags = word[len("flags:"):]
    if sub.token is None:
        return None   # a listener, or a socket that fell back to plain TCP before a token
    sub.backup = FLAG_BACKUP_LOCAL in sub.flags
    sub.peer_backup = FLAG_BACKUP_REMOTE in sub.flags
    f = info_fields(info[:len(info) - len(ulp) - 1])
    # A field ss would not print is left unset: it costs that field, not the subflow.
    m = RTT_RE.fullmatch(f.get("rtt", ""))   # rtt:AVG/VAR
    if m and math.isfinite(float(m.group(1))):
        sub.rtt_ms = float(m.group(1))
    sub.cwnd = uint(f.get("cwnd", ""))
    for name in ("bytes_sent", "bytes_received", "bytes_acked"):
        setattr(sub, name, uint(f.get(name, "")) or 0)
    sub.retrans = uint(f.get("retrans", "").split("/")[-1]) or 0   # retrans:CURRENT/TOTAL
    if "delivery_rate" in f:
        sub.delivery_rate = parse_rate(f["delivery_rate"])
    m = re.search(r"\btb([0-9]+)", f.get("skmem", ""))  # skmem:(r0,rb..,t0,tb..,...)
    if m:
        sub.sndbuf = int(m.group(1))
    return sub


def parse_conn(state: str, local: str, remote: str, info: list[str]) -> MptcpConn | None:
    laddr, _, lport = split_endpoint(local)
    raddr, _, rport = split_endpoint(remote)
    if not (is_address(laddr) and is_address(raddr)):
        return None   # not a socket line of ss's
    f = info_fields(info)
    token = int(f["token"], 16) if HEX32_RE.fullmatch(f.get("token", "")) else None
    extra = uint(f.get("subflows", "")) or 0
    return MptcpConn(token=token, family=family_of(laddr), state=state, local=laddr,
                     lport=lport, remote=raddr, rport=rport, extra_subflows=extra)


def parse_ss(text: str, netid: str | None = None) -> tuple[list[MptcpConn], list[TcpSubflow]]:
    """Parse `ss -MtinH` output (first column: tcp|mptcp). Output of a single-protocol run has
    no netid column: say which with `netid`."""
    conns: list[MptcpConn] = []
    subs: list[TcpSubflow] = []
    for head, info in records(text):
        kind = netid
        if kind is None:
            if not head or head[0] not in ("tcp", "mptcp"):
                continue
            kind, head = head[0], head[1:]
        if len(head) < 5:
            continue
        state, local, remote = head[0], head[3], head[4]
        if kind == "mptcp":
            conn = parse_conn(state, local, remote, info)
            if conn is not None:
                conns.append(conn)
        elif kind == "tcp":
            sub = parse_subflow(state, local, remote, info)
            if sub is not None:
                subs.append(sub)
    return conns, subs


def run_ss(netns: str | None = None) -> str:
    """`ss -MtinH` inside netns (a child forked while we are in it lives there too)."""
    ss = shutil.which("ss")
    if ss is None:
        raise MissingFeature("`ss` (iproute2) is not installed")
    with entered(netns):
        proc = subprocess.run([ss, *SS_ARGS], capture_output=True, text=True,
                              timeout=SS_TIMEOUT)
    if proc.returncode != 0:
        raise MptcpctlError(f"ss failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def snapshot(netns: str | None = None) -> tuple[list[MptcpConn], list[TcpSubflow]]:
    """Connections and subflows from one `ss` run (consistent with each other)."""
    return parse_ss(run_ss(netns))


def connections(netns: str | None = None) -> list[MptcpConn]:
    return snapshot(netns)[0]


def subflows(netns: str | None = None) -> list[TcpSubflow]:
    return snapshot(netns)[1]
