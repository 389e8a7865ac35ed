"""Unit tests for controller/cc.py: LIA, OLIA and BALIA against hand-computed values of their
equations, the bounds and robustness of one controller tick, and a fluid simulation of two
subflows sharing a bottleneck with one TCP flow (coupled takes about half, uncoupled 2/3)."""

import math
import random

import pytest

from controller.cc import (
    DEFAULT_RTT_US,
    MIN_CLAMP,
    CoupledState,
    SubflowState,
    balia_alpha,
    balia_decrease,
    balia_increase,
    lia_alpha,
    lia_increase,
    lia_increase_bytes,
    olia_alpha,
    olia_increase,
    olia_sets,
    step,
)
from controller.errors import BadInput

MS = 1000  # µs
COUPLED = ("lia", "olia", "balia")
INCREASE = {"lia": lia_increase, "olia": olia_increase, "balia": balia_increase}


def flows(windows, rtts_ms, acked=1, mss=1448, **kw):
    """Subflows in congestion avoidance with the given windows (packets) and RTTs (ms)."""
    return [
        SubflowState(cwnd=w, srtt_us=r * MS, mss=mss, acked=acked, slow_start=False, **kw)
        for w, r in zip(windows, rtts_ms, strict=True)
    ]


# --- LIA (RFC 6356) ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 9))
def test_lia_alpha_is_one_over_n_on_equal_paths(n):
    # alpha = n*w * (w/r^2) / (n*w/r)^2 = 1/n
    assert lia_alpha(flows([10] * n, [50] * n)) == pytest.approx(1 / n)


def test_lia_alpha_with_10ms_and_100ms_paths():
    # In ms: max(w/r^2) = 10/100 = 0.1; sum w/r = 1 + 0.1 = 1.1; alpha = 20 * 0.1 / 1.21.
    assert lia_alpha(flows([10, 10], [10, 100])) == pytest.approx(1.6528926, rel=1e-6)


def test_lia_alpha_does_not_depend_on_the_rtt_unit():
    a = flows([10, 30], [10, 100])
    b = [SubflowState(cwnd=s.cwnd, srtt_us=s.srtt_us / MS, mss=s.mss) for s in a]
    assert lia_alpha(a) == pytest.approx(lia_alpha(b))


def test_lia_increase_on_equal_paths_is_alpha_over_total():
    # 10 acked * min(0.5 / 20, 1 / 10) = 0.25 packets
    sf = flows([10, 10], [100, 100], acked=10)
    assert lia_increase(0, sf) == pytest.approx(0.25)
    assert lia_increase(1, sf) == pytest.approx(0.25)


def test_lia_increase_with_10ms_and_100ms_paths():
    # alpha / total = 1.6528926 / 20 = 0.0826446 < 1/10 on both paths
    sf = flows([10, 10], [10, 100])
    sf[0].acked = 10
    assert lia_increase(0, sf) == pytest.approx(0.826446, rel=1e-6)
    assert lia_increase(1, sf) == pytest.approx(0.0826446, rel=1e-6)


def test_lia_increase_falls_back_to_reno_when_alpha_over_total_is_larger():
    # w = (2, 100), rtt = (1, 100) ms: max(w/r^2) = 2; sum w/r = 3; alpha = 102 * 2 / 9;
    # alpha / total = 2/9 = 0.2222: below 1/2 on path 0, above 1/100 on path 1 (Reno binds).
    sf = flows([2, 100], [1, 100])
    assert lia_alpha(sf) == pytest.approx(204 / 9)
    assert lia_increase(0, sf) == pytest.approx(2 / 9)
    assert lia_increase(1, sf) == pytest.approx(0.01)


def test_lia_increase_bytes_is_rfc6356_in_bytes():
    # Equal MSS 1000, w = 10 packets: 10000-byte windows, alpha 0.5, total 20000 bytes.
    # One 1000-byte ACK: min(0.5*1000*1000/20000, 1000*1000/10000) = 25 bytes = 0.025 packets.
    sf = flows([10, 10], [100, 100], mss=1000)
    assert lia_increase_bytes(0, sf, 1000) == pytest.approx(25.0)
    assert lia_increase(0, sf) * 1000 == pytest.approx(25.0)


