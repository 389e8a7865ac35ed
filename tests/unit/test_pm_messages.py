"""Unit tests for controller/pm.py messages: commands encode to the kernel's wire numbers and
decode back; recorded kernel events (tests/data/pm_events, kernel 6.18) decode to PMEvents;
malformed input is skipped, never fatal."""

import socket
import struct
from pathlib import Path

import pytest

from controller import pm
from controller.pm import AddrFlag, Cmd, Event, EventFlag, PMError, ResetReason

DATA = Path(__file__).resolve().parent.parent / "data" / "pm_events"
NLA_F_NESTED = 0x8000


def tlvs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """{attribute type: payload} of a run of netlink attributes (test-side wire check)."""
    out = {}
    while offset + 4 <= len(data):
        length, typ = struct.unpack_from("HH", data, offset)
        if length < 4:
            break
        out[typ & ~NLA_F_NESTED] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def wire(msg) -> tuple[int, dict[int, bytes]]:
    """(genl cmd, top-level attributes) of an encoded message: 16-byte nlmsghdr, 4-byte genl."""
    msg.encode()
    data = bytes(msg.data)
    return data[16], tlvs(data, 20)


def roundtrip(msg):
    msg.encode()
    back = pm.pm_msg(bytes(msg.data))
    back.decode()
    return back


# --- numbers from the kernel spec (Documentation/netlink/specs/mptcp_pm.yaml, uapi headers)


def test_command_numbers_match_the_kernel_spec():
    assert [(c.name, c.value) for c in Cmd] == [
        ("ADD_ADDR", 1), ("DEL_ADDR", 2), ("GET_ADDR", 3), ("FLUSH_ADDRS", 4),
        ("SET_LIMITS", 5), ("GET_LIMITS", 6), ("SET_FLAGS", 7), ("ANNOUNCE", 8),
        ("REMOVE", 9), ("SUBFLOW_CREATE", 10), ("SUBFLOW_DESTROY", 11),
    ]


def test_event_numbers_match_the_kernel_spec():
    assert {e.name: e.value for e in Event} == {
        "CREATED": 1, "ESTABLISHED": 2, "CLOSED": 3, "ANNOUNCED": 6, "REMOVED": 7,
        "SUB_ESTABLISHED": 10, "SUB_CLOSED": 11, "SUB_PRIORITY": 13,
        "LISTENER_CREATED": 15, "LISTENER_CLOSED": 16,
    }


def test_attribute_numbers_match_the_kernel_spec():
    names = [n for n, _ in pm.pm_msg.nla_map]
    assert names.index("MPTCP_PM_ATTR_TOKEN") == 4
    assert names.index("MPTCP_PM_ATTR_LOC_ID") == 5
    assert names.index("MPTCP_PM_ATTR_ADDR_REMOTE") == 6
    addr = [n for n, _ in pm.pm_addr.nla_map]
    assert addr.index("MPTCP_PM_ADDR_ATTR_IF_IDX") == 7
    ev = [n for n, _ in pm.pm_event_msg.nla_map]
    assert ev.index("MPTCP_ATTR_TOKEN") == 1
    assert ev.index("MPTCP_ATTR_SPORT") == 9
    assert ev.index("MPTCP_ATTR_IF_IDX") == 15
    assert ev.index("MPTCP_ATTR_RESET_REASON") == 16
    assert ev.index("MPTCP_ATTR_SERVER_SIDE") == 18
    assert len(ev) == 19


def test_flag_and_reset_reason_values_match_the_uapi_headers():
    assert [int(f) for f in AddrFlag] == [1, 2, 4, 8, 16, 32]
    assert (EventFlag.DENY_JOIN_ID0, EventFlag.SERVER_SIDE) == (1, 2)
    assert [r.value for r in ResetReason] == list(range(7))


# --- commands: encode to the right wire attributes, decode back


