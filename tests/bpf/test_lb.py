"""The load balancer's XDP program (bpf/mptcp_lb.c) through BPF_PROG_TEST_RUN, Katran style:
build the packet, set up maps (through the controller's LbCore, with a map-configured next hop
per backend instead of bpf_fib_lookup), check the verdict, the output frame and the maps."""

import ctypes
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_decode_table import (
    K1,
    K2,
    MSS,
    NOP,
    SACK_PERM,
    TIMESTAMPS,
    WSCALE,
    add_addr,
    dss,
    join_syn,
    mp_capable,
    tcp,
)

from controller import crypto, maglev
from controller.lb_abi import Counter, EventType, Flags

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
VIP, VPORT = "198.51.100.80", 80
CLIENT, CLIENT2 = "192.0.2.10", "203.0.113.10"
LB_SRC = "10.20.0.2"
BACKENDS = ["10.20.0.11", "10.20.0.12", "10.20.0.13"]
LB_MAC = bytes.fromhex("02aa00000002")
BE_MAC = {b: bytes.fromhex(f"02bb000000{i + 1:02x}") for i, b in enumerate(BACKENDS)}
IN_MAC = {"src": "02:00:00:00:00:01", "dst": "02:aa:00:00:00:02"}
SERVER_KEY = K2
CLIENT_KEY = K1


@pytest.fixture
def lb(root_bpf):
    """A fresh load balancer program and controller core (empty maps) for each test."""
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram()
    core = LbCore(prog, LbOptions(VIP, VPORT, list(BACKENDS), src=LB_SRC, smac=LB_MAC),
                  static_hops={b: (m, 0) for b, m in BE_MAC.items()})
    yield core
    prog.close()


def frame(parts, flags="A", src=CLIENT, sport=40000, dst=VIP, dport=VPORT, payload=b""):
    return bytes(Ether(**IN_MAC) / IP(src=src, dst=dst, ttl=61, tos=0x10)
                 / tcp(parts, flags=flags, sport=sport, dport=dport, payload=payload))


def run(core, data: bytes):
    verdict, _, out = core.prog.run(data)
    return verdict, out


def outer(out: bytes) -> tuple[IP, bytes]:
    """The outer IPv4 header of an encapsulated frame, and the inner packet's bytes."""
    eth = Ether(out)
    ip = eth[IP]
    return ip, out[14 + 20:]


def expected_backend(core, src=CLIENT, sport=40000) -> str:
    table = maglev.build_table({b.id: b.addr for b in core.backends if not b.draining})
    return core.backend_addr(maglev.pick(table, src, sport, VPORT))


def counters(core) -> dict:
    return core.prog.counter_values()


def events(core) -> list:
    seen = []
    core.prog.on_events(lambda ev: (seen.append(ev), core.handle_event(ev)))
    core.prog.consume()
    return seen


def test_mp_capable_syn_is_encapsulated_to_the_maglev_backend_with_the_inner_packet_intact(lb):
    data = frame([mp_capable(flags=0x81)], flags="S")
    verdict, out = run(lb, data)
    assert verdict == XDP_TX
    ip, inner = outer(out)
    want = expected_backend(lb)
    assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.tos) == (LB_SRC, want, 4, 64, 0x10)
    assert ip.len == len(data) - 14 + 20
    # The checksum is right: scapy recomputes it.
    again = IP(bytes(ip)[:20])
    del again.chksum
    assert IP(bytes(again)).chksum == ip.chksum
    assert inner == data[14:]
    eth = Ether(out)
    assert bytes.fromhex(eth.dst.replace(":", "")) == BE_MAC[want]
    assert bytes.fromhex(eth.src.replace(":", "")) == LB_MAC
    assert counters(lb)["new_flow"] == 1


def test_the_program_and_the_controller_agree_on_the_flow_hash(lb):
    got = set()
    for sport in range(40000, 40040):
        verdict, out = run(lb, frame([mp_capable()], flags="S", sport=sport))
        assert verdict == XDP_TX
        assert outer(out)[0].dst == expected_backend(lb, sport=sport)
        got.add(outer(out)[0].dst)
    assert got == set(BACKENDS)


