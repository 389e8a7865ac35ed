"""DSS checksums checked at XDP (RFC 8684 §3.3.1): the expected checksum is computed here the
way Linux does (ones'-complement sum of the mapped data, then of the pseudo-header: 64-bit DSN,
relative subflow sequence number, data-level length, checksum field), and the tail-called
mptcp_dss_csum program must agree: matches counted, mismatches counted and reported."""

import ctypes
import secrets
import socket
import struct
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_decode_table import MAC, NOP, TIMESTAMPS, Opt, dss, flow_key, mp_capable

from controller import abi

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
CLIENT6, SERVER6 = "2001:db8::10", "2001:db8:ffff::20"
CPORT, SPORT = 41000, 5201
ISN = 0xFFFFFF00  # wraps inside the first mapping: relative sequence numbers must not care
DSN = 0x0123_4567_89AB_0000
C = abi.Counter
XDP_PASS = 2


# --- the checksum, as Linux computes it (net/mptcp: __mptcp_make_csum) -----------------------


def ones_sum(data: bytes) -> int:
    """16-bit ones'-complement sum (not complemented); an odd length is padded with zero."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def dss_checksum(dsn: int, ssn: int, data: bytes) -> int:
    """The DSS checksum of a mapping covering `data`: the data's sum, then the pseudo-header's
    with the checksum field zero, folded and complemented."""
    s = ones_sum(data) + ones_sum(struct.pack("!QIHH", dsn, ssn, len(data), 0))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_the_reference_checksum_verifies_to_zero():
    data = bytes(range(251)) * 3
    c = dss_checksum(DSN, 1, data)
    total = ones_sum(data) + ones_sum(struct.pack("!QIHH", DSN, 1, len(data), c))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


# --- frames --------------------------------------------------------------------------------


def segment(parts, seq, payload=b"", flags="A", v6=False):
    """A client-to-server segment (ingress at the server) with exactly these TCP options."""
    opts = b"".join(p.raw if isinstance(p, Opt) else bytes(p) for p in parts)
    opts += b"\x00" * (-len(opts) % 4)
    ip = IPv6(src=CLIENT6, dst=SERVER6) if v6 else IP(src=CLIENT, dst=SERVER)
    th = TCP(sport=CPORT, dport=SPORT, seq=seq & 0xFFFFFFFF, flags=flags,
             dataofs=5 + len(opts) // 4)
    return bytes(Ether(**MAC) / ip / th / Raw(opts + payload))


def mapping(ssn, data_len, csum, dsn=DSN, ack=7):
    return dss(ack=ack, ack64=True, dsn=dsn, dsn64=True, ssn=ssn, dlen=data_len, csum=csum)


@pytest.fixture
def prog(root_bpf):
    from controller.datapath import Program

    p = Program(cflags=["-DSUBFLOW_ENTRIES=512", "-DCONN_ENTRIES=64"])
    yield p
    p.close()


def run(prog, frame):
    verdict, _ = prog.run_xdp(frame)
    assert verdict == XDP_PASS


def handshake(prog, checksum=True, v6=False):
    """The client's SYN: its ISN, and MP_CAPABLE with (or without) the checksum flag."""
    run(prog, segment([mp_capable(flags=0x81 if checksum else 0x01)], ISN, flags="S", v6=v6))


def state(prog, v6=False) -> abi.DssCsum:
    k = (flow_key(6, SERVER6, CLIENT6, SPORT, CPORT) if v6
         else flow_key(4, SERVER, CLIENT, SPORT, CPORT))
    s = prog.map("subflows", abi.FlowKey, abi.SubflowStats).lookup(k)
    assert s is not None
    return s.csum


def counter(prog, idx) -> int:
    vals = prog.map("counters", ctypes.c_uint32, ctypes.c_uint64, percpu=True).lookup(
        ctypes.c_uint32(idx))
    return sum(int(getattr(v, "value", v)) for v in vals)


