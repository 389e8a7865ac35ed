"""The datapath's MPTCP decoder, table-driven (Katran style): each case is a description, a frame
built with scapy from known field values, and the decode those values must produce. Every frame
runs through the real XDP program (BPF_PROG_TEST_RUN); a few also through the tc program."""

import ctypes
import socket
import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from controller import abi
from controller.decode import packet_record

XDP_PASS = 2
TC_ACT_OK = 0
MPTCP = abi.TCPOPT_MPTCP

S4, D4 = "192.0.2.1", "198.51.100.2"
S6, D6 = "2001:db8::1", "2001:db8:ffff::2"
SPORT, DPORT = 40000, 443
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


# --- MPTCP option builders: wire bytes and the decode they must give ------------------------


@dataclass
class Opt:
    """A well-formed MPTCP option: its bytes and its expected JSON object."""

    raw: bytes
    expect: dict


class Bad(bytes):
    """Option bytes the decoder must reject; options after them are not decoded."""


def _mptcp(subtype_byte: int, body: bytes) -> bytes:
    return bytes([MPTCP, 3 + len(body), subtype_byte]) + body


def mp_capable(version=1, flags=0x81, skey=None, rkey=None, data_len=None, csum=None) -> Opt:
    body = bytes([flags])
    for fmt, v in (("!Q", skey), ("!Q", rkey), ("!H", data_len), ("!H", csum)):
        if v is not None:
            body += struct.pack(fmt, v)
    return Opt(_mptcp(0x00 | version, body), {
        "subtype": "MP_CAPABLE", "version": version, "flags": flags,
        "sender_key": None if skey is None else f"{skey:016x}",
        "receiver_key": None if rkey is None else f"{rkey:016x}",
        "data_len": data_len, "checksum": csum,
    })


def join_syn(backup, addr_id, token, nonce) -> Opt:
    return Opt(_mptcp(0x10 | backup, struct.pack("!BII", addr_id, token, nonce)), {
        "subtype": "MP_JOIN", "backup": bool(backup), "address_id": addr_id,
        "token": f"{token:08x}", "nonce": nonce, "hmac": None,
    })


def join_synack(backup, addr_id, hmac64: bytes, nonce) -> Opt:
    return Opt(_mptcp(0x10 | backup, bytes([addr_id]) + hmac64 + struct.pack("!I", nonce)), {
        "subtype": "MP_JOIN", "backup": bool(backup), "address_id": addr_id,
        "token": None, "nonce": nonce, "hmac": hmac64.hex(),
    })


def join_ack(hmac160: bytes) -> Opt:
    return Opt(_mptcp(0x10, b"\x00" + hmac160), {
        "subtype": "MP_JOIN", "backup": False, "address_id": None,
        "token": None, "nonce": None, "hmac": hmac160.hex(),
    })


def dss(ack=None, ack64=False, dsn=None, dsn64=False, ssn=0, dlen=0, csum=None, fin=False) -> Opt:
    flags = (
        (abi.DSS_FLAG_A if ack is not None else 0) | (abi.DSS_FLAG_a if ack64 else 0)
        | (abi.DSS_FLAG_M if dsn is not None else 0) | (abi.DSS_FLAG_m if dsn64 else 0)
        | (abi.DSS_FLAG_F if fin else 0)
    )
    body = bytes([flags])
    if ack is not None:
        body += struct.pack("!Q" if ack64 else "!I", ack)
    if dsn is not None:
        body += struct.pack("!Q" if dsn64 else "!I", dsn) + struct.pack("!IH", ssn, dlen)
        if csum is not None:
            body += struct.pack("!H", csum)
    mapping = dsn is not None
    return Opt(_mptcp(0x20, body), {
        "subtype": "DSS", "data_fin": fin, "data_ack": ack, "dsn": dsn,
        "subflow_seq": ssn if mapping else None, "data_len": dlen if mapping else None,
        "checksum": csum if mapping else None,
    })


def add_addr(addr_id, addr, port=None, hmac: bytes | None = None) -> Opt:
    """ADD_ADDR v1; no HMAC means the echo flag is set."""
    echo = hmac is None
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    body = bytes([addr_id]) + socket.inet_pton(family, addr)
    if port is not None:
        body += struct.pack("!H", port)
    body += hmac or b""
    return Opt(_mptcp(0x30 | echo, body), {
        "subtype": "ADD_ADDR", "echo": echo, "address_id": addr_id, "address": addr,
        "port": port, "hmac": None if echo else hmac.hex(),
    })


