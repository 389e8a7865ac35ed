"""What the datapath records per subflow and per connection, and what it tells the controller:
tokens from MP_JOIN SYNs and from the controller, connection aggregates, data-level
retransmissions, ring-buffer events, nothing trusted from a malformed packet, bounded maps."""

import ctypes

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from test_decode_table import (
    K1,
    K2,
    MAC,
    NOP,
    TIMESTAMPS,
    Bad,
    dss,
    flow_key,
    join_syn,
    mp_capable,
    mp_fail,
    tcp,
)

from controller import abi
from controller.datapath import PinnedDatapath

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"
CPORT, SPORT = 41000, 5201
EV = abi.EventType


@pytest.fixture
def prog(root_bpf):
    """A fresh private copy of the datapath for each test (empty maps)."""
    from controller.datapath import Program

    p = Program(cflags=["-DSUBFLOW_ENTRIES=512", "-DCONN_ENTRIES=64"])
    yield p
    p.close()


def ingress(prog, parts, flags="A", payload=b"", sport=CPORT, src=CLIENT):
    """A segment from the client arriving at the server (XDP: the server is local)."""
    frame = bytes(Ether(**MAC) / IP(src=src, dst=SERVER) / tcp(parts, flags=flags, sport=sport,
                                                               dport=SPORT, payload=payload))
    verdict, _ = prog.run_xdp(frame)
    assert verdict == 2


def server_key(sport=CPORT, src=CLIENT):
    return flow_key(4, SERVER, src, SPORT, sport)


def maps(prog):
    return (prog.map("subflows", abi.FlowKey, abi.SubflowStats),
            prog.map("subflow_token", abi.FlowKey, ctypes.c_uint32),
            prog.map("conns", ctypes.c_uint32, abi.ConnStats))


def test_incoming_join_syn_names_the_connection_and_later_bytes_add_up_there(prog):
    subflows, tokens, conns = maps(prog)
    ingress(prog, [join_syn(1, 2, 0xCAFEF00D, 77)], flags="S")
    k = server_key()
    assert tokens.lookup(k).value == 0xCAFEF00D
    s = subflows.lookup(k)
    assert s.token == 0xCAFEF00D and s.flags & abi.SubflowFlags.SF_JOIN
    assert s.flags & abi.SubflowFlags.SF_BACKUP
    ingress(prog, [NOP, NOP, TIMESTAMPS, dss(ack=1, ack64=True, dsn=10, dsn64=True, dlen=1000)],
            payload=b"x" * 1000)
    c = conns.lookup(ctypes.c_uint32(0xCAFEF00D))
    assert c is not None
    assert c.dir[abi.Direction.DIR_INGRESS].bytes == 1000
    assert subflows.lookup(k).dir[abi.Direction.DIR_INGRESS].bytes == 1000


def test_a_join_syn_with_a_new_token_on_a_known_subflow_replaces_the_old_one(prog):
    """Retransmitted join SYNs skip the subflow_token lookup; a new token still gets there."""
    subflows, tokens, _ = maps(prog)
    k = server_key()
    for _ in range(3):
        ingress(prog, [join_syn(0, 2, 0x1111AAAA, 5)], flags="S")
    assert tokens.lookup(k).value == 0x1111AAAA
    ingress(prog, [join_syn(0, 2, 0x2222BBBB, 6)], flags="S")
    assert tokens.lookup(k).value == 0x2222BBBB
    assert subflows.lookup(k).token == 0x2222BBBB


def test_a_token_the_controller_writes_is_used_once_it_bumps_token_gen(prog):
    subflows, tokens, conns = maps(prog)
    seg = [dss(ack=5, dsn=100, dlen=100)]
    ingress(prog, seg, payload=b"y" * 100)
    k = server_key()
    assert not subflows.lookup(k).flags & abi.SubflowFlags.SF_HAVE_TOKEN
    tokens.update(k, ctypes.c_uint32(0x1234ABCD))
    ingress(prog, seg, payload=b"y" * 100)
    assert conns.lookup(ctypes.c_uint32(0x1234ABCD)) is None, "looked up without a bump"
    prog.set_config(token_gen=1)
    ingress(prog, seg, payload=b"y" * 100)
    c = conns.lookup(ctypes.c_uint32(0x1234ABCD))
    # The connection then holds all its subflow carried, the segments from before too.
    assert c is not None and c.dir[abi.Direction.DIR_INGRESS].bytes == 300
    assert c.dir[abi.Direction.DIR_INGRESS].packets == 3
    ingress(prog, seg, payload=b"y" * 100)
    c = conns.lookup(ctypes.c_uint32(0x1234ABCD))
    assert (c.dir[0].packets, c.dir[0].bytes) == (4, 400)
    assert (c.dir[0].packets, c.dir[0].bytes) == (subflows.lookup(k).dir[0].packets,
                                                  subflows.lookup(k).dir[0].bytes)


def test_mp_capable_keys_land_on_the_right_side(prog):
    subflows, _, _ = maps(prog)
    # The client's third ACK: sender key = client's (remote here), receiver key = server's.
    ingress(prog, [mp_capable(skey=K1, rkey=K2)])
    s = subflows.lookup(server_key())
    assert (s.remote_key, s.local_key) == (K1, K2)
    F = abi.SubflowFlags
    assert s.flags & F.SF_HAVE_LOCAL_KEY and s.flags & F.SF_HAVE_REMOTE_KEY
    assert s.flags & F.SF_CHECKSUM  # flags 0x81 carry the checksum-required bit


