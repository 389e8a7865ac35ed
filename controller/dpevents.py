"""The datapath's ring-buffer events, read by the daemon as they happen: a DSS checksum
mismatch becomes the "payload modified" health finding at once (the 1 s counter poll stays as
the fallback for events the ring lost), and MP_FAIL, MP_FASTCLOSE, MP_TCPRST and malformed
options seen on a subflow go to the event log, once per subflow and kind, the way Wireshark's
expert info names them. Keys (EV_MPC_KEYS) and join nonces are never logged.

describe() is a pure function of one event (tests/unit/test_dpevents.py feeds it crafted
records); DatapathEvents is the ring buffer, pollable by the daemon's selector."""

from __future__ import annotations

import collections
import ctypes as C
import socket

from . import abi, libbpf
from .view import _addr
from .view import _ifname as ifname

EV = abi.EventType
# The events describe() has words for; the rest (keys, joins, addresses, priorities) are the
# controller's business and skipped before any decoding.
LOGGED = frozenset({EV.EV_DSS_CSUM_BAD, EV.EV_MP_FAIL, EV.EV_FASTCLOSE, EV.EV_TCPRST,
                    EV.EV_MALFORMED})
# MP_TCPRST reason codes, RFC 8684 section 3.6.
TCPRST_REASONS = {
    0: "unspecified error",
    1: "MPTCP-specific error",
    2: "lack of resources",
    3: "administratively prohibited",
    4: "too much outstanding data",
    5: "unacceptable performance",
    6: "middlebox interference",
}
# Kinds noted at most once per subflow; at most this many subflows remembered (a flood of
# malformed packets from random 4-tuples must not grow the daemon), and at most
# MALFORMED_PER_WINDOW malformed notes per MALFORMED_WINDOW_S seconds.
SEEN_MAX = 4096
MALFORMED_PER_WINDOW = 10
MALFORMED_WINDOW_S = 60.0


def flow_of(ev: abi.Event) -> tuple[str, int, str, int]:
    """(local addr, local port, remote addr, remote port) of the event's subflow."""
    k = ev.flow
    return (_addr(k.family, k.laddr), socket.ntohs(k.lport), _addr(k.family, k.raddr),
            socket.ntohs(k.rport))


def _subflow(flow) -> str:
    la, lp, ra, rp = flow
    if ":" in la:
        return f"[{la}]:{lp} -> [{ra}]:{rp}"
    return f"{la}:{lp} -> {ra}:{rp}"


def _way(ev: abi.Event) -> str:
    return "received" if ev.dir == abi.Direction.DIR_INGRESS else "sent"


def describe(ev: abi.Event, iface: str | None = None) -> tuple[str, str] | None:
    """(event-log kind, one-line detail) for an event people should see; None for the
    events that are the controller's business (keys, joins, addresses, priorities)."""
    if ev.type not in LOGGED:
        return None
    flow = flow_of(ev)
    where = f"{_subflow(flow)} ({iface or ifname(ev.ifindex)})"
    m = ev.opt
    if ev.type == EV.EV_DSS_CSUM_BAD:
        return ("dss_csum_bad",
                f"DSS checksum mismatch on {where}: mapping DSN {m.key_b}, subflow seq "
                f"{m.word}, {m.data_len} bytes carried 0x{m.checksum:04x}, the payload sums "
                f"to 0x{m.nonce:04x}")
    if ev.type == EV.EV_MP_FAIL:
        dsn = f" from DSN {m.key_b}" if m.present & abi.Present.HAS_KEY_B else ""
        return ("mp_fail", f"MP_FAIL {_way(ev)} on {where}: data{dsn} failed its DSS "
                           "checksum; the subflow falls back or is reset")
    if ev.type == EV.EV_FASTCLOSE:
        return ("fastclose", f"MP_FASTCLOSE {_way(ev)} on {where}: the connection was aborted")
    if ev.type == EV.EV_TCPRST:
        reason = TCPRST_REASONS.get(m.reason, "unknown reason")
        transient = ", transient" if m.flags & 1 else ""
        return ("tcprst", f"MP_TCPRST {_way(ev)} on {where}: reason {m.reason} "
                          f"({reason}{transient})")
    if ev.type == EV.EV_MALFORMED:
        way = "from" if ev.dir == abi.Direction.DIR_INGRESS else "to"
        return ("malformed", f"malformed TCP/MPTCP options on a segment {way} the peer, "
                             f"{where}: ignored, not trusted")
    return None


class EventLog:
    """Which events to note: each kind once per subflow (bounded), malformed rate-limited."""

    def __init__(self, clock):
        self.clock = clock
        self.seen: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.malformed_times: collections.deque[float] = collections.deque()
        self.suppressed = 0

    def admit(self, kind: str, flow) -> bool:
        key = (kind, flow)
        if key in self.seen:
            return False
        if kind == "malformed":
            now = self.clock()
            while self.malformed_times and now - self.malformed_times[0] > MALFORMED_WINDOW_S:
                self.malformed_times.popleft()
            if len(self.malformed_times) >= MALFORMED_PER_WINDOW:
                self.suppressed += 1
                return False
            self.malformed_times.append(now)
        self.seen[key] = None
        if len(self.seen) > SEEN_MAX:
            self.seen.popitem(last=False)
        return True


class DatapathEvents:
    """The datapath's `events` ring buffer (a map fd the caller keeps open). fileno() is an
    epoll fd for selectors; read() drains what is there and returns copies of the records."""

    def __init__(self, map_fd: int):
        self._batch: list[abi.Event] = []
        self.ring = libbpf.RingBuffer()
        self.ring.add(map_fd, self._sample)

    def _sample(self, _ctx, data, size) -> int:
        if size >= C.sizeof(abi.Event):
            self._batch.append(abi.Event.from_buffer_copy(C.string_at(data, C.sizeof(abi.Event))))
        return 0

    def fileno(self) -> int:
        return self.ring.epoll_fd()

    def read(self) -> list[abi.Event]:
        self._batch = []
        self.ring.consume()
        out, self._batch = self._batch, []
        return out

    def close(self) -> None:
        self.ring.close()