def test_plain_tcp_syn_is_balanced_too(lb):
    verdict, out = run(lb, frame([], flags="S", sport=41000))
    assert verdict == XDP_TX
    assert outer(out)[0].dst == expected_backend(lb, sport=41000)


def test_later_packets_follow_the_connection_table_even_after_the_table_changes(lb):
    run(lb, frame([mp_capable()], flags="S", sport=42000))
    first = expected_backend(lb, sport=42000)
    lb.set_backends([b for b in BACKENDS if b != first])  # drain it
    data = frame([dss(ack=1, dsn=5, ssn=1, dlen=4)], payload=b"abcd", sport=42000)
    verdict, out = run(lb, data)
    assert verdict == XDP_TX
    assert outer(out)[0].dst == first
    assert counters(lb)["conn_hit"] == 1
    # A new flow that hashed to it now goes elsewhere.
    for sport in range(43000, 43100):
        verdict, out = run(lb, frame([mp_capable()], flags="S", sport=sport))
        assert outer(out)[0].dst != first


def test_third_ack_reports_both_keys_once_and_the_controller_learns_the_token(lb):
    run(lb, frame([mp_capable()], flags="S"))
    be = expected_backend(lb)
    third = frame([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY)], flags="A")
    run(lb, third)
    run(lb, frame([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY, data_len=4)], flags="PA",
                  payload=b"data"))
    evs = events(lb)
    keys = [e for e in evs if e.type == EventType.LB_EV_KEYS]
    assert len(keys) == 1
    assert (keys[0].opt.key_a, keys[0].opt.key_b) == (CLIENT_KEY, SERVER_KEY)
    assert lb.backend_addr(keys[0].backend) == be
    assert lb.backend_addr(lb.tokens_get(crypto.token(SERVER_KEY))) == be


def learn(core, sport=40000, ckey=CLIENT_KEY, skey=SERVER_KEY):
    run(core, frame([mp_capable()], flags="S", sport=sport))
    run(core, frame([mp_capable(skey=ckey, rkey=skey)], flags="A", sport=sport))
    events(core)
    return expected_backend(core, sport=sport)


def test_mp_join_syn_with_a_known_token_goes_to_that_backend_whatever_the_hash_says(lb):
    be = learn(lb)
    token = crypto.token(SERVER_KEY)
    for sport in range(50000, 50030):
        verdict, out = run(lb, frame([join_syn(0, 2, token, 0x11223344)], flags="S",
                                     src=CLIENT2, sport=sport))
        assert verdict == XDP_TX
        assert outer(out)[0].dst == be
        # And the rest of that subflow too.
        verdict, out = run(lb, frame([dss(ack=9)], src=CLIENT2, sport=sport))
        assert outer(out)[0].dst == be
    assert counters(lb)["join_hit"] == 30


def test_mp_join_syn_with_an_unknown_token_is_dropped_and_counted(lb):
    verdict, _ = run(lb, frame([join_syn(0, 2, 0xDEADBEEF, 1)], flags="S", src=CLIENT2))
    assert verdict == XDP_DROP
    assert counters(lb)["join_unknown"] == 1
    assert lb.prog.conn_count() == 0


def test_unknown_join_hash_option_hashes_instead(root_bpf):
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram()
    try:
        core = LbCore(prog, LbOptions(VIP, VPORT, list(BACKENDS), src=LB_SRC, smac=LB_MAC,
                                      unknown_join="hash"),
                      static_hops={b: (m, 0) for b, m in BE_MAC.items()})
        verdict, out = run(core, frame([join_syn(0, 2, 0xDEADBEEF, 1)], flags="S", src=CLIENT2,
                                       sport=50001))
        assert verdict == XDP_TX
        assert outer(out)[0].dst == expected_backend(core, src=CLIENT2, sport=50001)
        assert counters(core)["join_hashed"] == 1
    finally:
        prog.close()


