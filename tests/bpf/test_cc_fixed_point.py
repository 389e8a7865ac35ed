"""The per-ACK coupled algorithms as the sockops program runs them (bpf/include/coupled.h,
fixed point, compiled and run through BPF_PROG_TEST_RUN) agree with controller/cc.py's
floating-point equations on synthetic connections: equal RTTs, one lossy path, very different
RTTs, one subflow (where every algorithm is Reno), and the degenerate cases."""

import ctypes as C
from pathlib import Path

import pytest

from controller import cc, coupling, libbpf
from controller.libbpf import PinnedMap

HERE = Path(__file__).resolve().parent
W_ONE = 1 << coupling.W_SHIFT
ALGOS = {"lia": 1, "olia": 2, "balia": 3}
XDP_PASS = 2


Slot = coupling.CcSlot


class Io(C.Structure):
    """struct cc_io (cc_harness.c)."""

    _fields_ = [("conn", coupling.CcConn), ("acked_fp", C.c_uint64), ("algo", C.c_uint32),
                ("self", C.c_uint32), ("grown", C.c_uint32), ("balia_cut", C.c_uint32),
                ("sndbuf", C.c_uint64), ("mss", C.c_uint32), ("pad", C.c_uint32)]


@pytest.fixture(scope="module")
def harness(root_bpf):
    from controller.datapath import compile_bpf

    b = compile_bpf(HERE / "cc_harness.c")
    from bcc import BPF

    fn = b.load_func(b"cc_harness", BPF.XDP)
    io = PinnedMap(b[b"io"].map_fd, C.c_uint32, Io)

    def run(algo, subs, i, acked=1.0, sndbuf=False):
        x = Io(algo=ALGOS.get(algo, 0), self=i, acked_fp=int(acked * W_ONE), mss=1448)
        for j, s in enumerate(subs):
            x.conn.sl[j] = Slot(id=j + 1, w=int(s.cwnd * W_ONE), rtt_us=int(s.srtt_us),
                           l1=int(s.olia_l1_bytes), l2=int(s.olia_l2_bytes))
        io.update(C.c_uint32(0), x)
        rc, _ns, _ = libbpf.test_run(fn.fd, bytes(64))
        assert rc == XDP_PASS
        out = io.lookup(C.c_uint32(0))
        if sndbuf:
            return out.sndbuf
        return out.grown / W_ONE, out.balia_cut / W_ONE

    yield run
    b.cleanup()


def subflows(*spec, l1=None):
    out = []
    for k, (w, rtt_ms) in enumerate(spec):
        s = cc.SubflowState(cwnd=float(w), srtt_us=rtt_ms * 1000.0, mss=1448, acked=1)
        if l1:
            s.olia_l1_bytes = float(l1[k])
        out.append(s)
    return out


def reference(algo, subs, i):
    inc = {"lia": cc.lia_increase, "olia": cc.olia_increase,
           "balia": cc.balia_increase}[algo](i, subs)
    return subs[i].cwnd + min(inc, 1.0 / subs[i].cwnd)


CASES = {
    "one subflow (Reno)": subflows((20, 30)),
    "equal RTTs": subflows((10, 30), (10, 30)),
    "one lossy path": subflows((4, 30), (24, 30), l1=(20_000, 400_000)),
    "very different RTTs": subflows((30, 10), (8, 200)),
    "eight paths": subflows(*[(3 + k, 20 + 5 * k) for k in range(8)]),
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_per_ack_increase_matches_the_equations(harness, algo, case):
    subs = CASES[case]
    for i in range(len(subs)):
        got, _ = harness(algo, subs, i, acked=1.0)
        want = reference(algo, subs, i)
        # Fixed point: windows in 1/1024 packet; the increase itself to ~1e-4 packets.
        assert got == pytest.approx(want, abs=2.5 / W_ONE), (i, got, want)


@pytest.mark.parametrize("case", sorted(CASES))
def test_balia_decrease_matches(harness, case):
    subs = CASES[case]
    for i in range(len(subs)):
        _, cut = harness("balia", subs, i)
        want = subs[i].cwnd - cc.balia_decrease(i, subs)
        # b = max rate / own rate carries the rates' 1/1024-packet rounding: ~1e-3 relative.
        assert cut == pytest.approx(want, abs=max(2.0 / W_ONE, 1e-3 * subs[i].cwnd)), (i, cut, want)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_a_window_of_many_acks_grows_like_the_sum_of_single_ones(harness, algo):
    subs = CASES["equal RTTs"]
    one, _ = harness(algo, subs, 0, acked=1.0)
    ten, _ = harness(algo, subs, 0, acked=10.0)
    assert ten - subs[0].cwnd == pytest.approx(10 * (one - subs[0].cwnd), abs=12 / W_ONE)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_degenerate_states_neither_fault_nor_shrink_below_one_packet(harness, algo):
    for subs in (subflows((0, 0)), subflows((0, 30), (5, 0)), subflows((1, 1), (1, 10_000))):
        for i in range(len(subs)):
            got, cut = harness(algo, subs, i, acked=3.0)
            assert got >= 1.0 or subs[i].cwnd == 0
            assert 0 <= cut <= max(subs[i].cwnd, 1)


def test_coupled_never_grows_faster_than_reno(harness):
    subs = CASES["very different RTTs"]
    for algo in ALGOS:
        for i in range(len(subs)):
            got, _ = harness(algo, subs, i, acked=1.0)
            assert got - subs[i].cwnd <= 1.0 / subs[i].cwnd + 1.0 / W_ONE


@pytest.mark.parametrize("case", sorted(CASES))
def test_send_buffer_matches_the_equation(harness, case):
    subs = CASES[case]
    got = harness("lia", subs, 0, sndbuf=True)
    # integer division per subflow in BPF: under a byte per packet of each
    assert got == pytest.approx(cc.send_buffer(subs), abs=2 * 1448 * len(subs))


def test_send_buffer_covers_a_timeout_on_short_paths_and_the_rtt_on_long_ones(harness):
    # 20 packets per 10 ms carry 400 in the minimum RTO: twice that, and twice the bytes for
    # the kernel's overhead
    assert harness("lia", subflows((20, 10), (2, 10)), 0, sndbuf=True) == (800 + 80) * 1448 * 2
    # the largest RTT (300 ms) beyond the minimum RTO sets the time
    assert harness("lia", subflows((10, 300), (10, 100)), 0, sndbuf=True) == (20 + 60) * 1448 * 2
    assert harness("lia", subflows((0, 0)), 0, sndbuf=True) == 0
