"""Hostile-network findings for `mptcpctl status` ("health"): connections that fell back to
plain TCP, ADD_ADDRs the peer never echoed, and addresses the peer announced that we gave up
reaching. The daemon calls HealthMonitor.tick() once a second; each check is a pure function
of what it read, so recorded inputs test it (tests/unit/test_health.py)."""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import socket
import time
from dataclasses import asdict, dataclass, field

from . import diag

log = logging.getLogger("mptcpctl")

# How often the daemon runs tick(), seconds.
PERIOD_S = 1.0
# Findings kept for status (oldest dropped first).
FINDINGS_LEN = 100
# The namespace's MPTCP MIB (/proc/net is this process's namespace: the daemon's).
NETSTAT = "/proc/net/netstat"
# ADD_ADDRs sent since the last echo received before we call it "not echoed": the first one
# plus at least one retransmission (the kernel resends after net.mptcp.add_addr_timeout).
ADD_ADDR_UNECHOED_MIN = 2
# A MIB counter as the kernel prints it (ASCII decimal; str.isdigit() also takes "²")
COUNTER_RE = re.compile(r"-?[0-9]+")

NO_MPTCP = "no_mptcp"
ADD_ADDR_NOT_ECHOED = "add_addr_not_echoed"
PEER_ADDR_UNREACHABLE = "peer_addr_unreachable"
PAYLOAD_MODIFIED = "payload_modified"


@dataclass
class Finding:
    kind: str       # NO_MPTCP | ADD_ADDR_NOT_ECHOED | PEER_ADDR_UNREACHABLE
    detail: str     # one line, for people
    t: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)


# --- 1, 2: fallback to plain TCP ----------------------------------------------------------

def fallen_back(ss_text: str) -> list[tuple[str, int, str, int]]:
    """(local, lport, remote, rport) of every MPTCP socket `ss -MtinH` marks "fallback"."""
    out = []
    for head, info in diag.records(ss_text):
        if len(head) < 6 or head[0] != "mptcp" or "fallback" not in info:
            continue
        local, _, lport = diag.split_endpoint(head[4])
        remote, _, rport = diag.split_endpoint(head[5])
        out.append((local, lport, remote, rport))
    return out


def fallback_reason(handshake: tuple[bool, bool] | None) -> str:
    """Why, from what the datapath saw on the initial subflow: (MP_CAPABLE seen at all, the
    peer's key seen); None when the datapath has no record of it. (An MPTCP v1 SYN carries
    no key: a client that saw no SYN/ACK key never had MP_CAPABLE back.)"""
    if handshake is None:
        return ""
    capable, theirs = handshake
    if capable and not theirs:
        return "; no MP_CAPABLE came back in the handshake"
    if capable and theirs:
        return "; MP_CAPABLE was exchanged, then MPTCP options vanished from later segments"
    return ""


def no_mptcp_detail(flow: tuple[str, int, str, int], reason: str = "") -> str:
    local, lport, remote, rport = flow
    return (f"peer or path does not support MPTCP: {local}:{lport} -> {remote}:{rport} "
            f"fell back to plain TCP{reason}")


# --- 6: ADD_ADDR not echoed ----------------------------------------------------------------

def parse_mptcp_mib(text: str) -> dict[str, int]:
    """The MPTcpExt counters of /proc/net/netstat (a header line, then a value line)."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("MPTcpExt:")]
    if len(lines) < 2:
        return {}
    names, values = lines[0][1:], lines[1][1:]
    pairs = zip(names, values, strict=False)   # a short value line: keep what is there
    return {n: int(v) for n, v in pairs if COUNTER_RE.fullmatch(v)}


@dataclass
class AddAddrWatch:
    """ADD_ADDRs this namespace sent (AddAddrTx) since the last echo it received (EchoAdd).
    The MIB is per namespace, not per connection: the finding names no connection."""

    base_tx: int | None = None
    base_echo: int = 0
    pending_before: int = 0
    reported: bool = False

    def update(self, mib: dict[str, int]) -> str | None:
        """A finding's detail the first time ADD_ADDRs keep going out unechoed, else None."""
        tx, echo = mib.get("AddAddrTx"), mib.get("EchoAdd")
        if tx is None or echo is None:
            return None
        if self.base_tx is None or echo > self.base_echo or tx < self.base_tx:
            # First look, an echo arrived, or the counters were reset: start counting again.
            self.base_tx, self.base_echo = tx, echo
            self.pending_before, self.reported = 0, False
            return None
        pending = tx - self.base_tx
        # Unechoed for at least one period and resent since: not a reply still in flight.
        due = pending >= ADD_ADDR_UNECHOED_MIN and self.pending_before >= 1
        self.pending_before = pending
        if due and not self.reported:
            self.reported = True
            return (f"ADD_ADDR not echoed: sent {pending} times since the last echo (the "
                    f"peer or the path drops ADD_ADDR; its addresses stay unused)")
        return None


# --- 7: announced addresses we gave up on ---------------------------------------------------

def unreachable_peer_addrs(conns, retries: dict, max_attempts: int,
                           local_addrs) -> list[tuple[int, str]]:
    """(token, address) of addresses a peer announced (ADD_ADDR, id != 0) that no subflow
    reaches and that every local address of the same family gave up on (its retries, keyed
    (token, local, remote, rport) as the daemon keeps them, ran out)."""
    out = []
    for c in conns:
        reached = {s.remote for s in c.subflows if s.established}
        for p in c.peer_addrs:
            if p.id == 0 or p.addr in reached:
                continue
            locals_ = {a for a in local_addrs if (":" in a) == (":" in p.addr)}
            gave_up = {k[1] for k, v in retries.items()
                       if k[0] == c.token and k[2] == p.addr and v[0] >= max_attempts}
            if locals_ and locals_ <= gave_up:
                out.append((c.token, p.addr))
    return out