def verdicts(prog, v6=False):
    st = state(prog, v6)
    return st.verified, st.bad, st.unverifiable


PAYLOAD = bytes((i * 7 + 3) & 0xFF for i in range(1448))


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_correct_single_segment_mapping_is_verified(prog, v6):
    handshake(prog, v6=v6)
    csum = dss_checksum(DSN, 1, PAYLOAD)
    run(prog, segment([NOP, NOP, TIMESTAMPS, mapping(1, len(PAYLOAD), csum)], ISN + 1, PAYLOAD,
                      v6=v6))
    assert verdicts(prog, v6) == (1, 0, 0)
    assert counter(prog, C.CNT_DSS_CSUM_OK) == 1
    assert counter(prog, C.CNT_DSS_CSUM_BAD) == 0


def test_one_flipped_payload_byte_is_a_mismatch_and_an_event(prog):
    seen = []

    def on_event(_ctx, data, _size):
        ev = ctypes.cast(data, ctypes.POINTER(abi.Event)).contents
        seen.append((ev.type, ev.opt.key_b, ev.opt.word, ev.opt.data_len, ev.opt.checksum,
                     ev.opt.nonce, ev.flow.rport))

    prog.bpf[b"events"].open_ring_buffer(on_event)
    handshake(prog)
    csum = dss_checksum(DSN, 1, PAYLOAD)
    bad = bytearray(PAYLOAD)
    bad[700] ^= 0x10  # what a middlebox rewriting payload in place would do
    run(prog, segment([mapping(1, len(PAYLOAD), csum)], ISN + 1, bytes(bad)))
    assert verdicts(prog) == (0, 1, 0)
    assert counter(prog, C.CNT_DSS_CSUM_BAD) == 1
    prog.bpf.ring_buffer_consume()
    bad_events = [e for e in seen if e[0] == abi.EventType.EV_DSS_CSUM_BAD]
    # The event names the subflow and the mapping, and says what the checksum of the data
    # that arrived would have been.
    assert bad_events == [(abi.EventType.EV_DSS_CSUM_BAD, DSN, 1, len(PAYLOAD), csum,
                           dss_checksum(DSN, 1, bytes(bad)), socket.htons(CPORT))]


@pytest.mark.parametrize("later", ["data-ack only", "same mapping again"])
def test_a_mapping_over_three_segments_is_verified_at_its_last_byte(prog, later):
    handshake(prog)
    # Odd sizes: the second and third segments start at odd offsets of the mapping.
    data = bytes((i * 13 + 5) & 0xFF for i in range(1001 + 999 + 1200))
    pieces = [data[:1001], data[1001:2000], data[2000:]]
    ssn = 1 + 500  # the mapping starts 500 bytes into the subflow
    csum = dss_checksum(DSN, ssn, data)
    seq = ISN + ssn
    first = mapping(ssn, len(data), csum)
    for i, piece in enumerate(pieces):
        if i == 0 or later == "same mapping again":
            opt = first
        else:
            opt = dss(ack=8, ack64=True)
        run(prog, segment([NOP, NOP, TIMESTAMPS, opt], seq, piece))
        seq += len(piece)
        want = (1, 0, 0) if i == 2 else (0, 0, 0)
        assert verdicts(prog) == want, f"after segment {i + 1}"
    # A retransmission of the middle segment after the mapping completed changes nothing.
    run(prog, segment([NOP, NOP, TIMESTAMPS, first], ISN + ssn + 1001, pieces[1]))
    assert verdicts(prog) == (1, 0, 0)


def test_a_subflow_without_the_checksum_flag_is_not_checked(prog):
    handshake(prog, checksum=False)
    csum = dss_checksum(DSN, 1, PAYLOAD)
    run(prog, segment([mapping(1, len(PAYLOAD), csum)], ISN + 1, PAYLOAD))
    assert verdicts(prog) == (0, 0, 0)
    for c in (C.CNT_DSS_CSUM_OK, C.CNT_DSS_CSUM_BAD, C.CNT_DSS_CSUM_UNVERIFIABLE):
        assert counter(prog, c) == 0


