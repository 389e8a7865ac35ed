"""Coupled congestion control for MPTCP (LIA, OLIA, BALIA) as pure functions: from one
connection's subflows and what happened since the last controller tick to the per-subflow window
clamp (TCP_BPF_SNDCWND_CLAMP, packets) the daemon pushes. No I/O, clocks or globals here.

Where this runs, and what that costs
------------------------------------
Upstream Linux runs an uncoupled Reno/CUBIC per subflow. mptcpctl couples them from userspace:
every period T (10-50 ms) the daemon reads each subflow's TCP state from the BPF sockops map
(srtt, mss, packets newly acked, loss events, the kernel's own cwnd), calls `step()`, and pushes
the returned windows back as clamps. Consequences of that choice:

- Lag. The coupled windows react to acks and losses up to T late (plus the map read). With T at
  or below one RTT this is a fraction of a window; on sub-T RTT paths the coupling is coarser,
  never unsafe, because of the next point.
- The clamp is an upper bound, not the window. The kernel's own Reno keeps running inside it and
  still halves on a loss (and collapses on a timeout) immediately; the controller only stops a
  subflow from growing past its coupled share. So the lag can delay growth, never a backoff.
- TCP_BPF_SNDCWND_CLAMP also sets ssthresh (net/core/filter.c: snd_cwnd_clamp = snd_ssthresh =
  val; val <= 0 is EINVAL). Each push therefore puts the kernel in slow start up to the clamp:
  it fills the allowed window quickly and the coupled increase below is what paces growth. Push
  only when a clamp changes. `step()` never returns a clamp below MIN_CLAMP (2 packets).
- Leaving coupling ('uncoupled') returns None: push nothing. A clamp already pushed stays in the
  kernel; lifting it (a large value) also raises ssthresh, i.e. restarts slow start.

Units and conventions
---------------------
Windows are in packets (segments) throughout, RTTs in microseconds. The equations below are
ratios in which the RTT unit cancels; the window unit does not cancel in LIA's alpha when the
subflows' MSS differ, so `lia_alpha(..., in_bytes=True)` and `lia_increase_bytes()` give the
RFC 6356 byte form, and everything else (including `step()`) uses packets. With equal MSS the
two forms agree. The `*_increase` functions return the increase for the subflow's `acked`
packets this tick: `acked` times the per-ACK increase evaluated on the windows at the start of
the tick (a first-order step of the per-ACK law; exact per ACK when acked == 1).

Robustness: a window below one packet (zero, negative, NaN) counts as one packet in the
equations; an RTT of zero, below zero or not finite counts as the largest valid RTT among the
subflows, else the largest seen on this connection (CoupledState.max_srtt_us), else 1 ms. So no
equation divides by zero for any 1..8 (or more) subflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.errors import BadInput

# Algorithm names step() accepts, in the order its error message lists them.
ALGORITHMS = ("uncoupled", "lia", "olia", "balia")
# Smallest clamp pushed, packets: with a window of 1 a single lost packet or delayed ACK stalls
# the subflow until a timeout; 2 keeps ACK clocking (and fast retransmit's chances) alive.
MIN_CLAMP = 2
# Largest clamp pushed: bpf_setsockopt takes a C int (and rejects val <= 0).
MAX_CLAMP = 2**31 - 1
# RTT assumed when no subflow has ever reported one, microseconds.
DEFAULT_RTT_US = 1000.0
# Relative tolerance for "equal" when OLIA picks its sets of largest windows and best paths.
_TIE_REL = 1e-9


@dataclass
class SubflowState:
    """One subflow as the controller sees it. The daemon keeps one per subflow across ticks,
    refreshes the inputs each tick, and step() updates the persistent fields in place.

    Inputs (from the sockops map, this tick):
      srtt_us      smoothed RTT, microseconds (0 or absent: see the module notes)
      mss          sender MSS, bytes
      acked        packets newly acknowledged since the last tick
      losses       loss events (fast retransmits or timeouts) since the last tick
      kernel_cwnd  the kernel's own cwnd now, packets; 0 means unknown
    Persistent (owned by step()):
      cwnd         the coupled window, packets: what becomes the clamp. 0 for a new subflow
                   (step() then adopts kernel_cwnd, or MIN_CLAMP)
      slow_start   true until the subflow's first loss; RFC 6356 couples congestion avoidance
                   only, so until then the window grows like Reno slow start (+1 per ACK)
      olia_l1_bytes  OLIA l1r: bytes delivered between the last two losses on this path
      olia_l2_bytes  OLIA l2r: bytes delivered since the last loss on this path
    (Delivered bytes stand in for the paper's transmitted bytes: acked * mss.)
    """

    cwnd: float
    srtt_us: float
    mss: int
    acked: int = 0
    losses: int = 0
    kernel_cwnd: int = 0
    slow_start: bool = True
    olia_l1_bytes: float = 0.0
    olia_l2_bytes: float = 0.0


@dataclass
class CoupledState:
    """Per-connection controller state kept across ticks.

    max_srtt_us  largest valid srtt seen on the connection: the RTT used for a subflow that
                 reports none while no other subflow has one either
    max_total    optional cap on the sum of the coupled windows, packets (e.g. from the send
                 buffer); None means no cap beyond MAX_CLAMP per subflow
    """

    max_srtt_us: float = 0.0
    max_total: float | None = None


# --- Sanitised inputs ----------------------------------------------------------------------------


def _window(cwnd: float) -> float:
    """A window usable as a divisor: at least one packet, finite."""
    if cwnd == math.inf:
        return float(MAX_CLAMP)
    if math.isnan(cwnd) or cwnd < 1.0:
        return 1.0
    return float(cwnd)


def _valid_rtt(rtt_us: float) -> bool:
    return math.isfinite(rtt_us) and rtt_us > 0


def _rtts(subflows: list[SubflowState], state: CoupledState | None) -> list[float]:
    """Each subflow's RTT in µs with zero/absent ones replaced (module notes): never zero."""
    valid = [s.srtt_us for s in subflows if _valid_rtt(s.srtt_us)]
    if valid:
        fallback = max(valid)
    elif state is not None and _valid_rtt(state.max_srtt_us):
        fallback = state.max_srtt_us
    else:
        fallback = DEFAULT_RTT_US
    return [s.srtt_us if _valid_rtt(s.srtt_us) else fallback for s in subflows]


def _acked(s: SubflowState) -> int:
    return max(0, int(s.acked))


def _check_index(i: int, subflows: list[SubflowState]) -> None:
    if not 0 <= i < len(subflows):
        raise BadInput(f"subflow index {i} out of range for {len(subflows)} subflows")


# --- LIA: RFC 6356 -------------------------------------------------------------------------------


def lia_alpha(
    subflows: list[SubflowState], state: CoupledState | None = None, *, in_bytes: bool = False
) -> float:
    """RFC 6356 §4 aggressiveness: alpha = cwnd_total * max_i(cwnd_i / rtt_i^2)
    / (sum_i cwnd_i / rtt_i)^2.

    Windows in packets (default) or in bytes (cwnd * mss, the RFC's form) consistently; the RTT
    unit cancels. With n paths of equal window and RTT, alpha = 1/n. 0.0 for no subflows."""
    if not subflows:
        return 0.0
    rtts = _rtts(subflows, state)
    ws = [_window(s.cwnd) * (max(1, s.mss) if in_bytes else 1) for s in subflows]
    total = sum(ws)
    best = max(w / (r * r) for w, r in zip(ws, rtts, strict=True))
    denom = sum(w / r for w, r in zip(ws, rtts, strict=True))
    return total * best / (denom * denom)


def lia_increase(i: int, subflows: list[SubflowState], state: CoupledState | None = None) -> float:
    """Packets to add to subflow i's window for its `acked` packets this tick (RFC 6356 §3 in
    packets): acked_i * min(alpha / cwnd_total, 1 / cwnd_i). The second term is uncoupled
    Reno's increase, so LIA never grows a path faster than a single TCP on it would."""
    _check_index(i, subflows)
    total = sum(_window(s.cwnd) for s in subflows)
    per_ack = min(lia_alpha(subflows, state) / total, 1.0 / _window(subflows[i].cwnd))
    return _acked(subflows[i]) * per_ack


def lia_increase_bytes(
    i: int, subflows: list[SubflowState], bytes_acked: float, state: CoupledState | None = None
) -> float:
    """RFC 6356 §3 verbatim, windows in bytes (cwnd * mss): for an ACK of `bytes_acked` bytes on
    subflow i, cwnd_i grows by min(alpha * bytes_acked * mss_i / cwnd_total,
    bytes_acked * mss_i / cwnd_i) bytes, alpha computed in bytes."""
    _check_index(i, subflows)
    mss_i = max(1, subflows[i].mss)
    total = sum(_window(s.cwnd) * max(1, s.mss) for s in subflows)
    cwnd_i = _window(subflows[i].cwnd) * mss_i
    alpha = lia_alpha(subflows, state, in_bytes=True)
    acked = max(0.0, bytes_acked)
    return min(alpha * acked * mss_i / total, acked * mss_i / cwnd_i)


# --- OLIA: Khalili, Gast, Popovic, Le Boudec, CoNEXT 2012 ----------------------------------------


def olia_sets(
    subflows: list[SubflowState], state: CoupledState | None = None
) -> tuple[set[int], set[int]]:
    """OLIA's path sets, as subflow indices:
      M, the paths with the largest window w_p;
      B, the best paths: the largest l_p^2 / rtt_p, where l_p = max(l1p, l2p) is the larger of
         the bytes delivered between the last two losses and since the last loss, an estimate
         of the path's inter-loss distance (l^2/rtt ranks paths by 1/(p * rtt), Reno's rate).
    Ties (within a relative 1e-9) put every tied path in the set."""
    if not subflows:
        return set(), set()
    rtts = _rtts(subflows, state)
    ws = [_window(s.cwnd) for s in subflows]
    quality = [
        max(s.olia_l1_bytes, s.olia_l2_bytes, 0.0) ** 2 / r
        for s, r in zip(subflows, rtts, strict=True)
    ]

    def argmax_set(values: list[float]) -> set[int]:
        top = max(values)
        return {k for k, v in enumerate(values) if math.isclose(v, top, rel_tol=_TIE_REL)}

    return argmax_set(ws), argmax_set(quality)


def olia_alpha(i: int, subflows: list[SubflowState], state: CoupledState | None = None) -> float:
    """OLIA's alpha_r for path i, with P all paths and M, B from olia_sets():
    1/(|P| |B\\M|) if i is in B\\M (a best path not yet at the largest window), -1/(|P| |M|) if
    i is in M while B\\M is non-empty, else 0. The alphas sum to zero: OLIA moves window from
    the largest paths to the best ones without changing the total increase."""
    _check_index(i, subflows)
    largest, best = olia_sets(subflows, state)
    best_not_largest = best - largest
    n = len(subflows)
    if not best_not_largest:
        return 0.0
    if i in best_not_largest:
        return 1.0 / (n * len(best_not_largest))
    if i in largest:
        return -1.0 / (n * len(largest))
    return 0.0


def olia_increase(i: int, subflows: list[SubflowState], state: CoupledState | None = None) -> float:
    """Packets to add to subflow i's window for its `acked` packets this tick, OLIA's per-ACK
    law: w_r += (w_r / rtt_r^2) / (sum_p w_p / rtt_p)^2 + alpha_r / w_r. Negative for a path in
    M when a better path exists. The equation alone can exceed Reno's 1/w_r (a short-RTT best
    path with a small window); step() caps every algorithm's increase at Reno's."""
    _check_index(i, subflows)
    rtts = _rtts(subflows, state)
    ws = [_window(s.cwnd) for s in subflows]
    denom = sum(w / r for w, r in zip(ws, rtts, strict=True))
    coupled = (ws[i] / (rtts[i] * rtts[i])) / (denom * denom)
    per_ack = coupled + olia_alpha(i, subflows, state) / ws[i]
    return _acked(subflows[i]) * per_ack


# --- BALIA: Peng, Walid, Hwang, Low, IEEE/ACM ToN 2016 -------------------------------------------


def balia_alpha(i: int, subflows: list[SubflowState], state: CoupledState | None = None) -> float:
    """BALIA's alpha_r = max_k x_k / x_r with x_k = w_k / rtt_k (a path's rate); >= 1."""
    _check_index(i, subflows)
    rtts = _rtts(subflows, state)
    xs = [_window(s.cwnd) / r for s, r in zip(subflows, rtts, strict=True)]
    return max(xs) / xs[i]


def balia_increase(
    i: int, subflows: list[SubflowState], state: CoupledState | None = None
) -> float:
    """Packets to add to subflow i's window for its `acked` packets this tick, BALIA's per-ACK
    law: (x_r / (rtt_r (sum_k x_k)^2)) * ((1 + alpha_r) / 2) * ((4 + alpha_r) / 5). One path:
    1/w, Reno. Never above 1/w_r (x_r^2/(sum x)^2 <= 1/alpha_r^2 bounds the product)."""
    _check_index(i, subflows)
    rtts = _rtts(subflows, state)
    xs = [_window(s.cwnd) / r for s, r in zip(subflows, rtts, strict=True)]
    total_x = sum(xs)
    a = max(xs) / xs[i]
    per_ack = xs[i] / (rtts[i] * total_x * total_x) * ((1 + a) / 2) * ((4 + a) / 5)
    return _acked(subflows[i]) * per_ack


def balia_decrease(
    i: int, subflows: list[SubflowState], state: CoupledState | None = None
) -> float:
    """Packets BALIA removes from subflow i's window on a loss: (w_r / 2) * min(alpha_r, 1.5),
    i.e. the window keeps between 1/4 (a slow path) and 1/2 (the fastest path) of itself."""
    return _window(subflows[i].cwnd) / 2 * min(balia_alpha(i, subflows, state), 1.5)


def reno_decrease(i: int, subflows: list[SubflowState]) -> float:
    """Packets LIA and OLIA remove from subflow i's window on a loss: w_r / 2 (Reno)."""
    _check_index(i, subflows)
    return _window(subflows[i].cwnd) / 2


RTO_MIN_US = 200_000.0  # the kernel's minimum retransmission timeout


def send_buffer(subflows: list[SubflowState]) -> float:
    """Bytes of send buffer (the kernel's sk_sndbuf, which counts ~2x the payload) a coupled
    connection needs across its subflows: twice what all of them carry in T = max(RTO_MIN,
    largest RTT), so that the data level rides out one subflow's recovery, a timeout included,
    while the others keep sending. Raiciu et al. (NSDI 2012) size it at 2 * sum_i(rate_i) *
    rtt_max when no timeout is involved; coupling makes timeouts the common case on a
    congested path, whose window it keeps at a few packets. Subflows without an RTT yet carry
    nothing; whole packets only (what the datapath sees)."""
    live = [s for s in subflows if _valid_rtt(s.srtt_us)]
    if not live:
        return 0.0
    t = max([RTO_MIN_US] + [s.srtt_us for s in live])
    return sum(int(max(s.cwnd, 0.0)) * 2 * t / s.srtt_us for s in live) * live[0].mss * 2


# --- One controller tick -------------------------------------------------------------------------

_INCREASE = {"lia": lia_increase, "olia": olia_increase, "balia": balia_increase}


def _seed_window(s: SubflowState) -> float:
    """The coupled window to start this tick from: a new (0) or broken window adopts the
    kernel's current window, else MIN_CLAMP; never below MIN_CLAMP."""
    w = s.cwnd
    if not math.isfinite(w) or w <= 0:
        w = float(s.kernel_cwnd) if s.kernel_cwnd > 0 else float(MIN_CLAMP)
    return min(max(w, float(MIN_CLAMP)), float(MAX_CLAMP))


def _cwnd_limited(s: SubflowState) -> bool:
    """Whether the subflow is using its allowance. A kernel window known to be below half the
    coupled window means the sender is application-limited (or restarting after a timeout):
    growing the coupled window then would only grant credit nobody tested (RFC 7661's
    concern), so it does not grow. Unknown (0) counts as limited."""
    return s.kernel_cwnd <= 0 or s.kernel_cwnd >= s.cwnd / 2


def step(
    algo: str, subflows: list[SubflowState], state: CoupledState | None = None
) -> list[int] | None:
    """One controller tick for one connection. Returns the clamp (packets) to push to each
    subflow, in order, or None for 'uncoupled' (push nothing, leave the kernel's CC alone).

    Updates each SubflowState's cwnd, slow_start and OLIA byte counters (and state's
    max_srtt_us) in place; acked and losses are inputs the caller refreshes every tick. Per
    subflow, all evaluated on the windows as they were at the start of the tick:
      - losses > 0: one decrease per tick however many loss events (Reno's one halving per
        window of data): w/2 for LIA and OLIA, BALIA's (w/2)*min(alpha, 1.5); no increase this
        tick (Reno does not grow in recovery); slow start ends.
      - else, in slow start: w += acked (Reno slow start; RFC 6356 leaves it uncoupled).
      - else, if cwnd-limited (see _cwnd_limited): w += the algorithm's increase for the acked
        packets, capped at uncoupled Reno's acked / w so that no path ever grows faster than a
        single TCP on it would (RFC 6356 goal 2, applied per path to OLIA as well).
    Then every window is bounded to [MIN_CLAMP, MAX_CLAMP] and, if state.max_total is set,
    scaled down so the windows sum to at most it (never below MIN_CLAMP each). Each window is
    then at most the connection's total by construction. Clamps round down: never more than
    the coupled window allows.
    """
    if algo not in ALGORITHMS:
        raise BadInput(
            f"unknown congestion control {algo!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    if algo == "uncoupled":
        return None
    if state is None:
        state = CoupledState()
    if not subflows:
        return []

    for s in subflows:
        if _valid_rtt(s.srtt_us):
            state.max_srtt_us = max(state.max_srtt_us, s.srtt_us)
        s.cwnd = _seed_window(s)

    increase = _INCREASE[algo]
    new = []
    for i, s in enumerate(subflows):
        w = s.cwnd
        if s.losses > 0:
            if algo == "balia":
                w -= balia_decrease(i, subflows, state)
            else:
                w -= reno_decrease(i, subflows)
        elif s.slow_start:
            w += _acked(s)
        elif _cwnd_limited(s):
            w += min(increase(i, subflows, state), _acked(s) / w)
        new.append(w)

    for s, w in zip(subflows, new, strict=True):
        s.olia_l2_bytes += _acked(s) * max(1, s.mss)
        if s.losses > 0:
            s.slow_start = False
            s.olia_l1_bytes, s.olia_l2_bytes = s.olia_l2_bytes, 0.0
        s.cwnd = min(max(w, float(MIN_CLAMP)), float(MAX_CLAMP))

    if state.max_total is not None:
        _fit_total(subflows, state.max_total)
    return [max(MIN_CLAMP, min(MAX_CLAMP, math.floor(s.cwnd))) for s in subflows]


def _fit_total(subflows: list[SubflowState], max_total: float) -> None:
    """Scale the windows down proportionally so they sum to at most max_total, none below
    MIN_CLAMP (if n * MIN_CLAMP exceeds max_total, every window is MIN_CLAMP)."""
    total = sum(s.cwnd for s in subflows)
    if total <= max_total:
        return
    floor_total = MIN_CLAMP * len(subflows)
    if max_total <= floor_total:
        for s in subflows:
            s.cwnd = float(MIN_CLAMP)
        return
    # Share what lies above the floor in proportion to each window's excess over it.
    scale = (max_total - floor_total) / (total - floor_total)
    for s in subflows:
        s.cwnd = MIN_CLAMP + (s.cwnd - MIN_CLAMP) * scale