def test_announce_encodes_token_and_nested_signal_address():
    msg = pm.build_announce(0x1234ABCD, "10.82.2.3", 5, port=8080, ifindex=3)
    cmd, attrs = wire(msg)
    assert cmd == 8
    assert struct.unpack("I", attrs[4])[0] == 0x1234ABCD
    addr = tlvs(attrs[1])
    assert struct.unpack("H", addr[1])[0] == socket.AF_INET
    assert addr[2] == b"\x05"
    assert addr[3] == socket.inet_aton("10.82.2.3")
    assert struct.unpack("H", addr[5])[0] == 8080  # host order, as the kernel reads it
    assert struct.unpack("I", addr[6])[0] == AddrFlag.SIGNAL
    assert struct.unpack("i", addr[7])[0] == 3
    back = roundtrip(pm.build_announce(7, "10.82.2.3", 5))
    assert back["cmd"] == Cmd.ANNOUNCE
    assert back.get_attr("MPTCP_PM_ATTR_TOKEN") == 7
    nested = back.get_attr("MPTCP_PM_ATTR_ADDR")
    assert nested.get_attr("MPTCP_PM_ADDR_ATTR_ADDR4") == "10.82.2.3"
    assert nested.get_attr("MPTCP_PM_ADDR_ATTR_ID") == 5


def test_remove_encodes_token_and_loc_id():
    cmd, attrs = wire(pm.build_remove(99, 5))
    assert (cmd, struct.unpack("I", attrs[4])[0], attrs[5]) == (9, 99, b"\x05")
    assert set(attrs) == {4, 5}


def test_subflow_create_encodes_local_and_remote_addresses():
    msg = pm.build_subflow_create(1, "10.82.2.1", 2, "10.82.2.2", 5201, ifindex=4, backup=True)
    cmd, attrs = wire(msg)
    assert cmd == 10
    assert set(attrs) == {1, 4, 6}
    local, remote = tlvs(attrs[1]), tlvs(attrs[6])
    assert (local[3], local[2]) == (socket.inet_aton("10.82.2.1"), b"\x02")
    assert struct.unpack("I", local[6])[0] == AddrFlag.BACKUP
    assert struct.unpack("i", local[7])[0] == 4
    assert remote[3] == socket.inet_aton("10.82.2.2")
    assert struct.unpack("H", remote[5])[0] == 5201
    back = roundtrip(msg)
    rem = back.get_attr("MPTCP_PM_ATTR_ADDR_REMOTE")
    assert rem.get_attr("MPTCP_PM_ADDR_ATTR_PORT") == 5201


def test_subflow_destroy_and_set_flags_carry_both_ports():
    for msg, cmd_no in ((pm.build_subflow_destroy(1, "10.82.2.1", 40000, "10.82.2.2", 5201), 11),
                        (pm.build_set_flags(1, "10.82.2.1", 40000, "10.82.2.2", 5201, True), 7)):
        cmd, attrs = wire(msg)
        assert cmd == cmd_no
        assert struct.unpack("H", tlvs(attrs[1])[5])[0] == 40000
        assert struct.unpack("H", tlvs(attrs[6])[5])[0] == 5201
    _, attrs = wire(pm.build_set_flags(1, "10.82.2.1", None, "10.82.2.2", None, False))
    assert struct.unpack("I", tlvs(attrs[1])[6])[0] == 0  # backup off is an explicit 0


def test_ipv6_addresses_use_addr6_and_family_inet6():
    msg = pm.build_subflow_create(1, "fd00::1", 3, "fd00::2", 443)
    _, attrs = wire(msg)
    local = tlvs(attrs[1])
    assert struct.unpack("H", local[1])[0] == socket.AF_INET6
    assert local[4] == socket.inet_pton(socket.AF_INET6, "fd00::1")
    back = roundtrip(msg).get_attr("MPTCP_PM_ATTR_ADDR_REMOTE")
    assert back.get_attr("MPTCP_PM_ADDR_ATTR_ADDR6") == "fd00::2"