def remove_addr(*ids) -> Opt:
    # The first id shares nothing with the subtype byte: ids start at byte 3.
    return Opt(_mptcp(0x40, bytes(ids)), {"subtype": "REMOVE_ADDR", "address_ids": list(ids)})


def mp_prio(backup, addr_id=None) -> Opt:
    body = b"" if addr_id is None else bytes([addr_id])
    return Opt(_mptcp(0x50 | backup, body), {
        "subtype": "MP_PRIO", "backup": bool(backup), "address_id": addr_id,
    })


def mp_fail(dsn) -> Opt:
    return Opt(_mptcp(0x60, b"\x00" + struct.pack("!Q", dsn)), {"subtype": "MP_FAIL", "dsn": dsn})


def mp_fastclose(rkey) -> Opt:
    return Opt(_mptcp(0x70, b"\x00" + struct.pack("!Q", rkey)), {
        "subtype": "MP_FASTCLOSE", "receiver_key": f"{rkey:016x}",
    })


def mp_tcprst(flags, reason) -> Opt:
    """flags: the U V W T bits (T = bit 0, transient)."""
    return Opt(_mptcp(0x80 | flags, bytes([reason])), {
        "subtype": "MP_TCPRST", "transient": bool(flags & 1), "reason": reason,
    })


def unknown(subtype, body: bytes) -> Opt:
    raw = _mptcp((subtype << 4) | 0x3, body)
    return Opt(raw, {"subtype": "UNKNOWN", "raw": raw.hex()})


# Other TCP options, as Linux sends them.
NOP = b"\x01"
MSS = b"\x02\x04\x05\xb4"
SACK_PERM = b"\x04\x02"
WSCALE = b"\x03\x03\x07"
TIMESTAMPS = b"\x08\x0a" + struct.pack("!II", 0x01020304, 0x0A0B0C0D)
SACK_2 = b"\x05\x12" + struct.pack("!IIII", 1000, 2000, 3000, 4000)

K1, K2 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
HMAC8 = bytes(range(0xA0, 0xA8))
HMAC20 = bytes(range(0xB0, 0xC4))


# --- frames -------------------------------------------------------------------------------


def tcp(parts, flags="A", sport=SPORT, dport=DPORT, payload=b""):
    """A TCP header whose options are exactly `parts` (Opt or bytes), EOL-padded to 4 bytes."""
    opts = b"".join(p.raw if isinstance(p, Opt) else bytes(p) for p in parts)
    opts += b"\x00" * (-len(opts) % 4)
    assert len(opts) <= abi.TCP_OPT_SPACE, "options do not fit the TCP header"
    return TCP(sport=sport, dport=dport, flags=flags, dataofs=5 + len(opts) // 4) / Raw(
        opts + payload
    )