def test_join_flood_with_random_tokens_costs_a_counter_each_and_no_map_growth(lb):
    be = learn(lb)
    token = crypto.token(SERVER_KEY)
    tokens_before = len(lb.prog.tokens.keys())
    conns_before = lb.prog.conn_count()
    rnd = random.Random(1)
    n = 100_000
    verdicts = set()
    # One template; the source port (bytes 34-35) and the token (MP_JOIN at TCP option
    # offset 0: bytes 54 + 4) are patched per packet. Scapy per packet would take minutes.
    template = bytearray(frame([join_syn(0, 2, 0, 1)], flags="S", src=CLIENT2))
    assert template[54] == 30 and template[55] == 12
    for _ in range(n):
        tok = rnd.getrandbits(32)
        while tok == token:
            tok = rnd.getrandbits(32)
        struct.pack_into("!H", template, 34, rnd.randrange(1024, 65536))
        struct.pack_into("!I", template, 58, tok)
        verdict, _, _ = lb.prog.run(bytes(template), out_size=0)
        verdicts.add(verdict)
    assert verdicts == {XDP_DROP}
    assert counters(lb)["join_unknown"] == n
    assert len(lb.prog.tokens.keys()) == tokens_before
    assert lb.prog.conn_count() == conns_before
    # A legitimate join still steers right.
    verdict, out = run(lb, frame([join_syn(0, 2, token, 7)], flags="S", src=CLIENT2, sport=555))
    assert verdict == XDP_TX
    assert outer(out)[0].dst == be


def test_non_vip_traffic_passes_untouched(lb):
    cases = [
        frame([mp_capable()], flags="S", dst="198.51.100.81"),
        frame([mp_capable()], flags="S", dport=81),
        bytes(Ether(**IN_MAC) / IP(src=CLIENT, dst=VIP) / UDP(sport=1, dport=VPORT) / Raw(b"x")),
        bytes(Ether(**IN_MAC) / Raw(b"\x00" * 50)),
    ]
    for data in cases:
        verdict, out = run(lb, data)
        assert verdict == XDP_PASS
        assert out == data
    assert counters(lb)["forwarded"] == 0


def test_token_collision_across_backends_is_detected(lb):
    # Two connections whose server keys are the same (so the same token) on two backends.
    sports = {}
    for sport in range(44000, 44100):
        sports.setdefault(expected_backend(lb, sport=sport), sport)
        if len(sports) == 2:
            break
    for sport in sports.values():
        learn(lb, sport=sport)
    st = lb.status()
    assert st["controller"]["token_collisions"] == 1
    assert st["token_collisions"][0]["token"] == f"{crypto.token(SERVER_KEY):08x}"


def _add_addr_frame(hmac: bytes, sport=40000):
    return frame([NOP, NOP, TIMESTAMPS, add_addr(5, "203.0.113.10", hmac=hmac)], sport=sport)


def test_add_addr_hmac_is_checked_and_reported(lb):
    learn(lb)
    good = crypto.add_addr_hmac(CLIENT_KEY, SERVER_KEY, 5, "203.0.113.10")
    run(lb, _add_addr_frame(good))
    run(lb, _add_addr_frame(b"\x00" * 8))
    events(lb)
    c = lb.status()["controller"]
    assert (c["add_addr_seen"], c["add_addr_hmac_ok"], c["add_addr_hmac_failed"]) == (2, 1, 1)
    assert counters(lb)["add_addr"] == 2
    # Without --enforce-hmac nothing is dropped.
    verdict, _ = run(lb, frame([dss(ack=1)]))
    assert verdict == XDP_TX


def test_enforce_hmac_drops_later_packets_of_a_subflow_whose_check_failed(root_bpf):
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram()
    try:
        core = LbCore(prog, LbOptions(VIP, VPORT, list(BACKENDS), src=LB_SRC, smac=LB_MAC,
                                      enforce_hmac=True),
                      static_hops={b: (m, 0) for b, m in BE_MAC.items()})
        learn(core)
        run(core, _add_addr_frame(b"\x01" * 8))
        events(core)
        verdict, _ = run(core, frame([dss(ack=1)]))
        assert verdict == XDP_DROP
        assert counters(core)["blocked"] == 1
        # Another connection is unaffected.
        verdict, _ = run(core, frame([dss(ack=1)], sport=40001))
        assert verdict == XDP_TX
    finally:
        prog.close()