def payload_modified_detail(flow: tuple[str, int, str, int], iface: str, bad: int) -> str:
    la, lp, ra, rp = flow
    return (f"payload modified on path {iface}: {bad} DSS checksum mismatch"
            f"{'es' if bad != 1 else ''} on {ra}:{rp} -> {la}:{lp}")


# --- the monitor ----------------------------------------------------------------------------

class HealthMonitor:
    """Runs the checks for one daemon; `findings` is what status shows, each reported once."""

    def __init__(self, ns: str | None = None, netstat: str = NETSTAT):
        self.ns = ns
        self.netstat = netstat
        self.findings: collections.deque[Finding] = collections.deque(maxlen=FINDINGS_LEN)
        self.seen: set[tuple] = set()
        self.add_addr = AddAddrWatch()

    def view(self) -> list[dict]:
        return [f.as_dict() for f in self.findings]

    def tick(self, daemon) -> list[Finding]:
        """Run every check against the daemon's state; return the new findings. A failing
        check is logged and skipped: health never stops the path manager."""
        new: list[Finding] = []
        for check in (self._check_fallback, self._check_add_addr, self._check_unreachable,
                      self._check_payload_modified):
            try:
                new.extend(check(daemon))
            except Exception as e:
                log.warning("health check %s: %s", check.__name__, e)
        self.findings.extend(new)
        return new

    def _once(self, key: tuple, kind: str, detail: str) -> list[Finding]:
        if key in self.seen:
            return []
        self.seen.add(key)
        return [Finding(kind, detail)]

    def _check_fallback(self, daemon) -> list[Finding]:
        out = []
        flows = [f for f in fallen_back(diag.run_ss(None)) if (NO_MPTCP, f) not in self.seen]
        keys = self._handshake_keys(daemon) if flows else {}
        for flow in flows:
            reason = fallback_reason(keys.get(flow))
            out += self._once((NO_MPTCP, flow), NO_MPTCP, no_mptcp_detail(flow, reason))
        return out

    def _handshake_keys(self, daemon) -> dict[tuple, tuple[bool, bool]]:
        """Per subflow the datapath saw: (MP_CAPABLE seen, the peer's key seen)."""
        if getattr(daemon, "attachment", None) is None:
            return {}
        from . import abi, datapath, view

        out = {}
        with contextlib.suppress(Exception):
            pinned = datapath.PinnedDatapath(self.ns)
            try:
                for k, s in pinned.subflows.items():
                    flow = (view._addr(k.family, k.laddr), socket.ntohs(k.lport),
                            view._addr(k.family, k.raddr), socket.ntohs(k.rport))
                    out[flow] = (s.opts[abi.Subtype.MP_CAPABLE] > 0,
                                 bool(s.flags & abi.SubflowFlags.SF_HAVE_REMOTE_KEY))
            finally:
                pinned.close()
        return out

    def _check_payload_modified(self, daemon) -> list[Finding]:
        """DSS checksum mismatches the datapath counted on a subflow: something on that path
        rewrote payload bytes (the kernel answers with MP_FAIL)."""
        if getattr(daemon, "attachment", None) is None:
            return []
        from . import datapath, view

        out = []
        pinned = datapath.PinnedDatapath(self.ns)
        try:
            for k, s in pinned.subflows.items():
                if not s.csum.bad:
                    continue
                flow = (view._addr(k.family, k.laddr), socket.ntohs(k.lport),
                        view._addr(k.family, k.raddr), socket.ntohs(k.rport))
                out += self._once((PAYLOAD_MODIFIED, flow), PAYLOAD_MODIFIED,
                                  payload_modified_detail(flow, view._ifname(s.ifindex),
                                                          s.csum.bad))
        finally:
            pinned.close()
        return out

    def payload_modified(self, flow: tuple[str, int, str, int], iface: str,
                         bad: int) -> list[Finding]:
        """The datapath's EV_DSS_CSUM_BAD event, at once (the counter check above finds the
        same subflow a tick later when the ring lost the event): the new finding, if any."""
        new = self._once((PAYLOAD_MODIFIED, flow), PAYLOAD_MODIFIED,
                         payload_modified_detail(flow, iface, bad))
        self.findings.extend(new)
        return new

    def _check_add_addr(self, daemon) -> list[Finding]:
        try:
            with open(self.netstat) as f:
                mib = parse_mptcp_mib(f.read())
        except OSError:
            return []
        detail = self.add_addr.update(mib)
        return [Finding(ADD_ADDR_NOT_ECHOED, detail)] if detail else []

    def _check_unreachable(self, daemon) -> list[Finding]:
        out = []
        found = unreachable_peer_addrs(daemon.conns.values(), daemon.retries,
                                       daemon.cfg.retry_attempts, daemon.net.addrs)
        for token, addr in found:
            out += self._once((PEER_ADDR_UNREACHABLE, token, addr), PEER_ADDR_UNREACHABLE,
                              f"address {addr} announced by the peer is unreachable (token "
                              f"{token:08x}: gave up after {daemon.cfg.retry_attempts} "
                              f"attempts until the network changes)")
        return out
