"""The DSS checksum fix (bpf/mptcp_dssfix.c) on crafted segments, by test-run: a right DSS
checksum is left alone; a payload an ALG changed (TCP checksum valid) gets the DSS checksum of
its new bytes with the TCP checksum still valid; a corrupted segment (TCP checksum wrong) is
left for MP_FAIL; what it cannot fix goes by untouched. The verdict is always TC_ACT_UNSPEC:
pass, and let the next filter on the interface (the datapath's) see the packet too."""

import socket
import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8:ffff::20"
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
DSN = 0x0123_4567_89AB_0000
SSN = 1_000_001
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1, as test-run reports it
PAYLOAD = bytes((i * 7 + 3) & 0xFF for i in range(1000))
TIMESTAMPS = b"\x08\x0a" + struct.pack("!II", 0x01020304, 0x0A0B0C0D)


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def dss_checksum(dsn: int, ssn: int, data: bytes, dlen: int | None = None) -> int:
    """RFC 8684 §3.3.1, as Linux computes it: the data's sum, then the pseudo-header's."""
    dlen = len(data) if dlen is None else dlen
    s = ones_sum(data) + ones_sum(struct.pack("!QIHH", dsn, ssn, dlen, 0))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dss_opt(csum: int, dlen: int, ack: bool = True, dsn64: bool = True, fin: bool = False):
    flags = 0x04 | (0x08 if dsn64 else 0) | (0x03 if ack else 0) | (0x10 if fin else 0)
    body = bytes([0x20, flags])
    if ack:
        body += struct.pack("!Q", 7)
    body += struct.pack("!Q" if dsn64 else "!I", DSN if dsn64 else DSN & 0xFFFFFFFF)
    body += struct.pack("!IHH", SSN, dlen, csum)
    return bytes([30, 2 + len(body)]) + body


