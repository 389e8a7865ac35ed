"""20,000-packet slices of the fuzzers (bench/fuzz.py; `make fuzz` runs 1M per program): for
the datapath, mutated table options and random frames through XDP and tc never error, always
pass, count malformed exactly as RFC 8684 says, and never grow a map past its size; for the load
balancer and the DSS fix, every packet gets the verdict, output and counter moves their docs
promise and the maps stay bounded. Plus the fuzzers' own models checked against the table
tests, so a wrong model cannot hide a wrong program."""

import os
import sys
from pathlib import Path

import pytest
import test_dssfix
import test_lb
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether
from test_decode_table import CASES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import fuzz, fuzz_dssfix, fuzz_lb  # noqa: E402

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


# --- the DSS fix (bench/fuzz_dssfix.py) --------------------------------------------------------


@pytest.mark.parametrize("case", test_dssfix.CASES, ids=[c.desc for c in test_dssfix.CASES])
def test_dssfix_model_agrees_with_the_dssfix_table(case):
    exp = fuzz_dssfix.expect(case.raw)
    assert {k: exp.counts.count(k) for k in exp.counts} == case.counters
    assert exp.fixes == (case.expect == "fixed")


def test_dssfix_model_takes_a_partial_checksum_for_a_fix_and_a_wrong_one_for_corruption():
    good = test_dssfix.dss_checksum(test_dssfix.DSN, test_dssfix.SSN, test_dssfix.PAYLOAD)
    raw = test_dssfix.frame(test_dssfix.alg(test_dssfix.PAYLOAD),
                            test_dssfix.dss_opt(good, len(test_dssfix.PAYLOAD)))
    seg = fuzz_dssfix.parse_to_tcp(raw)
    partial = fuzz_dssfix.set_tcp_checksum(raw, seg, fuzz_dssfix.pseudo_sum(seg))
    assert fuzz_dssfix.expect(partial).counts == ("checked", "fixed_partial")
    wrong = fuzz_dssfix.set_tcp_checksum(raw, seg, fuzz_dssfix.pseudo_sum(seg) ^ 1)
    assert fuzz_dssfix.expect(wrong).counts == ("checked", "corrupt")


@pytest.fixture(scope="module")
def dssfix_report(root_bpf):
    return fuzz_dssfix.fuzz_program(SLICE, SEED)


def test_dssfix_fuzz_slice_keeps_every_invariant(dssfix_report):
    assert dssfix_report.packets == SLICE
    assert dssfix_report.violations == []


def test_dssfix_fuzz_slice_reaches_every_outcome_and_fills_the_flow_map(dssfix_report):
    r = dssfix_report
    assert r.runs > SLICE * 9 // 10
    assert all(r.counted[k] > SLICE // 200 for k in fuzz_dssfix.COUNTERS), r.counted
    assert r.changed == r.counted["fixed"] + r.counted["fixed_partial"]
    assert r.changed_tcp_valid == r.counted["fixed"]
    assert fuzz_dssfix.DSSFIX_FLOWS // 2 < r.max_flows <= fuzz_dssfix.DSSFIX_FLOWS


# --- the load balancer (bench/fuzz_lb.py) -------------------------------------------------------


def test_lb_model_classes_the_lb_tables_frames_as_the_program_does():
    model = fuzz_lb.Model(4, [0] * 7, set())
    assert fuzz_lb.SITES[4][0] == test_lb.VIP and fuzz_lb.VPORT == test_lb.VPORT
    join = test_lb.frame([test_lb.MSS, test_lb.SACK_PERM, test_lb.TIMESTAMPS, test_lb.NOP,
                          test_lb.WSCALE, test_lb.join_syn(0, 2, 0xDEADBEEF, 9)], flags="S")
    assert model.expect(join).counts == {"packets": 1, "vip": 1, "join_hit": 1, "forwarded": 1}
    unknown = test_lb.frame([test_lb.join_syn(0, 2, 0x0BADF00D, 1)], flags="S")
    assert model.expect(unknown).verdict == fuzz_lb.XDP_DROP
    assert "join_unknown" in model.expect(unknown).counts
    for data in (test_lb.frame([test_lb.mp_capable()], flags="S", dst="198.51.100.81"),
                 test_lb.frame([test_lb.mp_capable()], flags="S", dport=81)):
        assert model.expect(data).counts == {"packets": 1}
    dss_only = test_lb.frame([test_lb.NOP, test_lb.NOP, test_lb.TIMESTAMPS,
                              test_lb.dss(ack=1, dsn=5, ssn=1, dlen=4)], payload=b"abcd")
    assert fuzz_lb.scan(fuzz_lb.parse_vip(dss_only, 4, model.vip).opts) == fuzz_lb.Found()


@pytest.fixture(scope="module")
def lb_report(root_bpf):
    return fuzz_lb.fuzz_program(SLICE, SEED)


def test_lb_fuzz_slice_keeps_every_invariant(lb_report):
    assert lb_report.packets == SLICE
    assert lb_report.violations == []


def test_lb_fuzz_slice_runs_both_builds_every_policy_and_verdict_and_fills_the_table(lb_report):
    r = lb_report
    assert min(r.runs.values()) > SLICE // 4
    assert min(r.policies.values()) > 0
    assert min(r.verdicts.values()) > SLICE // 200, r.verdicts
    c = r.counters
    assert c["packets"] == SLICE and c["forwarded"] == r.verdicts["tx"]
    assert min(c[k] for k in ("join_hit", "join_unknown", "join_hashed", "blocked",
                              "not_handled", "malformed", "keys", "add_addr")) > 0, c
    assert r.events == c["keys"] + c["add_addr"]
    # lb_conns keeps an LRU list per CPU (BPF_F_NO_COMMON_LRU): at least the share of the CPU
    # the test ran on fills up; the whole table never overflows.
    assert fuzz_lb.LB_CONN_ENTRIES // os.cpu_count() <= r.max_conns <= fuzz_lb.LB_CONN_ENTRIES
