"""The coupled congestion control loop: every period, each connection's subflows' TCP state
(from the sockops map) goes through controller/cc.py and the resulting windows are pushed back
as clamps. Runs inside the daemon; the arithmetic lives in cc.py, the BPF half in sockops.py.

Error of this design: windows lag the network by up to one period (20 ms by default) plus the
time to the subflow's next ACK (the clamp is applied from the sockops RTT callback); between
ticks the kernel's own Reno still halves on loss at once, inside the clamp."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from . import abi, cc


def _new_loss_episode(st: abi.SfTcpState, tr: _Tracked) -> bool:
    """Did the kernel start a new loss recovery since the last tick? One episode is one
    decrease, as in Reno, however many segments it retransmits over however many ticks.
    Entering recovery the kernel sets ssthresh to half its window, below the clamp we last
    pushed (pushing sets ssthresh to the clamp itself); before our first push, a rise in
    the retransmission count is all there is to go by."""
    if not tr.pushed:
        return st.total_retrans > tr.total_retrans
    return st.snd_ssthresh < tr.pushed and st.snd_ssthresh < tr.ssthresh


def flow_key(local: str, lport: int, remote: str, rport: int) -> abi.FlowKey:
    la, ra = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    k = abi.FlowKey(family=la.version, lport=socket.htons(lport), rport=socket.htons(rport))
    k.laddr[:] = list(la.packed.ljust(16, b"\0"))
    k.raddr[:] = list(ra.packed.ljust(16, b"\0"))
    return k


@dataclass
class _Tracked:
    state: cc.SubflowState
    bytes_acked: int
    total_retrans: int
    pushed: int = 0
    ssthresh: int = 0  # the kernel's ssthresh at the previous tick


@dataclass
class _Conn:
    coupled: cc.CoupledState = field(default_factory=cc.CoupledState)
    subflows: dict[bytes, _Tracked] = field(default_factory=dict)


class Coupler:
    """Per-connection controller state across ticks, and the push of changed clamps."""

    def __init__(self, algo: str, sockops):
        self.algo = algo
        self.sockops = sockops
        self.conns: dict[int, _Conn] = {}

    def tick(self, conns: dict) -> None:
        """conns: token -> model.Connection (the daemon's)."""
        states = self.sockops.subflows()
        for token in list(self.conns):
            if token not in conns:
                self.forget(token)
        for token, conn in conns.items():
            keys = []
            for s in conn.subflows:
                if s.established and s.lport:
                    k = flow_key(s.local, s.lport, s.remote, s.rport)
                    if bytes(k) in states:
                        keys.append(k)
            if keys:
                self._tick_conn(token, keys, states)

    def _tick_conn(self, token: int, keys, states) -> None:
        c = self.conns.setdefault(token, _Conn())
        raw_keys = [bytes(k) for k in keys]
        for raw in list(c.subflows):
            if raw not in raw_keys:
                del c.subflows[raw]
        order = []
        for k, raw in zip(keys, raw_keys, strict=True):
            st = states[raw]
            mss = max(1, st.mss)
            tr = c.subflows.get(raw)
            if tr is None:
                tr = c.subflows[raw] = _Tracked(
                    cc.SubflowState(cwnd=float(st.snd_cwnd), srtt_us=float(st.srtt_us), mss=mss,
                                    kernel_cwnd=st.snd_cwnd),
                    st.bytes_acked, st.total_retrans)
            s = tr.state
            s.acked = max(0, st.bytes_acked - tr.bytes_acked) // mss
            s.losses = 1 if _new_loss_episode(st, tr) else 0
            s.srtt_us, s.mss, s.kernel_cwnd = float(st.srtt_us), mss, st.snd_cwnd
            tr.bytes_acked, tr.total_retrans = st.bytes_acked, st.total_retrans
            tr.ssthresh = st.snd_ssthresh
            order.append((k, tr))
        clamps = cc.step(self.algo, [tr.state for _k, tr in order], c.coupled)
        if clamps is None:
            return
        for (k, tr), clamp in zip(order, clamps, strict=True):
            if clamp != tr.pushed:
                self.sockops.set_clamp(k, clamp)
                tr.pushed = clamp

    def forget(self, token: int) -> None:
        c = self.conns.pop(token, None)
        if c is None:
            return
        for raw in c.subflows:
            self.sockops.clamps.delete(abi.FlowKey.from_buffer_copy(raw))

    def view(self) -> dict[bytes, dict]:
        """Per subflow (raw FlowKey): cwnd, clamp and srtt as the kernel has them now."""
        return {raw: {"cwnd": st.snd_cwnd, "clamp": st.clamp if st.clamp != abi.CLAMP_NONE
                      else None, "srtt_ms": round(st.srtt_us / 1000, 2)}
                for raw, st in self.sockops.subflows().items()}