def test_lia_alpha_in_bytes_differs_from_packets_when_mss_differ():
    # Windows 10 packets of 1000 and 500 bytes, equal RTT r: alpha_bytes =
    # 15000 * (10000/r^2) / (15000/r)^2 = 2/3; one 500-byte ACK on path 1 adds
    # min(2/3*500*500/15000, 500*500/5000) = 11.11 bytes.
    sf = flows([10, 10], [100, 100])
    sf[0].mss, sf[1].mss = 1000, 500
    assert lia_alpha(sf) == pytest.approx(0.5)
    assert lia_alpha(sf, in_bytes=True) == pytest.approx(2 / 3)
    assert lia_increase_bytes(1, sf, 500) == pytest.approx(100 / 9)


@pytest.mark.parametrize("n", range(1, 9))
def test_lia_on_n_equal_paths_has_a_single_tcps_equilibrium(n):
    # Per RTT each path acks its window w: the increases sum to alpha = 1/n packets, and a loss
    # on one path removes w/2 = W/(2n). Both are a single TCP's (+1 per RTT, -W/2 per loss)
    # divided by n, so the balance of increase and decrease (the equilibrium window at a given
    # loss rate) is a single TCP's: +1/n against -W/(2n) <=> +1 against -W/2.
    w, big_w = 12.0, 12.0 * n
    sf = flows([w] * n, [40] * n, acked=12)
    per_rtt = sum(lia_increase(i, sf) for i in range(n))
    assert per_rtt == pytest.approx(1 / n)
    per_loss = w / 2
    assert per_rtt / per_loss == pytest.approx(1.0 / (big_w / 2))
    # Per ACK, anywhere on the connection, the total grows by 1/(n * W): a single TCP's 1/W
    # only for n = 1 (RFC 6356 trades the slower growth against the smaller backoff).
    sf1 = flows([w] * n, [40] * n, acked=1)
    assert lia_increase(0, sf1) == pytest.approx(1 / (n * big_w))


# --- OLIA (Khalili et al., CoNEXT 2012) ----------------------------------------------------------


def test_olia_moves_window_from_the_largest_path_to_the_best_one():
    # w = (10, 20), equal RTT 100 ms. l = max(l1, l2): path 0 3000 bytes, path 1 2000 bytes,
    # so B = {0} (l^2/rtt), M = {1} (largest window), B\M = {0}: alpha = (+1/2, -1/2).
    sf = flows([10, 20], [100, 100])
    sf[0].olia_l1_bytes, sf[0].olia_l2_bytes = 3000, 1000
    sf[1].olia_l1_bytes, sf[1].olia_l2_bytes = 1000, 2000
    assert olia_sets(sf) == ({1}, {0})
    assert olia_alpha(0, sf) == pytest.approx(0.5)
    assert olia_alpha(1, sf) == pytest.approx(-0.5)
    # (w_r/r^2)/(sum w/r)^2 = w_r/900 with r = 100: 10/900 + 0.5/10 and 20/900 - 0.5/20
    assert olia_increase(0, sf) == pytest.approx(0.0611111, rel=1e-6)
    assert olia_increase(1, sf) == pytest.approx(-0.0027778, rel=1e-4)


def test_olia_alphas_with_two_best_paths_and_one_largest():
    # Three paths, no losses yet (all l equal): B = all, M = {2}, B\M = {0, 1}:
    # alpha = 1/(3*2) on paths 0 and 1, -1/(3*1) on path 2; sum w = 40, equal RTT.
    sf = flows([10, 10, 20], [50, 50, 50])
    assert [olia_alpha(i, sf) for i in range(3)] == pytest.approx([1 / 6, 1 / 6, -1 / 3])
    assert olia_increase(0, sf) == pytest.approx(10 / 1600 + (1 / 6) / 10)
    assert olia_increase(2, sf) == pytest.approx(20 / 1600 - (1 / 3) / 20)
    assert sum(olia_alpha(i, sf) for i in range(3)) == pytest.approx(0.0)


def test_olia_alpha_is_zero_when_the_best_path_has_the_largest_window():
    sf = flows([10, 20], [100, 100])
    sf[1].olia_l2_bytes = 5000
    assert olia_sets(sf) == ({1}, {1})
    assert [olia_alpha(i, sf) for i in range(2)] == [0.0, 0.0]
    assert olia_increase(0, sf) == pytest.approx(10 / 900)
    assert olia_increase(1, sf) == pytest.approx(20 / 900)