def test_debug_no_token_steering_hashes_joins(root_bpf):
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram()
    try:
        core = LbCore(prog, LbOptions(VIP, VPORT, list(BACKENDS), src=LB_SRC, smac=LB_MAC,
                                      no_token_steering=True),
                      static_hops={b: (m, 0) for b, m in BE_MAC.items()})
        assert core.opts.flags & Flags.LB_F_NO_TOKEN_STEERING
        learn(core)
        token = crypto.token(SERVER_KEY)
        for sport in (50001, 50002, 50003):
            verdict, out = run(core, frame([join_syn(0, 2, token, 1)], flags="S", src=CLIENT2,
                                           sport=sport))
            assert outer(out)[0].dst == expected_backend(core, src=CLIENT2, sport=sport)
        assert counters(core)["join_hit"] == 0
    finally:
        prog.close()


def test_no_backend_drops(root_bpf):
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram()
    try:
        core = LbCore(prog, LbOptions(VIP, VPORT, [BACKENDS[0]], src=LB_SRC, smac=LB_MAC),
                      static_hops={b: (m, 0) for b, m in BE_MAC.items()})
        # Empty the table by hand (the controller never offers no backend).
        prog.set_ring([0xFFFFFFFF] * len(prog._ring_cache))
        verdict, _ = run(core, frame([mp_capable()], flags="S"))
        assert verdict == XDP_DROP
        assert counters(core)[Counter.LB_CNT_NO_BACKEND.name[7:].lower()] == 1
    finally:
        prog.close()


def test_flow_hash_struct_layout_matches():
    # lb_flow is hashed as 9 little-endian words: addresses then the two ports.
    raw = bytes(16) + bytes(16) + struct.pack("!HH", 1, 2)
    assert len(raw) == 36 and ctypes.sizeof(ctypes.c_uint32) * 9 == 36


def _decap_fd(core) -> int:
    from bcc import BPF

    return core.prog.bpf.load_func(b"mptcp_lb_decap", BPF.XDP).fd


def _assert_decap_restores(core, data: bytes) -> None:
    """The LB encapsulates `data`; the backend's decapsulator gives the client's packet back and
    passes anything else untouched."""
    from controller.libbpf import test_run

    verdict, out = run(core, data)
    assert verdict == XDP_TX
    decap = _decap_fd(core)
    verdict, _, inner = test_run(decap, out, 1, 4096)
    assert verdict == XDP_PASS
    assert inner[:14] == out[:14]  # the Ethernet header as it arrived
    assert inner[14:] == data[14:]  # the client's IP packet, byte for byte
    verdict, _, same = test_run(decap, data, 1, 4096)
    assert (verdict, same) == (XDP_PASS, data)
    # An outer header whose version nibble is not its EtherType's is not ours: untouched.
    for version in (0, 4, 5, 6, 15):
        if version == (out[14] >> 4):
            continue
        odd = out[:14] + bytes([(version << 4) | (out[14] & 0x0F)]) + out[15:]
        verdict, _, same = test_run(decap, odd, 1, 4096)
        assert (verdict, same) == (XDP_PASS, odd), version


def test_backend_decapsulator_restores_the_clients_packet(lb):
    _assert_decap_restores(lb, frame([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY)],
                                     payload=b"hello"))


def test_the_dss_fast_path_still_sees_an_add_addr_behind_a_dss(lb):
    learn(lb)
    good = crypto.add_addr_hmac(CLIENT_KEY, SERVER_KEY, 5, "203.0.113.10")
    # DSS alone (fast path), DSS + padding, then DSS followed by an ADD_ADDR (full walk).
    for parts in ([NOP, NOP, TIMESTAMPS, dss(ack=1)],
                  [NOP, NOP, TIMESTAMPS, dss(ack=1, dsn=5, ssn=1, dlen=4)],
                  [dss(ack=1), add_addr(5, "203.0.113.10", hmac=good)]):
        verdict, out = run(lb, frame(parts, payload=b"abcd"))
        assert verdict == XDP_TX
    events(lb)
    assert counters(lb)["add_addr"] == 1
    assert lb.status()["controller"]["add_addr_hmac_ok"] == 1