def test_a_mapping_is_unverifiable_without_the_peers_isn(prog):
    # MP_CAPABLE with the checksum flag on a non-SYN: checksums on, ISN never seen.
    run(prog, segment([mp_capable(flags=0x81)], ISN + 1))
    csum = dss_checksum(DSN, 1, PAYLOAD)
    run(prog, segment([mapping(1, len(PAYLOAD), csum)], ISN + 1, PAYLOAD))
    assert verdicts(prog) == (0, 0, 1)
    assert counter(prog, C.CNT_DSS_CSUM_UNVERIFIABLE) == 1


def test_a_lost_segment_makes_the_mapping_unverifiable_once(prog):
    handshake(prog)
    data = bytes(range(256)) * 8
    csum = dss_checksum(DSN, 1, data)
    m = mapping(1, len(data), csum)
    run(prog, segment([m], ISN + 1, data[:1000]))
    run(prog, segment([m], ISN + 1 + 1500, data[1500:]))  # 1000..1500 went by unseen
    assert verdicts(prog) == (0, 0, 1)
    # The next mapping is checked again.
    nxt = data[:300]
    run(prog, segment([mapping(1 + len(data), len(nxt), dss_checksum(DSN + len(data),
                                                                       1 + len(data), nxt),
                               dsn=DSN + len(data))], ISN + 1 + len(data), nxt))
    assert verdicts(prog) == (1, 0, 1)


# --- a real kernel: Linux's checksums, verified at the lab client's XDP ----------------------

# Server side: accept one MPTCP connection, send N bytes of a pattern, close.
LAB_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    block, left = bytes(range(256)) * 4096, int(sys.argv[3])
    while left:
        left -= c.send(block[:min(left, len(block))])
    c.close()
""")

# Client side: receive until the server closes, print the byte count.
LAB_CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.connect((sys.argv[1], int(sys.argv[2])))
    total = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        total += len(b)
    print(total)
""")
LAB_BYTES = 4_000_000
LAB_PORT = 5202


@pytest.fixture
def lab():
    from gates import missing_root_netns, skip_or_fail

    from controller import lab as labmod

    skip_or_fail(missing_root_netns())
    suffix = "c" + secrets.token_hex(4)
    try:
        yield labmod.lab_up(suffix)
    finally:
        labmod.lab_down(suffix)


def test_linux_checksums_verify_at_the_client_during_a_download(lab):
    from controller import datapath
    from controller import lab as labmod
    from controller.netns import entered

    for ns in (lab.client, lab.server):
        labmod.ns_exec(ns, ["sysctl", "-qw", "net.mptcp.checksum_enabled=1"], check=True)
    datapath.attach([p.client_if for p in lab.paths.values()], lab.client)
    try:
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.server, sys.executable, "-c", LAB_SERVER,
             lab.server_addr, str(LAB_PORT), str(LAB_BYTES)], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            client = subprocess.run(
                ["ip", "netns", "exec", lab.client, sys.executable, "-c", LAB_CLIENT,
                 lab.server_addr, str(LAB_PORT)], capture_output=True, text=True, timeout=60,
                check=True)
            assert int(client.stdout) == LAB_BYTES
        finally:
            server.kill()
            server.wait()
        with entered(lab.client):
            dp = datapath.PinnedDatapath(lab.client)
            try:
                stats = [v for _, v in dp.subflows.items()]
                counters = dp.counter_values()
            finally:
                dp.close()
    finally:
        datapath.detach(lab.client)
    checked = [s.csum for s in stats if s.flags & abi.SubflowFlags.SF_CHECKSUM]
    assert checked, "no subflow learned that checksums are in use"
    verified = sum(c.verified for c in checked)
    assert verified > 0 and sum(c.bad for c in checked) == 0
    assert counters["dss_csum_ok"] == verified and counters["dss_csum_bad"] == 0