def test_olia_on_one_path_is_reno():
    assert olia_increase(0, flows([25], [30])) == pytest.approx(1 / 25)


def test_olia_equation_can_exceed_reno_but_step_caps_it():
    # w = (10, 20), rtt = (10, 100) ms, path 0 best: x = (1, 0.2) per ms;
    # 0.1/1.44 + 0.5/10 = 0.119444 > 1/10. The controller grows it by Reno's 0.1 at most.
    sf = flows([10, 20], [10, 100])
    sf[0].olia_l2_bytes = 9000
    assert olia_increase(0, sf) == pytest.approx(0.1194444, rel=1e-6)
    assert olia_increase(1, sf) == pytest.approx(0.002 / 1.44 - 0.025, rel=1e-6)
    step("olia", sf)
    assert sf[0].cwnd == pytest.approx(10.1)
    assert sf[1].cwnd == pytest.approx(20 + 0.002 / 1.44 - 0.025)


def test_olia_loss_bytes_rotate_on_each_loss():
    sf = flows([10, 10], [50, 50], acked=10, mss=1000)
    step("olia", sf)
    assert (sf[0].olia_l1_bytes, sf[0].olia_l2_bytes) == (0, 10_000)
    sf[0].losses = 1
    step("olia", sf)
    assert (sf[0].olia_l1_bytes, sf[0].olia_l2_bytes) == (20_000, 0)
    assert (sf[1].olia_l1_bytes, sf[1].olia_l2_bytes) == (0, 20_000)


# --- BALIA (Peng, Walid, Hwang, Low, ToN 2016) ---------------------------------------------------


def test_balia_on_10ms_and_100ms_paths():
    # x = w/rtt = (1, 0.1) per ms, sum 1.1. Path 0: alpha 1, 1/(10 * 1.21) = 0.0826446.
    # Path 1: alpha 10, 0.1/(100 * 1.21) * (11/2) * (14/5) = 0.0127273.
    sf = flows([10, 10], [10, 100])
    assert balia_alpha(0, sf) == pytest.approx(1.0)
    assert balia_alpha(1, sf) == pytest.approx(10.0)
    assert balia_increase(0, sf) == pytest.approx(0.0826446, rel=1e-6)
    assert balia_increase(1, sf) == pytest.approx(0.0127273, rel=1e-5)
    # Decrease (w/2) * min(alpha, 1.5): 5 on the fast path, 7.5 on the slow one.
    assert balia_decrease(0, sf) == pytest.approx(5.0)
    assert balia_decrease(1, sf) == pytest.approx(7.5)


def test_balia_decrease_between_a_half_and_three_quarters():
    # rtt 10 and 12 ms: alpha on the slower path = 1.2, decrease 10/2 * 1.2 = 6.
    assert balia_decrease(1, flows([10, 10], [10, 12])) == pytest.approx(6.0)


def test_balia_on_equal_paths_and_on_one_path():
    # Equal: alpha = 1, x/(r (2x)^2) = 1/(4w) = 0.025; one path: 1/w.
    assert balia_increase(0, flows([10, 10], [80, 80])) == pytest.approx(0.025)
    assert balia_increase(0, flows([10], [80])) == pytest.approx(0.1)


# --- Properties over many states -----------------------------------------------------------------


def random_states(seed, count=300):
    rng = random.Random(seed)
    for _ in range(count):
        n = rng.randint(1, 8)
        sf = flows(
            [rng.uniform(2, 200) for _ in range(n)],
            [rng.choice([1, 5, 10, 40, 100, 300]) * rng.uniform(0.5, 2) for _ in range(n)],
        )
        for s in sf:
            s.olia_l1_bytes = rng.choice([0, rng.uniform(0, 1e6)])
            s.olia_l2_bytes = rng.uniform(0, 1e6)
        yield sf


def test_lia_and_balia_equations_never_exceed_renos_increase():
    for sf in random_states(1):
        for i, s in enumerate(sf):
            assert lia_increase(i, sf) <= 1 / s.cwnd * (1 + 1e-12)
            assert balia_increase(i, sf) <= 1 / s.cwnd * (1 + 1e-12)


@pytest.mark.parametrize("algo", COUPLED)
def test_step_never_grows_a_path_faster_than_reno(algo):
    for sf in random_states(2):
        before = [s.cwnd for s in sf]
        for s in sf:
            s.acked = 7
        step(algo, sf)
        for w0, s in zip(before, sf, strict=True):
            assert s.cwnd - w0 <= 7 / w0 * (1 + 1e-12)