def test_in_kernel_commands_encode():
    assert wire(pm.build_get_limits()) == (6, {})
    cmd, attrs = wire(pm.build_set_limits(subflows=4, add_addr_accepted=2))
    assert (cmd, struct.unpack("I", attrs[3])[0], struct.unpack("I", attrs[2])[0]) == (5, 4, 2)
    cmd, attrs = wire(pm.build_add_addr("10.82.1.1", id=3, flags=AddrFlag.SUBFLOW))
    assert (cmd, tlvs(attrs[1])[2]) == (1, b"\x03")
    assert wire(pm.build_del_addr(3))[0] == 2
    assert wire(pm.build_get_addr())[0] == 3
    assert struct.unpack("I", wire(pm.build_get_addr(token=5))[1][4])[0] == 5
    assert wire(pm.build_flush_addrs())[0] == 4


def test_bad_address_is_rejected_before_sending():
    with pytest.raises(ValueError):
        pm.build_announce(1, "not-an-ip", 1)


# --- events recorded from kernel 6.18 (client and server side of one connection)

RECORDED = [
    ("cli_created.bin", dict(type="created", token=0x145CD547, family=socket.AF_INET,
                             saddr="10.82.1.1", daddr="10.82.1.2", sport=41183, dport=5201,
                             server_side=False, deny_join_id0=False)),
    ("cli_established.bin", dict(type="established", token=0x145CD547, server_side=False)),
    ("srv_created.bin", dict(type="created", saddr="10.82.1.2", sport=5201, server_side=True,
                             flags=EventFlag.SERVER_SIDE)),
    ("srv_established.bin", dict(type="established", server_side=True)),
    ("cli_sub_established.bin", dict(type="sub_established", token=0x145CD547,
                                     saddr="10.82.2.1", daddr="10.82.2.2", sport=54869,
                                     dport=5201, loc_id=2, rem_id=1, backup=False, error=None)),
    ("srv_sub_established.bin", dict(type="sub_established", backup=True, loc_id=1, rem_id=2)),
    ("srv_sub_priority.bin", dict(type="sub_priority", backup=False, daddr="10.82.2.1",
                                  dport=54869)),
    ("cli_announced.bin", dict(type="announced", token=0x145CD547, rem_id=5,
                               daddr="10.82.2.3", saddr=None)),
    ("cli_removed.bin", dict(type="removed", token=0x145CD547, rem_id=5, daddr=None)),
    ("cli_sub_closed.bin", dict(type="sub_closed", saddr="10.82.2.1", sport=54869)),
    ("srv_sub_closed.bin", dict(type="sub_closed", saddr="10.82.2.2", dport=54869)),
    ("cli_closed.bin", dict(type="closed", token=0x145CD547, family=None, saddr=None,
                            server_side=None, flags=None)),
    ("srv_listener_created.bin", dict(type="listener_created", token=None,
                                      family=socket.AF_INET, saddr="0.0.0.0", sport=5201)),
    ("srv_listener_closed.bin", dict(type="listener_closed", sport=5201)),
]