def frame(payload: bytes, opts: bytes, v6=False, chksum=None) -> bytes:
    opts += b"\x00" * (-len(opts) % 4)
    ip = IPv6(src=CLIENT6, dst=SERVER6) if v6 else IP(src=CLIENT, dst=SERVER)
    th = TCP(sport=41000, dport=5201, seq=0x12345678, ack=1, flags="PA",
             dataofs=5 + len(opts) // 4, options=[], chksum=chksum)
    return bytes(Ether(**MAC) / ip / th / Raw(opts + payload))


def alg(payload: bytes) -> bytes:
    """What the lab's ALG does: the first payload byte changed, same length."""
    return bytes([payload[0] ^ 0x20]) + payload[1:]


def tcp_checksum_ok(raw: bytes) -> bool:
    """Does the frame's TCP checksum match what scapy computes for its bytes?"""
    pkt = Ether(raw)
    got = pkt[TCP].chksum
    pkt[TCP].chksum = None
    return Ether(bytes(pkt))[TCP].chksum == got


def dss_field(raw: bytes) -> int:
    """The DSS checksum as it is in the frame (the last two bytes of the DSS option)."""
    pkt = Ether(raw)
    tcp = bytes(pkt[TCP])
    opts = tcp[20:pkt[TCP].dataofs * 4]
    i = 0
    while i < len(opts):
        if opts[i] in (0, 1):
            i += 1
            continue
        if opts[i] == 30 and opts[i + 2] >> 4 == 2:
            return struct.unpack("!H", opts[i + opts[i + 1] - 2:i + opts[i + 1]])[0]
        i += opts[i + 1]
    raise AssertionError("no DSS option")


@pytest.fixture(scope="module")
def loaded(root_bpf):
    from controller.dssfix import Program

    p = Program()
    yield p
    p.close()


@pytest.fixture
def prog(loaded):
    """The module's program with its counts zeroed (one compile for the whole table)."""
    loaded.reset()
    return loaded


def run(prog, raw: bytes) -> bytes:
    verdict, out = prog.run(raw)
    assert verdict == TC_ACT_UNSPEC
    assert len(out) == len(raw)
    return out


def counts(prog) -> dict:
    return {k: v for k, v in prog.counters().items() if v}


# --- the table ----------------------------------------------------------------------------


@dataclass
class Case:
    desc: str
    raw: bytes
    expect: str        # "same": unchanged; "fixed": DSS checksum of the payload as it is now
    counters: dict


def cases():
    out = []
    for v6 in (False, True):
        fam = "IPv6" if v6 else "IPv4"
        for nops in range(4):   # every alignment of the checksum field in the TCP header
            pre = b"\x01" * nops
            good = dss_checksum(DSN, SSN, PAYLOAD)
            out.append(Case(f"{fam}, {nops} NOPs: right DSS checksum left alone",
                            frame(PAYLOAD, pre + dss_opt(good, len(PAYLOAD)), v6),
                            "same", {"checked": 1, "ok": 1}))
            out.append(Case(f"{fam}, {nops} NOPs: ALG-changed payload gets its DSS checksum",
                            frame(alg(PAYLOAD), pre + dss_opt(good, len(PAYLOAD)), v6),
                            "fixed", {"checked": 1, "fixed": 1}))
        good = dss_checksum(DSN, SSN, PAYLOAD)
        orig = Ether(frame(PAYLOAD, dss_opt(good, len(PAYLOAD)), v6))[TCP].chksum
        out.append(Case(f"{fam}: corrupted payload (TCP checksum wrong) left for MP_FAIL",
                        frame(alg(PAYLOAD), dss_opt(good, len(PAYLOAD)), v6, chksum=orig),
                        "same", {"checked": 1, "corrupt": 1}))
    good = dss_checksum(DSN, SSN, PAYLOAD)
    out += [
        Case("timestamps before the DSS option, odd-length payload",
             frame(alg(PAYLOAD[:777]), b"\x01\x01" + TIMESTAMPS
                   + dss_opt(dss_checksum(DSN, SSN, PAYLOAD[:777]), 777, ack=False)),
             "fixed", {"checked": 1, "fixed": 1}),
        Case("a mapping spanning segments is not this segment's to fix",
             frame(alg(PAYLOAD), dss_opt(good, 3 * len(PAYLOAD))),
             "same", {"spanning": 1}),
        Case("a 4-byte DSN leaves the pseudo-header unknown: skipped",
             frame(alg(PAYLOAD), dss_opt(good, len(PAYLOAD), dsn64=False)),
             "same", {"skipped": 1}),
        Case("a DATA_FIN mapping is skipped",
             frame(alg(PAYLOAD), dss_opt(good, len(PAYLOAD) + 1, fin=True)),
             "same", {"skipped": 1}),
        Case("no DSS checksum (checksums off): nothing to do",
             frame(alg(PAYLOAD), b"\x1e\x12\x20\x0c" + struct.pack("!QIH", DSN, SSN, 1000)
                   + b"\x01\x01"),
             "same", {}),
        Case("plain TCP", frame(PAYLOAD, TIMESTAMPS), "same", {}),
        Case("a pure ACK", frame(b"", dss_opt(0, 0)), "same", {}),
        Case("malformed options (a length past the end)",
             frame(alg(PAYLOAD), b"\x1e\x30\x20\x0c"), "same", {}),
        Case("not TCP", bytes(Ether(**MAC) / IP(src=CLIENT, dst=SERVER, proto=17)
                              / Raw(b"x" * 40)), "same", {}),
    ]
    return out


CASES = cases()


def test_counter_names_mirror_the_c_enum():
    import re

    from controller import dssfix

    text = dssfix.SOURCE.read_text()
    enum = text[text.index("enum dssfix_counter {"):text.index("DF_MAX")]
    names = [n.lower() for n in re.findall(r"DF_(\w+) = \d+", enum)]
    assert tuple(names) == dssfix.COUNTERS


def test_case_descriptions_are_unique():
    assert len({c.desc for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.desc for c in CASES])
def test_dssfix_table(prog, case):
    out = run(prog, case.raw)
    if case.expect == "same":
        assert out == case.raw
    else:
        pkt = Ether(out)
        tcp = bytes(pkt[TCP])
        data = tcp[pkt[TCP].dataofs * 4:]
        assert dss_field(out) == dss_checksum(DSN, SSN, data)
        assert dss_field(out) != dss_field(case.raw)
        assert tcp_checksum_ok(out), "the TCP checksum must follow the option change"
        # Nothing else moved: only the DSS checksum and the TCP checksum differ.
        diff = [i for i, (a, b) in enumerate(zip(out, case.raw, strict=True)) if a != b]
        assert 1 <= len(diff) <= 4
    assert counts(prog) == case.counters


def test_a_partial_checksum_segment_is_fixed_and_counted_apart(prog):
    """A veth sender's CHECKSUM_PARTIAL segment: the TCP checksum field holds only the
    pseudo-header's sum (filled in after us), so it cannot vouch for the bytes; the fix goes
    ahead and is counted as fixed_partial."""
    good = dss_checksum(DSN, SSN, PAYLOAD)
    opts = dss_opt(good, len(PAYLOAD))
    tcp_len = 20 + len(opts) + len(PAYLOAD)
    pseudo = ones_sum(socket.inet_aton(CLIENT) + socket.inet_aton(SERVER)
                      + struct.pack("!HH", 6, tcp_len))
    out = run(prog, frame(alg(PAYLOAD), opts, chksum=pseudo))
    tcp = bytes(Ether(out)[TCP])
    assert dss_field(out) == dss_checksum(DSN, SSN, tcp[20 + len(opts):])
    assert counts(prog) == {"checked": 1, "fixed_partial": 1}


def test_fixes_are_counted_per_subflow_direction(prog):
    good = dss_checksum(DSN, SSN, PAYLOAD)
    run(prog, frame(alg(PAYLOAD), dss_opt(good, len(PAYLOAD))))
    run(prog, frame(PAYLOAD, dss_opt(good, len(PAYLOAD))))
    assert prog.flows() == [{"src": f"{CLIENT}:41000", "dst": f"{SERVER}:5201", "checked": 2,
                             "fixed": 1, "corrupt": 0, "spanning": 0}]


def test_a_fixed_segment_passes_a_second_time_untouched(prog):
    """Two gateways with the fix in a row: the second finds nothing to do."""
    good = dss_checksum(DSN, SSN, PAYLOAD)
    once = run(prog, frame(alg(PAYLOAD), dss_opt(good, len(PAYLOAD))))
    assert run(prog, once) == once
    assert counts(prog) == {"checked": 2, "fixed": 1, "ok": 1}