@pytest.mark.parametrize("algo", COUPLED)
def test_windows_stay_between_the_minimum_and_the_connection_total(algo):
    rng = random.Random(3)
    for sf in random_states(4, count=100):
        for _ in range(20):
            for s in sf:
                s.acked = rng.randint(0, 50)
                s.losses = rng.choice([0, 0, 0, 1, 3])
            clamps = step(algo, sf)
            assert all(isinstance(c, int) for c in clamps)
            assert all(c >= MIN_CLAMP for c in clamps)
            assert all(s.cwnd >= MIN_CLAMP for s in sf)
            assert all(c <= sum(clamps) for c in clamps)


@pytest.mark.parametrize("algo", COUPLED)
def test_zero_or_broken_windows_and_rtts_do_not_divide_by_zero(algo):
    odd = [0.0, -3.0, math.nan, 0.0, 1e-300, 1.0, 2.0, 0.0]
    for n in range(1, 9):
        sf = [
            SubflowState(cwnd=odd[k], srtt_us=[0.0, math.nan, -1.0, 0.0][k % 4], mss=0, acked=3)
            for k in range(n)
        ]
        for i in range(n):
            assert math.isfinite(INCREASE[algo](i, sf))
            assert math.isfinite(lia_alpha(sf))
        clamps = step(algo, sf)
        assert clamps == [max(MIN_CLAMP, c) for c in clamps]
        assert all(math.isfinite(s.cwnd) for s in sf)


def test_a_missing_rtt_counts_as_the_largest_rtt():
    # Path 1 has no RTT: it is treated as the other path's 100 ms, making the paths equal.
    sf = flows([10, 10], [100, 100])
    sf[1].srtt_us = 0
    assert lia_alpha(sf) == pytest.approx(0.5)


def test_with_no_rtt_at_all_every_path_gets_the_same_stand_in():
    # No valid RTT anywhere: all paths use the connection's largest seen (else 1 ms), so they
    # count as equal-RTT: alpha = 50 * (40/r^2) / (50/r)^2 = 0.8.
    assert DEFAULT_RTT_US == 1 * MS
    assert lia_alpha(flows([10, 40], [0, 0])) == pytest.approx(0.8)
    state = CoupledState()
    step("lia", flows([10, 10], [30, 70]), state)
    assert state.max_srtt_us == 70 * MS
    assert lia_alpha(flows([10, 40], [0, 0]), state) == pytest.approx(0.8)


# --- One tick ------------------------------------------------------------------------------------


def test_lia_tick_hand_computed():
    # Equal RTTs, w = 10 each, 10 acked each: +0.25 each; a loss on path 1 halves it instead.
    sf = flows([10, 10], [100, 100], acked=10)
    assert step("lia", sf) == [10, 10]
    assert [s.cwnd for s in sf] == pytest.approx([10.25, 10.25])
    sf = flows([10, 10], [100, 100], acked=10)
    sf[1].losses = 1
    assert step("lia", sf) == [10, 5]
    assert [s.cwnd for s in sf] == pytest.approx([10.25, 5.0])


def test_many_losses_in_one_tick_halve_once():
    sf = flows([40, 40], [50, 50], acked=5)
    sf[0].losses = 6
    step("lia", sf)
    assert sf[0].cwnd == pytest.approx(20.0)


def test_balia_tick_on_a_lossy_slow_path():
    sf = flows([10, 10], [10, 100], acked=0)
    sf[1].losses = 1
    assert step("balia", sf) == [10, 2]
    assert sf[1].cwnd == pytest.approx(2.5)


def test_a_window_never_drops_below_two_packets():
    sf = flows([3, 3], [10, 100])
    sf[1].losses = 1
    assert step("balia", sf) == [3, 2]
    assert sf[1].cwnd == MIN_CLAMP


def test_slow_start_grows_one_packet_per_ack_until_the_first_loss():
    sf = [SubflowState(cwnd=10, srtt_us=50 * MS, mss=1448, acked=10) for _ in range(2)]
    assert step("lia", sf) == [20, 20]
    sf[0].losses = 1
    assert step("lia", sf) == [10, 30]
    assert (sf[0].slow_start, sf[1].slow_start) == (False, True)


