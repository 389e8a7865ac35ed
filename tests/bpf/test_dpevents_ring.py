"""The daemon's reading of the datapath's ring buffer (controller/dpevents.py), on the real
XDP program through test-run: the events arrive through a selector, as they would in the
daemon's loop, and read as one line each that names the subflow; keys are never logged."""

import selectors

import pytest
from test_decode_table import mp_capable, mp_fail, mp_tcprst
from test_dss_checksum import (
    CLIENT,
    CPORT,
    DSN,
    ISN,
    PAYLOAD,
    SERVER,
    SPORT,
    dss_checksum,
    handshake,
    mapping,
    prog,  # noqa: F401  (fixture)
    run,
    segment,
)

from controller import dpevents

SUBFLOW = f"{SERVER}:{SPORT} -> {CLIENT}:{CPORT}"   # the server's view: local first


@pytest.fixture
def events(prog):  # noqa: F811
    ev = dpevents.DatapathEvents(prog.map_fd("events"))
    yield ev
    ev.close()


def wait_readable(events) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(events, selectors.EVENT_READ)
        return bool(sel.select(timeout=2.0))


def said(events):
    return [dpevents.describe(e, "eth0") for e in events.read()]


def test_a_checksum_mismatch_is_readable_at_once_and_names_subflow_and_sums(prog, events):  # noqa: F811
    handshake(prog)
    csum = dss_checksum(DSN, 1, PAYLOAD)
    bad = bytearray(PAYLOAD)
    bad[700] ^= 0x10
    run(prog, segment([mapping(1, len(PAYLOAD), csum)], ISN + 1, bytes(bad)))
    assert wait_readable(events)
    lines = [s for s in said(events) if s is not None]
    assert lines == [(
        "dss_csum_bad",
        f"DSS checksum mismatch on {SUBFLOW} (eth0): mapping DSN {DSN}, subflow seq 1, "
        f"{len(PAYLOAD)} bytes carried 0x{csum:04x}, the payload sums to "
        f"0x{dss_checksum(DSN, 1, bytes(bad)):04x}")]
    assert events.read() == []   # drained


def test_keys_are_read_but_never_described(prog, events):  # noqa: F811
    run(prog, segment([mp_capable(skey=0x1111_2222_3333_4444)], ISN, flags="S"))
    got = events.read()
    assert [e.type for e in got] == [dpevents.EV.EV_MPC_KEYS]
    assert said(events) == [] and dpevents.describe(got[0]) is None


def test_mp_fail_and_tcprst_name_what_the_peer_said(prog, events):  # noqa: F811
    run(prog, segment([mp_fail(DSN + 5)], ISN + 1))
    run(prog, segment([mp_tcprst(flags=1, reason=6)], ISN + 2, flags="R"))
    lines = said(events)
    assert lines == [
        ("mp_fail", f"MP_FAIL received on {SUBFLOW} (eth0): data from DSN {DSN + 5} failed "
                    "its DSS checksum; the subflow falls back or is reset"),
        ("tcprst", f"MP_TCPRST received on {SUBFLOW} (eth0): reason 6 (middlebox "
                   "interference, transient)"),
    ]


def test_a_malformed_option_is_described_without_trusting_it(prog, events):  # noqa: F811
    run(prog, segment([bytes([30, 5, 0x10, 0, 0]) + b"\x00" * 3], ISN + 1))  # MP_JOIN, len 5
    lines = said(events)
    assert lines == [("malformed", f"malformed TCP/MPTCP options on a segment from the peer, "
                                   f"{SUBFLOW} (eth0): ignored, not trusted")]