def test_a_join_syn_in_linux_option_order_is_steered_by_its_token(lb):
    # MSS, SACK-permitted + timestamps, NOP window scale, MP_JOIN: the walk starts at the join.
    be = learn(lb)
    token = crypto.token(SERVER_KEY)
    parts = [MSS, SACK_PERM, TIMESTAMPS, NOP, WSCALE, join_syn(0, 2, token, 9)]
    verdict, out = run(lb, frame(parts, flags="S", src=CLIENT2, sport=50100))
    assert verdict == XDP_TX
    assert outer(out)[0].dst == be
    assert counters(lb)["join_hit"] == 1


def test_a_retransmitted_syn_keeps_its_entry(lb):
    data = frame([mp_capable()], flags="S", sport=45000)
    for _ in range(3):
        verdict, out = run(lb, data)
        assert verdict == XDP_TX
    assert lb.prog.conn_count() == 1
    assert [v.backend for _, _, v in lb.prog.conn_entries()] == [
        lb.backends[[b.addr for b in lb.backends].index(expected_backend(lb, sport=45000))].id]


# --- IPv6 VIP: IPv6-in-IPv6 -------------------------------------------------------------------

VIP6 = "2001:db8::80"
CLIENT6, CLIENT6B = "2001:db8:1::10", "2001:db8:2::10"
LB6_SRC = "fd00:20::2"
BACKENDS6 = ["fd00:20::11", "fd00:20::12", "fd00:20::13"]
BE6_MAC = {b: bytes.fromhex(f"02bb000006{i + 1:02x}") for i, b in enumerate(BACKENDS6)}


@pytest.fixture
def lb6(root_bpf):
    from controller.lb import LbCore, LbOptions, LbProgram

    prog = LbProgram(family=6)
    core = LbCore(prog, LbOptions(VIP6, VPORT, list(BACKENDS6), src=LB6_SRC, smac=LB_MAC),
                  static_hops={b: (m, 0) for b, m in BE6_MAC.items()})
    yield core
    prog.close()


def frame6(parts, flags="A", src=CLIENT6, sport=40000, dst=VIP6, payload=b""):
    return bytes(Ether(**IN_MAC) / IPv6(src=src, dst=dst, hlim=61, tc=0x28, fl=0x12345)
                 / tcp(parts, flags=flags, sport=sport, dport=VPORT, payload=payload))


def expected_backend6(core, src=CLIENT6, sport=40000) -> str:
    table = maglev.build_table({b.id: b.addr for b in core.backends if not b.draining})
    return core.backend_addr(maglev.pick(table, src, sport, VPORT))


def test_ipv6_syn_is_encapsulated_ipv6_in_ipv6_to_the_maglev_backend(lb6):
    data = frame6([mp_capable(flags=0x81)], flags="S")
    verdict, out = run(lb6, data)
    assert verdict == XDP_TX
    eth = Ether(out)
    o = eth[IPv6]
    want = expected_backend6(lb6)
    assert eth.type == 0x86DD
    assert bytes.fromhex(eth.dst.replace(":", "")) == BE6_MAC[want]
    assert (o.src, o.dst, o.nh, o.hlim) == (LB6_SRC, want, 41, 64)
    assert (o.tc, o.fl) == (0x28, 0x12345)  # as the client sent them
    assert o.plen == len(data) - 14
    assert out[14 + 40:] == data[14:]
    assert counters(lb6)["new_flow"] == 1


def test_ipv6_program_and_controller_agree_on_the_flow_hash(lb6):
    got = set()
    for sport in range(40000, 40030):
        verdict, out = run(lb6, frame6([mp_capable()], flags="S", sport=sport))
        assert verdict == XDP_TX
        got.add(Ether(out)[IPv6].dst)
        assert Ether(out)[IPv6].dst == expected_backend6(lb6, sport=sport)
    assert got == set(BACKENDS6)