def test_a_new_subflow_adopts_the_kernels_window():
    sf = [SubflowState(cwnd=0, srtt_us=50 * MS, mss=1448, kernel_cwnd=10)]
    assert step("lia", sf) == [10]
    sf = [SubflowState(cwnd=0, srtt_us=50 * MS, mss=1448)]
    assert step("lia", sf) == [MIN_CLAMP]


def test_an_application_limited_subflow_does_not_grow():
    sf = flows([40, 40], [50, 50], acked=5)
    sf[0].kernel_cwnd = 12  # the kernel uses under half its 40-packet allowance
    sf[1].kernel_cwnd = 40
    step("lia", sf)
    assert sf[0].cwnd == 40
    assert sf[1].cwnd > 40


def test_max_total_scales_windows_down_above_the_floor():
    state = CoupledState(max_total=40)
    sf = flows([50, 30, 2], [50, 50, 50], acked=0)
    step("lia", sf, state)
    # floor 3*2 = 6; (40 - 6) / (82 - 6) of each window's excess over 2 is kept
    assert [s.cwnd for s in sf] == pytest.approx([2 + 48 * 34 / 76, 2 + 28 * 34 / 76, 2.0])
    assert sum(s.cwnd for s in sf) == pytest.approx(40)


def test_uncoupled_pushes_no_clamp_and_leaves_windows_alone():
    sf = flows([10, 10], [10, 100], acked=10)
    assert step("uncoupled", sf) is None
    assert [s.cwnd for s in sf] == [10, 10]


def test_no_subflows_no_clamps():
    assert step("lia", []) == []
    assert lia_alpha([]) == 0.0


def test_unknown_algorithm_is_bad_input():
    with pytest.raises(BadInput, match="lia"):
        step("cubic", flows([10], [10]))


def test_subflow_index_out_of_range_is_bad_input():
    with pytest.raises(BadInput):
        lia_increase(2, flows([10, 10], [10, 10]))


# --- Fluid simulation: one bottleneck, two subflows and a TCP flow -------------------------------


def reno(w, acked, loss, slow_start):
    """The competitor's (and uncoupled subflows') Reno over one RTT: window, slow_start."""
    if loss:
        return max(w / 2, MIN_CLAMP), False
    if slow_start:
        return w + acked, True
    return w + acked / w, False


def mptcp_share(algo, seed, ticks=6000, capacity=120):
    """Average share of the bottleneck the two subflows get after warm-up. One tick is one RTT
    (equal 50 ms RTTs): every flow acks its window. When the windows sum above the capacity,
    one packet is dropped, from a flow picked in proportion to its window (each packet is as
    likely to be the one dropped)."""
    rng = random.Random(seed)
    sf = [SubflowState(cwnd=10, srtt_us=50 * MS, mss=1448) for _ in range(2)]
    uncoupled = [[10.0, True], [10.0, True]]
    tcp, tcp_ss = 10.0, True
    state = CoupledState()
    shares = []
    for t in range(ticks):
        mp = [s.cwnd for s in sf] if algo != "uncoupled" else [u[0] for u in uncoupled]
        windows = [*mp, tcp]
        lost = [0, 0, 0]
        if sum(windows) > capacity:
            lost[rng.choices(range(3), weights=windows)[0]] = 1
        tcp, tcp_ss = reno(tcp, round(tcp), lost[2], tcp_ss)
        if algo == "uncoupled":
            for k, u in enumerate(uncoupled):
                u[0], u[1] = reno(u[0], round(u[0]), lost[k], u[1])
        else:
            for k, s in enumerate(sf):
                s.acked, s.losses, s.kernel_cwnd = round(mp[k]), lost[k], math.floor(mp[k])
            step(algo, sf, state)
        if t >= ticks // 4:
            shares.append(sum(mp) / sum(windows))
    return sum(shares) / len(shares)


@pytest.mark.parametrize("algo", COUPLED)
@pytest.mark.parametrize("seed", range(3))
def test_coupled_subflows_take_about_a_single_tcps_share(algo, seed):
    assert 0.4 <= mptcp_share(algo, seed) <= 0.6


@pytest.mark.parametrize("seed", range(3))
def test_uncoupled_subflows_take_about_two_thirds(seed):
    assert mptcp_share("uncoupled", seed) == pytest.approx(2 / 3, abs=0.05)