@pytest.mark.parametrize("name,expected", RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_kernel_events_decode(name, expected):
    (ev,) = pm.decode_events((DATA / name).read_bytes())
    for key, value in expected.items():
        assert getattr(ev, key) == value, key
    assert ev.unknown_attrs == ()


def test_a_buffer_of_several_events_decodes_in_order():
    data = b"".join((DATA / n).read_bytes() for n in ("cli_created.bin", "cli_closed.bin"))
    assert [e.type for e in pm.decode_events(data)] == ["created", "closed"]


# --- malformed input: logged and skipped, never an exception


def with_extra_attr(data: bytes, typ: int, payload: bytes) -> bytes:
    """The one message in `data` with a trailing attribute appended (lengths fixed up)."""
    nla = struct.pack("HH", 4 + len(payload), typ) + payload
    nla += b"\0" * (-len(nla) % 4)
    body = data + nla
    return struct.pack("I", len(body)) + body[4:]


def test_unknown_attribute_is_skipped_and_reported():
    data = with_extra_attr((DATA / "cli_closed.bin").read_bytes(), 99, b"\1\2\3\4")
    (ev,) = pm.decode_events(data)
    assert (ev.type, ev.token) == ("closed", 0x145CD547)
    assert len(ev.unknown_attrs) == 1


def test_attribute_with_wrong_size_is_ignored():
    data = with_extra_attr((DATA / "cli_removed.bin").read_bytes(), 9, b"\1")  # 1-byte sport
    (ev,) = pm.decode_events(data)
    assert (ev.type, ev.rem_id, ev.sport) == ("removed", 5, None)


def test_unknown_event_type_is_skipped():
    data = bytearray((DATA / "cli_closed.bin").read_bytes())
    data[16] = 42  # genl cmd
    assert pm.decode_events(bytes(data)) == []
    both = bytes(data) + (DATA / "cli_removed.bin").read_bytes()
    assert [e.type for e in pm.decode_events(both)] == ["removed"]


@pytest.mark.parametrize("data", [
    b"", b"\0" * 3, b"\xff" * 16, (DATA / "cli_created.bin").read_bytes()[:30],
    (DATA / "cli_created.bin").read_bytes()[:20],
])
def test_truncated_or_garbage_buffers_do_not_raise(data):
    for ev in pm.decode_events(data):
        assert isinstance(ev, pm.PMEvent)


def subscriber_reading(datagram: bytes, recv_size: int = pm.PMEvents.RECV_SIZE):
    """A PMEvents without netlink whose socket holds `datagram`, after one read()."""
    sub = pm.PMEvents.__new__(pm.PMEvents)
    sub.overflowed, sub.RECV_SIZE = False, recv_size
    sub._sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sub, peer:
        sub._sock.setblocking(False)
        peer.send(datagram)
        return sub, sub.read(timeout=1)


def test_an_event_followed_by_a_truncated_one_is_kept_and_the_loss_resyncs(caplog):
    good = (DATA / "cli_created.bin").read_bytes()
    cut = (DATA / "cli_closed.bin").read_bytes()[:-3]
    with caplog.at_level("WARNING", logger="controller.pm"):
        sub, events = subscriber_reading(good + cut)
    assert events == pm.decode_events(good)
    assert [r.getMessage() for r in caplog.records] == [
        f"mptcp_pm: undecodable event: truncated message at byte {len(good)} of "
        f"{len(good + cut)} (nlmsg_len {len(cut) + 3})"]
    assert sub.overflowed


def test_a_datagram_longer_than_the_receive_buffer_counts_as_lost_events(caplog):
    data = b"".join((DATA / n).read_bytes() for n in ("cli_created.bin", "cli_closed.bin"))
    with caplog.at_level("WARNING", logger="controller.pm"):
        sub, events = subscriber_reading(data, recv_size=len(data) - 8)
    assert [e.type for e in events] == ["created"]
    assert "datagram truncated" in caplog.text
    assert sub.overflowed


def test_whole_events_are_not_a_loss():
    sub, events = subscriber_reading((DATA / "cli_closed.bin").read_bytes())
    assert [e.type for e in events] == ["closed"] and not sub.overflowed


def test_reset_reason_decodes_to_the_rfc_name_or_stays_a_number():
    base = (DATA / "cli_sub_closed.bin").read_bytes()
    (ev,) = pm.decode_events(with_extra_attr(base, 16, struct.pack("I", 3)))
    assert ev.reset_reason is ResetReason.PROHIBIT
    (ev,) = pm.decode_events(with_extra_attr(base, 16, struct.pack("I", 77)))
    assert ev.reset_reason == 77


def test_pm_error_carries_errno_and_kernel_text():
    err = PMError("ANNOUNCE", 22, "invalid addr id")
    assert (err.errno, err.kernel_msg, err.exit_code) == (22, "invalid addr id", 1)
    assert "ANNOUNCE" in str(err) and "invalid addr id" in str(err)
    assert "errno 22" in str(PMError("REMOVE", 22))