# Network layers under TCP, with the addresses the decode must report.
NETS = {
    "ipv4": (lambda: Ether(**MAC) / IP(src=S4, dst=D4), S4, D4),
    "ipv6": (lambda: Ether(**MAC) / IPv6(src=S6, dst=D6), S6, D6),
    "ipv6+hbh+dstopts": (
        lambda: Ether(**MAC) / IPv6(src=S6, dst=D6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
        S6, D6,
    ),
    "vlan+ipv4": (lambda: Ether(**MAC) / Dot1Q(vlan=42) / IP(src=S4, dst=D4), S4, D4),
    "ipv4+ip-options": (
        lambda: Ether(**MAC) / IP(src=S4, dst=D4, options=[IPOption_RR(routers=["203.0.113.9"])]),
        S4, D4,
    ),
}


@dataclass
class Case:
    desc: str
    frame: bytes
    expect: dict
    lens: list[int]  # option length bytes the decoder must report, in wire order


def case(desc, parts, net="ipv4", flags="A", payload=b"") -> Case:
    """Build the frame from `parts`; the expected decode is every Opt before the first Bad."""
    under, src, dst = NETS[net]
    frame = bytes(under() / tcp(parts, flags=flags, payload=payload))
    decoded = []
    for p in parts:
        if isinstance(p, Bad):
            break
        if isinstance(p, Opt):
            decoded.append(p)
    expect = {
        "frame": 1, "src": src, "dst": dst, "sport": SPORT, "dport": DPORT, "flags": flags,
        "mptcp": [o.expect for o in decoded],
        "malformed": any(isinstance(p, Bad) for p in parts),
    }
    return Case(desc, frame, expect, [len(o.raw) for o in decoded])


def unparsed(desc, pkt) -> Case:
    expect = {
        "frame": 1, "src": None, "dst": None, "sport": None, "dport": None, "flags": None,
        "mptcp": [], "malformed": False,
    }
    return Case(desc, bytes(pkt), expect, [])


CASES = [
    # MP_CAPABLE: every length.
    case("MP_CAPABLE 4 (v1 SYN)", [mp_capable()], flags="S"),
    case("MP_CAPABLE 12 (SYN/ACK: sender key)", [mp_capable(skey=K1)], flags="SA"),
    case("MP_CAPABLE 20 (third ACK: both keys)", [mp_capable(skey=K1, rkey=K2)]),
    case("MP_CAPABLE 22 (+ data length)", [mp_capable(skey=K1, rkey=K2, data_len=1400)],
         flags="PA"),
    case("MP_CAPABLE 24 (+ checksum)",
         [mp_capable(flags=0x81, skey=K1, rkey=K2, data_len=100, csum=0xBEEF)], flags="PA"),
    case("MP_CAPABLE v0 12 on SYN", [mp_capable(version=0, flags=0x01, skey=K2)], flags="S"),
    # MP_JOIN: SYN, SYN/ACK, ACK.
    case("MP_JOIN 12 (SYN: token, nonce, backup)", [join_syn(1, 3, 0xDEADBEEF, 0x11223344)],
         flags="S"),
    case("MP_JOIN 12 (SYN: not backup, token with leading zeros)",
         [join_syn(0, 0, 0x0000ABCD, 7)], flags="S"),
    case("MP_JOIN 16 (SYN/ACK: 64-bit HMAC, nonce)", [join_synack(0, 5, HMAC8, 0x55667788)],
         flags="SA"),
    case("MP_JOIN 24 (ACK: 160-bit HMAC)", [join_ack(HMAC20)]),
    # DSS: flag combinations, with and without checksum.
    case("DSS A (4-byte data ack)", [dss(ack=0x10203040)]),
    case("DSS A+a (8-byte data ack)", [dss(ack=0x1020304050607080, ack64=True)]),
    case("DSS M (4-byte DSN mapping)", [dss(dsn=0xA0B0C0D0, ssn=1, dlen=1400)]),
    case("DSS M + checksum", [dss(dsn=0xA0B0C0D0, ssn=1, dlen=1400, csum=0x1234)]),
    case("DSS M+m (8-byte DSN)", [dss(dsn=0x0102030405060708, dsn64=True, ssn=9, dlen=20)]),
    case("DSS M+m + checksum",
         [dss(dsn=0x0102030405060708, dsn64=True, ssn=9, dlen=20, csum=0xFFFF)]),
    case("DSS A+M", [dss(ack=77, dsn=88, ssn=99, dlen=1000)], flags="PA"),
    case("DSS A+a+M+m + checksum",
         [dss(ack=2**63 + 1, ack64=True, dsn=2**64 - 1, dsn64=True, ssn=2**32 - 1,
              dlen=65535, csum=0)], flags="PA"),
    case("DSS F with mapping (DATA_FIN)", [dss(ack=5, dsn=6, ssn=0, dlen=1, fin=True)],
         flags="FA"),
    case("DSS F+A without mapping", [dss(ack=5, fin=True)], flags="FA"),
    # ADD_ADDR: families, port, HMAC, echo.
    case("ADD_ADDR v4 + HMAC", [add_addr(1, "203.0.113.7", hmac=HMAC8)]),
    case("ADD_ADDR v4 + port + HMAC", [add_addr(2, "203.0.113.7", port=8443, hmac=HMAC8)]),
    case("ADD_ADDR v6 + HMAC", [add_addr(3, "2001:db8:1::7", hmac=HMAC8)]),
    case("ADD_ADDR v6 + port + HMAC", [add_addr(4, "2001:db8:1::7", port=1, hmac=HMAC8)]),
    case("ADD_ADDR v4 echo", [add_addr(5, "203.0.113.8")]),
    case("ADD_ADDR v4 echo + port", [add_addr(6, "203.0.113.8", port=65535)]),
    case("ADD_ADDR v6 echo", [add_addr(7, "2001:db8:1::8")]),
    case("ADD_ADDR v6 echo + port", [add_addr(8, "2001:db8:1::8", port=80)]),
    # REMOVE_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE, MP_TCPRST, unknown.
    case("REMOVE_ADDR one id", [remove_addr(9)]),
    case("REMOVE_ADDR several ids", [remove_addr(1, 2, 3, 250, 255)]),
    case("MP_PRIO 3 (backup, this subflow)", [mp_prio(1)]),
    case("MP_PRIO 4 (not backup, address id)", [mp_prio(0, addr_id=7)]),
    case("MP_FAIL (64-bit DSN)", [mp_fail(0x1122334455667788)]),
    case("MP_FASTCLOSE (receiver key)", [mp_fastclose(K2)]),
    case("MP_TCPRST transient", [mp_tcprst(0x1, 3)], flags="RA"),
    case("MP_TCPRST not transient (U V W set)", [mp_tcprst(0xE, 6)], flags="RA"),
    case("unknown subtype 0xf", [unknown(0xF, b"\x01\x02\x03")]),
    # Network layers.
    case("IPv6 DSS", [dss(ack=1, dsn=2, ssn=3, dlen=4)], net="ipv6"),
    case("IPv6 hop-by-hop + destination options, MP_JOIN SYN",
         [join_syn(0, 1, 0xCAFEF00D, 42)], net="ipv6+hbh+dstopts", flags="S"),
    case("802.1Q VLAN, ADD_ADDR", [add_addr(1, "203.0.113.7", hmac=HMAC8)], net="vlan+ipv4"),
    case("IPv4 with IP options, DSS", [dss(ack=1, dsn=2, ssn=3, dlen=4)], net="ipv4+ip-options"),
    # Other TCP options first.
    case("Linux SYN options then MP_CAPABLE",
         [MSS, SACK_PERM, TIMESTAMPS, NOP, WSCALE, mp_capable()], flags="S"),
    case("NOP NOP timestamps then DSS",
         [NOP, NOP, TIMESTAMPS, dss(ack=1, dsn=2, ssn=3, dlen=4, csum=5)]),
    case("NOP NOP SACK blocks then DSS", [NOP, NOP, SACK_2, dss(ack=0xFFFFFFFF)]),
    # The layouts the walk takes a shortcut for (one MPTCP option after NOP NOP timestamps, after
    # Linux's SYN options, or alone, then padding), and their near misses, which must decode
    # exactly as the full walk does.
    case("Linux SYN options then MP_JOIN SYN",
         [MSS, SACK_PERM, TIMESTAMPS, NOP, WSCALE, join_syn(0, 2, 0x8A3F11D2, 0x5E77C6A9)],
         flags="S"),
    case("Linux SYN options in another order then MP_CAPABLE",
         [MSS, SACK_PERM, TIMESTAMPS, WSCALE, NOP, mp_capable()], flags="S"),
    case("NOP NOP timestamps, DSS, NOP NOP padding",
         [NOP, NOP, TIMESTAMPS, dss(ack=1, dsn=2, ssn=3, dlen=4), NOP, NOP]),
    case("NOP NOP timestamps, DSS, then MP_PRIO",
         [NOP, NOP, TIMESTAMPS, dss(ack=1), mp_prio(1)]),
    case("NOP NOP timestamps, DSS, then SACK-permitted", [NOP, NOP, TIMESTAMPS, dss(ack=1),
                                                          SACK_PERM]),
    case("DSS, EOL, then bytes after the end of the list",
         [dss(ack=1), b"\x00\x08\x0a\x00"]),
    case("malformed: zero-length option after NOP NOP timestamps and DSS",
         [NOP, NOP, TIMESTAMPS, dss(ack=1), Bad(b"\x08\x00")]),
    # Several MPTCP options in one segment.
    case("DSS + ADD_ADDR echo", [dss(ack=1, dsn=2, ssn=3, dlen=4, csum=5), add_addr(1, S4)]),
    case("DSS + MP_PRIO + REMOVE_ADDR", [dss(ack=1), mp_prio(1), remove_addr(4)]),
    case("timestamps between two MPTCP options",
         [mp_prio(0, 2), TIMESTAMPS, mp_tcprst(0, 0)]),
    # Malformed: the options before the bad one stay; nothing after it is decoded.
    case("malformed: MPTCP option of length 2", [dss(ack=1), Bad(bytes([MPTCP, 2]))]),
    case("malformed: option length runs past the header",
         [dss(ack=1), Bad(bytes([MPTCP, 30, 0x20, 0x01]))]),
    case("malformed: DSS shorter than its flags (A+M in 8 bytes)",
         [mp_prio(1), Bad(bytes([MPTCP, 8, 0x20, 0x05, 0, 0, 0, 1])), remove_addr(1)]),
    case("malformed: zero-length option after MPTCP", [remove_addr(3), Bad(b"\x08\x00")]),
    case("malformed: zero-length option first", [Bad(b"\x08\x00"), NOP, dss(ack=1)]),
    case("malformed: MP_CAPABLE of length 8",
         [Bad(bytes([MPTCP, 8, 0x01, 0x81, 1, 2, 3, 4]))], flags="SA"),
    case("malformed: MP_JOIN of length 20 after a good DSS",
         [dss(ack=2), Bad(bytes([MPTCP, 20, 0x10]) + bytes(17))]),
    case("malformed: ADD_ADDR of length 9", [Bad(bytes([MPTCP, 9, 0x31, 1]) + bytes(5))]),
    # Not MPTCP.
    case("plain TCP, no options", [], flags="S"),
    case("TCP with timestamps only", [NOP, NOP, TIMESTAMPS]),
    unparsed("UDP is not parsed", Ether(**MAC) / IP(src=S4, dst=D4) / UDP() / Raw(b"x" * 20)),
    unparsed("ARP is not parsed", Ether(**MAC) / ARP()),
]


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder(root_bpf):
    from controller.datapath import Decoder

    d = Decoder()
    yield d
    d.close()


def counter(decoder, idx: int) -> int:
    m = decoder.prog.map("counters", ctypes.c_uint32, ctypes.c_uint64, percpu=True)
    vals = m.lookup(ctypes.c_uint32(idx))
    assert vals is not None
    return sum(int(getattr(v, "value", v)) for v in vals)


def counters(decoder) -> dict[int, int]:
    return {i: counter(decoder, i) for i in range(abi.Counter.CNT_MAX)}


def deltas(decoder, frame: bytes) -> dict[int, int]:
    before = counters(decoder)
    verdict, _ = decoder.decode(frame)
    assert verdict == XDP_PASS
    after = counters(decoder)
    return {i: after[i] - before[i] for i in after if after[i] != before[i]}


def flow_key(family, laddr, raddr, lport, rport) -> abi.FlowKey:
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    k = abi.FlowKey(family=family, lport=socket.htons(lport), rport=socket.htons(rport))
    k.laddr[:] = list(socket.inet_pton(fam, laddr).ljust(16, b"\x00"))
    k.raddr[:] = list(socket.inet_pton(fam, raddr).ljust(16, b"\x00"))
    return k


# --- tests --------------------------------------------------------------------------------


def test_case_descriptions_are_unique():
    assert len({c.desc for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.desc for c in CASES])
def test_xdp_decodes_what_was_built_and_passes_it(decoder, c):
    verdict, res = decoder.decode(c.frame)
    assert verdict == XDP_PASS
    assert packet_record(1, res) == c.expect
    assert [res.opts[i].len for i in range(res.nopts)] == c.lens


C = abi.Counter
SUB = abi.Subtype


@pytest.mark.parametrize(
    "desc, parts, expected",
    [
        ("one DSS", [dss(ack=1, dsn=2, ssn=3, dlen=4)],
         {C.CNT_PACKETS: 1, C.CNT_TCP: 1, C.CNT_MPTCP: 1, C.CNT_OPT_BASE + SUB.DSS: 1}),
        ("DSS + ADD_ADDR", [dss(ack=1), add_addr(1, S4)],
         {C.CNT_PACKETS: 1, C.CNT_TCP: 1, C.CNT_MPTCP: 1, C.CNT_OPT_BASE + SUB.DSS: 1,
          C.CNT_OPT_BASE + SUB.ADD_ADDR: 1}),
        ("two REMOVE_ADDR", [remove_addr(1), remove_addr(2)],
         {C.CNT_PACKETS: 1, C.CNT_TCP: 1, C.CNT_MPTCP: 1, C.CNT_OPT_BASE + SUB.REMOVE_ADDR: 2}),
        ("unknown subtype", [unknown(0xC, b"")],
         {C.CNT_PACKETS: 1, C.CNT_TCP: 1, C.CNT_MPTCP: 1, C.CNT_UNKNOWN: 1,
          C.CNT_OPT_BASE + SUB.UNKNOWN: 1}),
        ("malformed after a good option", [dss(ack=1), Bad(bytes([MPTCP, 2]))],
         {C.CNT_PACKETS: 1, C.CNT_TCP: 1, C.CNT_MALFORMED: 1}),
        ("no MPTCP option", [NOP, NOP, TIMESTAMPS], {C.CNT_PACKETS: 1, C.CNT_TCP: 1}),
    ],
)
def test_counters_move_by_what_the_packet_carries(decoder, desc, parts, expected):
    frame = bytes(NETS["ipv4"][0]() / tcp(parts))
    assert deltas(decoder, frame) == {int(k): v for k, v in expected.items()}


def test_non_ip_packet_counts_as_not_parsed(decoder):
    got = deltas(decoder, bytes(Ether(**MAC) / ARP()))
    assert got == {C.CNT_PACKETS: 1, C.CNT_NOT_PARSED: 1}


def test_bad_ip_header_counts_as_malformed(decoder):
    frame = bytes(Ether(**MAC) / IP(src=S4, dst=D4) / TCP())[:14 + 20 + 10]  # TCP cut short
    got = deltas(decoder, frame)
    assert got == {C.CNT_PACKETS: 1, C.CNT_MALFORMED: 1}
    _, res = decoder.decode(frame)
    assert packet_record(1, res)["malformed"] is True


TC_CASES = [c for c in CASES if c.desc in {
    "MP_CAPABLE 20 (third ACK: both keys)", "DSS A+M", "ADD_ADDR v6 + port + HMAC",
    "802.1Q VLAN, ADD_ADDR", "malformed: option length runs past the header",
    "ARP is not parsed", "plain TCP, no options",
}]


def test_tc_cases_are_all_found():
    assert len(TC_CASES) == 7


@pytest.mark.parametrize("c", TC_CASES, ids=[c.desc for c in TC_CASES])
def test_tc_egress_never_changes_a_verdict(decoder, c):
    verdict, _ = decoder.prog.run_tc(c.frame)
    assert verdict == TC_ACT_OK


def subflows(decoder):
    return decoder.prog.map("subflows", abi.FlowKey, abi.SubflowStats)


def test_tc_egress_dss_updates_the_subflow_keyed_by_source_as_local(decoder):
    sport, dport, dsn = 51001, 8080, 0x01020304
    frame = bytes(NETS["ipv4"][0]() / tcp([dss(ack=1, dsn=dsn, ssn=1, dlen=100)], sport=sport,
                                        dport=dport, payload=b"x" * 100))
    assert decoder.prog.run_tc(frame)[0] == TC_ACT_OK
    s = subflows(decoder).lookup(flow_key(4, S4, D4, sport, dport))
    assert s is not None
    egress, ingress = s.dir[abi.Direction.DIR_EGRESS], s.dir[abi.Direction.DIR_INGRESS]
    assert (egress.packets, egress.bytes, egress.dss_mappings, egress.dsn_highest) == (
        1, 100, 1, dsn)
    assert ingress.packets == 0
    assert s.opts[SUB.DSS] == 1
    # The reverse key (as ingress would see it) was not created by egress.
    assert subflows(decoder).lookup(flow_key(4, D4, S4, dport, sport)) is None


def test_tc_egress_third_ack_learns_local_and_remote_keys(decoder):
    sport, dport = 51002, 8080
    frame = bytes(NETS["ipv6"][0]() / tcp([mp_capable(skey=K1, rkey=K2)], sport=sport,
                                        dport=dport))
    assert decoder.prog.run_tc(frame)[0] == TC_ACT_OK
    s = subflows(decoder).lookup(flow_key(6, S6, D6, sport, dport))
    assert s is not None
    assert (s.local_key, s.remote_key) == (K1, K2)
    have = abi.SubflowFlags.SF_HAVE_LOCAL_KEY | abi.SubflowFlags.SF_HAVE_REMOTE_KEY
    assert s.flags & have == have


def test_xdp_ingress_dss_updates_the_subflow_keyed_by_destination_as_local(decoder):
    sport, dport = 51003, 8080
    frame = bytes(NETS["ipv4"][0]() / tcp([dss(dsn=10, ssn=1, dlen=5)], sport=sport,
                                        dport=dport, payload=b"hello"))
    assert decoder.decode(frame)[0] == XDP_PASS
    s = subflows(decoder).lookup(flow_key(4, D4, S4, dport, sport))
    assert s is not None
    ingress = s.dir[abi.Direction.DIR_INGRESS]
    assert (ingress.packets, ingress.bytes, ingress.dss_mappings) == (1, 5, 1)
