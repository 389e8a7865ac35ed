"""A 20,000-packet slice of the datapath fuzzer (bench/fuzz.py; `make fuzz` runs 1M): mutated
table options and random frames through XDP and tc never error, always pass, count malformed
exactly as RFC 8684 says, and never grow a map past its size. Plus the fuzzer's own model
checked against the decoder table, so a wrong model cannot hide a wrong datapath."""

import sys
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether
from test_decode_table import CASES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import fuzz  # noqa: E402

SLICE = 20_000
SEED = 20260


def tcp_options(frame: bytes) -> bytes | None:
    pkt = Ether(frame)
    if TCP not in pkt:
        return None
    tcp = pkt[TCP]
    return bytes(tcp)[20 : tcp.dataofs * 4]


TCP_CASES = [c for c in CASES if tcp_options(c.frame) is not None]


@pytest.mark.parametrize("c", TCP_CASES, ids=[c.desc for c in TCP_CASES])
def test_fuzz_model_agrees_with_the_decoder_table(c):
    assert fuzz.options_malformed(tcp_options(c.frame)) == c.expect["malformed"]


def test_same_seed_gives_the_same_packets():
    a = [s.frame for s in fuzz.samples(SEED, 300)]
    assert a == [s.frame for s in fuzz.samples(SEED, 300)]
    assert a != [s.frame for s in fuzz.samples(SEED + 1, 300)]


def test_every_bad_length_for_a_subtype_is_predicted_malformed():
    """The model's promise behind the run's strictest check: a length its subtype forbids."""
    for sub in range(9):
        for n in range(2, 41):
            opt = bytes([30, n, sub << 4]) + bytes(max(0, n - 3))
            if not fuzz.mptcp_len_ok(opt[:n]):
                area = opt[:n] + bytes(-n % 4)
                assert fuzz.options_malformed(area), (sub, n)


@pytest.fixture(scope="module")
def report(root_bpf):
    return fuzz.fuzz(SLICE, SEED)


def test_fuzz_slice_keeps_every_invariant(report):
    assert report.packets == SLICE
    assert report.violations == []


def test_fuzz_slice_runs_both_programs_and_fills_the_maps(report):
    assert report.xdp_runs > SLICE // 3 and report.tc_runs > SLICE // 3
    assert report.predicted_malformed > SLICE // 10 and report.predicted_clean > SLICE // 10
    assert report.malformed_counted >= report.predicted_malformed
    # The LRU subflow map is filled (new 4-tuples far outnumber its entries), never overfilled.
    assert fuzz.SUBFLOW_ENTRIES // 2 < report.max_subflows <= fuzz.SUBFLOW_ENTRIES
    assert report.max_conns <= fuzz.CONN_ENTRIES