def test_subflow_first_and_last_seen_follow_the_monotonic_clock(prog):
    """status shows age and idle time from first_ns/last_ns: CLOCK_MONOTONIC at tick resolution
    (the datapath reads the coarse clock once per jiffy), so at most a few ticks behind."""
    import time

    subflows, _, _ = maps(prog)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    ingress(prog, [dss(ack=1)])
    time.sleep(0.05)
    ingress(prog, [dss(ack=2)])
    t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    s = subflows.lookup(server_key())
    tick_slack = 20_000_000  # 2 ticks at HZ=100, plus the coarse clock's own tick
    assert t0 - tick_slack <= s.first_ns <= t0 + tick_slack
    assert s.first_ns + 50_000_000 - tick_slack <= s.last_ns <= t1


def test_a_dsn_below_the_highest_seen_is_a_data_level_retransmission(prog):
    subflows, _, _ = maps(prog)
    for dsn in (1000, 2000, 1000, 3000, 2500):
        ingress(prog, [dss(dsn=dsn, dsn64=True, dlen=10)], payload=b"z" * 10)
    d = subflows.lookup(server_key()).dir[abi.Direction.DIR_INGRESS]
    assert d.dss_mappings == 5
    assert d.data_retrans == 2
    assert d.dsn_highest == 3000


def test_mp_fail_is_counted_on_the_connection(prog):
    _, tokens, conns = maps(prog)
    ingress(prog, [join_syn(0, 1, 0xAB, 1)], flags="S")
    ingress(prog, [mp_fail(123456)])
    assert conns.lookup(ctypes.c_uint32(0xAB)).mp_fail == 1


def test_a_malformed_segment_changes_no_subflow(prog):
    subflows, _, _ = maps(prog)
    bad_len = Bad(bytes([abi.TCPOPT_MPTCP, 2]))
    ingress(prog, [join_syn(0, 1, 0xEE, 1), bad_len], flags="S")
    assert subflows.lookup(server_key()) is None


def test_events_reach_the_ring_buffer(prog):
    seen = []

    def on_event(_ctx, data, size):
        ev = ctypes.cast(data, ctypes.POINTER(abi.Event)).contents
        seen.append((ev.type, ev.opt.word, ev.opt.nonce, ev.opt.key_a))

    prog.bpf[b"events"].open_ring_buffer(on_event)
    ingress(prog, [join_syn(0, 3, 0xFEEDBEEF, 4242)], flags="S")
    ingress(prog, [mp_capable(skey=K1, rkey=K2)])
    ingress(prog, [Bad(bytes([abi.TCPOPT_MPTCP, 0]))])
    prog.bpf.ring_buffer_consume()
    types = [t for t, *_ in seen]
    assert types == [EV.EV_JOIN_SYN, EV.EV_MPC_KEYS, EV.EV_MALFORMED]
    assert seen[0][1:3] == (0xFEEDBEEF, 4242)
    assert seen[1][3] == K1


def test_a_retransmitted_join_syn_raises_no_second_event(prog):
    """The same SYN again (same 4-tuple, ISN and token) repeats what its first copy reported;
    a new SYN on the 4-tuple (another ISN) is reported, and counted like any SYN either way."""
    seen = []
    prog.bpf[b"events"].open_ring_buffer(
        lambda _c, data, _s: seen.append(ctypes.cast(data, ctypes.POINTER(abi.Event)).contents
                                         .opt.nonce))

    def syn(isn, nonce):
        t = tcp([join_syn(0, 3, 0xFEEDBEEF, nonce)], flags="S", sport=CPORT, dport=SPORT)
        t.seq = isn
        assert prog.run_xdp(bytes(Ether(**MAC) / IP(src=CLIENT, dst=SERVER) / t))[0] == 2

    for isn, nonce in ((1000, 1), (1000, 1), (1000, 1), (5000, 2), (5000, 2)):
        syn(isn, nonce)
    prog.bpf.ring_buffer_consume()
    assert seen == [1, 2]
    subflows, _, _ = maps(prog)
    s = subflows.lookup(server_key())
    assert s.opts[abi.Subtype.MP_JOIN] == 5 and s.dir[abi.Direction.DIR_INGRESS].packets == 5


def test_a_flood_of_new_subflows_cannot_grow_the_map(prog):
    subflows, _, _ = maps(prog)
    for i in range(2000):
        ingress(prog, [dss(ack=1)], sport=1024 + i)
    n = len(subflows.keys())
    assert 0 < n <= 512


def test_pinned_reader_sums_counters_and_learns_tokens(prog, tmp_path, monkeypatch):
    """The read side used by status/top: counters summed over CPUs, tokens written back."""
    import shutil

    from controller import crypto, datapath, libbpf, view

    pins = datapath.BPFFS / "mptcpctl-test" / tmp_path.name
    pins.mkdir(parents=True)
    try:
        for name in datapath.PINNED_MAPS:
            libbpf.pin(prog.map_fd(name), str(pins / name))
        monkeypatch.setattr(datapath, "pin_dir", lambda ns: pins)
        ingress(prog, [mp_capable(skey=K1, rkey=K2)])
        ingress(prog, [dss(ack=1, dsn=1, dlen=5)], payload=b"hello")
        dp = PinnedDatapath(None)
        try:
            (sf,) = view.snapshot(dp)
            assert sf.token == f"{crypto.token(K2):08x}"  # the server's (local) key
            assert dp.counter_values()["mptcp"] == 2
        finally:
            dp.close()
        ingress(prog, [dss(ack=1, dsn=6, dlen=5)], payload=b"world")
        c = maps(prog)[2].lookup(ctypes.c_uint32(crypto.token(K2)))
        assert c is not None and c.dir[abi.Direction.DIR_INGRESS].bytes == 10  # hello, world
    finally:
        shutil.rmtree(pins.parent)