def test_ipv6_join_goes_where_the_keys_of_its_connection_went(lb6):
    run(lb6, frame6([mp_capable()], flags="S"))
    run(lb6, frame6([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY)]))
    events(lb6)
    be = expected_backend6(lb6)
    token = crypto.token(SERVER_KEY)
    assert lb6.backend_addr(lb6.tokens_get(token)) == be
    for sport in (50001, 50002):
        parts = [MSS, SACK_PERM, TIMESTAMPS, NOP, WSCALE, join_syn(0, 2, token, 5)]
        verdict, out = run(lb6, frame6(parts, flags="S", src=CLIENT6B, sport=sport))
        assert verdict == XDP_TX
        assert Ether(out)[IPv6].dst == be
        verdict, out = run(lb6, frame6([NOP, NOP, TIMESTAMPS, dss(ack=3)], src=CLIENT6B,
                                       sport=sport))
        assert Ether(out)[IPv6].dst == be
    assert counters(lb6)["join_hit"] == 2
    # And an unknown token is dropped as with IPv4.
    verdict, _ = run(lb6, frame6([join_syn(0, 2, token ^ 1, 5)], flags="S", src=CLIENT6B))
    assert verdict == XDP_DROP


def test_ipv6_add_addr_of_a_join_is_checked_against_its_connection(lb6):
    run(lb6, frame6([mp_capable()], flags="S"))
    run(lb6, frame6([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY)]))
    events(lb6)
    token = crypto.token(SERVER_KEY)
    run(lb6, frame6([join_syn(0, 2, token, 5)], flags="S", src=CLIENT6B, sport=50003))
    good = crypto.add_addr_hmac(CLIENT_KEY, SERVER_KEY, 7, "2001:db8:3::10")
    run(lb6, frame6([NOP, NOP, TIMESTAMPS, add_addr(7, "2001:db8:3::10", hmac=good)],
                    src=CLIENT6B, sport=50003))
    events(lb6)
    assert lb6.status()["controller"]["add_addr_hmac_ok"] == 1


def test_ipv6_lb_passes_ipv4_and_other_traffic(lb6):
    for data in (frame([mp_capable()], flags="S"),
                 frame6([mp_capable()], flags="S", dst="2001:db8::81"),
                 bytes(Ether(**IN_MAC) / IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=1, dport=VPORT))):
        verdict, out = run(lb6, data)
        assert (verdict, out) == (XDP_PASS, data)


def test_ipv6_lb_passes_a_frame_whose_ip_version_is_not_6_and_remembers_no_flow(lb6):
    # Found by bench/fuzz_lb.py: the IPv6 build checked the EtherType but not the version
    # nibble (the IPv4 build checks it), so such frames were encapsulated to a backend and
    # each took a connection-table entry.
    good = frame6([mp_capable()], flags="S", sport=40123)
    for version in (0, 4, 5, 7, 15):
        data = bytearray(good)
        data[14] = version << 4 | data[14] & 0x0F
        verdict, out = run(lb6, bytes(data))
        assert (verdict, out) == (XDP_PASS, bytes(data)), version
    assert lb6.prog.conn_count() == 0
    assert counters(lb6)["vip"] == 0
    verdict, _ = run(lb6, good)
    assert verdict == XDP_TX


def test_ipv6_decapsulator_restores_the_clients_packet(lb6):
    _assert_decap_restores(lb6, frame6([mp_capable(skey=CLIENT_KEY, rkey=SERVER_KEY)],
                                       payload=b"hello"))


def test_mixed_families_are_rejected_in_one_line():
    from controller.errors import BadInput
    from controller.lb import parse_backends, parse_vip

    assert parse_vip("[2001:db8::1]:80") == ("2001:db8::1", 80)
    for call, words in ((lambda: parse_backends(["fd00::1"], "198.51.100.80"), "IPv6"),
                        (lambda: parse_backends(["10.0.0.1"], "2001:db8::1"), "IPv4"),
                        (lambda: parse_vip("2001:db8::1:80"), "[ADDR]:PORT")):
        with pytest.raises(BadInput) as e:
            call()
        assert len(str(e.value).splitlines()) == 1 and words in str(e.value)
