"""Property tests (hypothesis) of every input the controller decodes: mptcp_pm netlink events
(mutated recordings and random bytes), path-manager event sequences, control-socket requests
and answers, config files. Nothing the outside sends may raise anything but our typed errors;
the daemon logs and goes on. Known gaps are pinned as strict xfails with the input that breaks."""

import json
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_daemon_dispatch import FakePM

from controller import config, control, pm
from controller.config import DaemonConfig
from controller.daemon import Daemon
from controller.errors import BadInput
from controller.model import LocalAddr
from controller.pm import PMEvent

EVENTS_DIR = Path(__file__).resolve().parent.parent / "data" / "pm_events"
RECORDED = {p.stem: p.read_bytes() for p in sorted(EVENTS_DIR.glob("*.bin"))}
PROPS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKEN = 0xA1B2C3D4
WIFI = LocalAddr("10.81.1.2", "wifi0", 2, 4)
LTE = LocalAddr("10.81.2.2", "lte0", 3, 4)
V6 = LocalAddr("2001:db8:1::2", "wifi0", 2, 6)
SERVER, PORT = "10.81.9.2", 5201


# --- netlink messages, taken apart and put back together ----------------------------------


NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)


def split_msg(data: bytes, fixed_len: int = 4):
    """(nlmsghdr fields, fixed header, [(nla type, payload)]) of one recorded message; the
    fixed header is genl's 4 bytes here (rtnetlink's vary by type)."""
    hdr = list(NLMSG_HDR.unpack_from(data))
    genl, at, attrs = data[16 : 16 + fixed_len], 16 + fixed_len, []
    while at + 4 <= hdr[0]:
        nla_len, nla_type = struct.unpack_from("=HH", data, at)
        attrs.append((nla_type, data[at + 4 : at + nla_len]))
        at += (nla_len + 3) & ~3
    return hdr, genl, attrs


def join_msg(hdr, genl: bytes, attrs, fix_len: bool = True) -> bytes:
    body = genl
    for nla_type, payload in attrs:
        nla = struct.pack("=HH", 4 + len(payload), nla_type) + payload
        body += nla + bytes(-len(nla) % 4)
    length = 16 + len(body) if fix_len else hdr[0]
    return NLMSG_HDR.pack(length, *hdr[1:]) + body


def test_recorded_events_survive_being_taken_apart_and_rebuilt():
    for data in RECORDED.values():
        hdr, genl, attrs = split_msg(data)
        assert join_msg(hdr, genl, attrs) == data


N_ATTRS = len(pm.pm_event_msg.nla_map)
MUTATIONS = ("drop", "extra", "retype", "resize", "duplicate", "cmd", "flip", "nlmsg_len")


@st.composite
def mutated_event_buffers(draw) -> bytes:
    """One to three recorded events, each with attributes missing, added, of the wrong type or
    size, duplicated; an unknown command; flipped bytes; wrong lengths; the whole cut short."""
    out = b""
    for name in draw(st.lists(st.sampled_from(sorted(RECORDED)), min_size=1, max_size=3)):
        hdr, genl, attrs = split_msg(RECORDED[name])
        fix_len, flip = True, False
        for op in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
            i = draw(st.integers(0, max(0, len(attrs) - 1)))
            if op == "drop" and attrs:
                del attrs[i]
            elif op == "extra":
                attrs.insert(i, (draw(st.integers(0, N_ATTRS + 5)),
                                 draw(st.binary(max_size=20))))
            elif op == "retype" and attrs:
                attrs[i] = (draw(st.integers(0, N_ATTRS + 5)), attrs[i][1])
            elif op == "resize" and attrs:
                attrs[i] = (attrs[i][0], draw(st.binary(max_size=20)))
            elif op == "duplicate" and attrs:
                attrs.insert(i, attrs[i])
            elif op == "cmd":
                genl = bytes([draw(st.integers(0, 255))]) + genl[1:]
            elif op == "nlmsg_len":
                hdr[0], fix_len = draw(st.integers(0, 2**32 - 1)), False
            elif op == "flip":
                flip = True
        msg = join_msg(hdr, genl, attrs, fix_len)
        if flip:
            b = bytearray(msg)
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
            msg = bytes(b)
        out += msg
    cut = draw(st.none() | st.integers(0, len(out)))
    return out if cut is None else out[:cut]


def daemon(fail=()) -> Daemon:
    d = Daemon(DaemonConfig(datapath=False, cc="uncoupled"))
    d.pm = FakePM(fail)
    d.net.update({a.addr: a for a in (WIFI, LTE, V6)})
    return d


def well_formed(ev: PMEvent) -> bool:
    u = lambda v, bits: v is None or (isinstance(v, int) and 0 <= v < 2**bits)  # noqa: E731
    return (isinstance(ev.type, str) and u(ev.token, 32) and u(ev.sport, 16)
            and u(ev.dport, 16) and u(ev.loc_id, 8) and u(ev.rem_id, 8)
            and all(a is None or isinstance(a, str) for a in (ev.saddr, ev.daddr)))


def attr_runs_past_its_message(data: bytes) -> bool:
    """Does an attribute's length run past the end of its message (or of the buffer)?"""
    at = 0
    while at + 20 <= len(data):
        mlen = struct.unpack_from("=I", data, at)[0]
        end = min(at + mlen, len(data))
        a = at + 20
        while a + 4 <= end:
            nla_len = struct.unpack_from("=H", data, a)[0]
            if nla_len < 4:
                break
            if a + nla_len > end:
                return True
            a += (nla_len + 3) & ~3
        if mlen < 16:
            break
        at += (mlen + 3) & ~3
    return False


# An attribute that runs past its message: pyroute2 cannot decode it and hands back the raw
# attribute bytes, which pm._event_from_msg accepts when the clipped size happens to match
# (here DADDR4 = b"\t\x00\x07\x00\nR\x02\x03"); the daemon then raises ValueError on it.
OVERRUN = bytes.fromhex(
    "3c0000001c00000000000000000000000601000004000000040000000800010047d55c14050004000500"
    "000006000a0014510000090007000a520203")


def test_an_attribute_running_past_its_message_is_ignored():
    (ev,) = pm.decode_events(OVERRUN)
    assert ev.daddr is None
    d = daemon()
    d.handle_pm_event(PMEvent(type="established", token=ev.token, family=2, saddr=WIFI.addr,
                              sport=40000, daddr=SERVER, dport=PORT))
    d.handle_pm_event(ev)


@PROPS
@given(mutated_event_buffers())
def test_mutated_recorded_events_decode_to_well_formed_events_or_nothing(data):
    events = pm.decode_events(data)
    assert all(isinstance(e, PMEvent) and well_formed(e) for e in events)
    d = daemon()
    for e in events:
        d.handle_pm_event(e)


@PROPS
@given(st.binary(max_size=400))
def test_random_bytes_never_break_the_event_decoder(data):
    for e in pm.decode_events(data):
        assert isinstance(e, PMEvent)


@pytest.mark.parametrize("cut", [7, 30, -3])
def test_a_truncated_event_is_skipped(cut):
    assert pm.decode_events(RECORDED["cli_created"][:cut]) == []


def test_a_truncated_event_is_logged(caplog):
    with caplog.at_level("INFO", logger="controller.pm"):
        pm.decode_events(RECORDED["cli_created"][:-3])
    assert "undecodable" in caplog.text


# --- path-manager event sequences ------------------------------------------------------------


EVENT_TYPES = [e.name.lower() for e in pm.Event]
ADDRS = st.none() | st.sampled_from([WIFI.addr, LTE.addr, V6.addr, SERVER, "10.81.9.3",
                                     "2001:db8:9::2", "0.0.0.0", "::"]) | st.ip_addresses().map(str)
U = lambda bits: st.none() | st.integers(0, 2**bits - 1)  # noqa: E731

pm_events = st.builds(
    PMEvent,
    type=st.sampled_from(EVENT_TYPES) | st.text(max_size=12),
    token=st.none() | st.sampled_from([TOKEN, TOKEN + 1, 0]) | st.integers(0, 2**32 - 1),
    family=st.none() | st.sampled_from([2, 10]) | st.integers(0, 2**16 - 1),
    saddr=ADDRS, daddr=ADDRS,
    sport=st.none() | st.sampled_from([0, 40000]) | st.integers(0, 2**16 - 1),
    dport=st.none() | st.sampled_from([0, PORT]) | st.integers(0, 2**16 - 1),
    loc_id=U(8), rem_id=U(8), backup=st.none() | st.booleans(), error=U(8),
    flags=st.none() | st.integers(0, 3).map(pm.EventFlag), timeout=U(32),
    if_idx=st.none() | st.integers(-(2**31), 2**31 - 1), reset_reason=U(32), reset_flags=U(32),
    server_side=st.none() | st.booleans(),
)
PM_CALLS = ["subflow_create", "subflow_destroy", "announce", "remove", "set_flags"]


@PROPS
@given(st.lists(pm_events, max_size=25), st.sets(st.sampled_from(PM_CALLS)), st.randoms())
def test_any_event_sequence_duplicated_and_reordered_is_handled(events, fail, rnd):
    d = daemon(fail)
    replay = events + events[::-1] + rnd.sample(events, len(events))
    for e in replay:
        d.handle_pm_event(e)
        if rnd.random() < 0.2:
            d.reconcile()
    d.retries = {pair: (att, 0.0) for pair, (att, _) in d.retries.items()}  # all due now
    d._run_timers()
    for cmd in ("subflows", "events"):
        json.dumps(d.answer({"cmd": cmd}), default=str)


# --- the control socket ----------------------------------------------------------------------


def read_request_of(data: bytes):
    """control.read_request on `data` sent by a peer that then closes its side."""
    a, b = socket.socketpair()
    with a, b:
        writer = threading.Thread(target=lambda: (b.sendall(data), b.shutdown(socket.SHUT_WR)))
        writer.start()
        try:
            return control.read_request(a, timeout=2.0)
        finally:
            writer.join()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)
request_lines = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode() + b"\n"),
    st.dictionaries(st.sampled_from(["cmd", "since", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode() + line_end(v)),
)


def line_end(v) -> bytes:
    """One request line, or (now and then) a second one after it: only the first counts."""
    return b"\n" if len(v) % 2 == 0 else b"\n{\"cmd\": \"second\"}\n"


@PROPS
@given(request_lines)
def test_read_request_gives_a_command_or_a_value_error(data):
    try:
        req = read_request_of(data)
    except ValueError:
        return
    assert isinstance(req, dict) and isinstance(req["cmd"], str)


def test_a_request_longer_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="too long"):
        read_request_of(b'{"cmd": "' + b"x" * (control.MAX_REQUEST + 10) + b'"}\n')


def test_a_deeply_nested_request_is_a_value_error():
    with pytest.raises(ValueError):
        read_request_of(b"[" * 5000 + b"\n")


COMMANDS = ["status", "events", "subflows", "ping", "shutdown"]
numbers = (st.none() | st.booleans() | st.integers(-(10**12), 10**12)
           | st.floats(allow_nan=False) | st.integers(0, 10**9).map(str))


@settings(PROPS, max_examples=60)
@given(st.sampled_from(COMMANDS) | st.text(max_size=10),
       st.dictionaries(st.text(max_size=6).filter(lambda k: k not in ("cmd", "since")),
                       json_values, max_size=3),
       st.none() | numbers)
def test_answer_to_any_command_is_a_dict(cmd, extra, since):
    d = daemon()
    d.handle_pm_event(PMEvent(type="established", token=TOKEN, family=2, saddr=WIFI.addr,
                              sport=40000, daddr=SERVER, dport=PORT))
    req = {"cmd": cmd, **extra}
    if since is not None:
        req["since"] = since
    answer = d.answer(req)
    assert isinstance(answer, dict)
    json.dumps(answer, default=str)


@pytest.mark.parametrize("since", [[1], {"t": 1}, "yesterday"])
def test_events_since_a_non_number_is_an_error_answer(since):
    answer = daemon().answer({"cmd": "events", "since": since})
    assert "error" in answer


# --- the config file -------------------------------------------------------------------------


toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str), st.booleans().map(lambda b: str(b).lower()),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=10).map(json.dumps), st.sampled_from(["1979-05-27", "inf", "nan"]),
    st.sampled_from(["userspace", "kernel", "lia", "backup", "fullmesh"]).map(json.dumps),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3).map(lambda v: "[" + ", ".join(v) + "]")
    | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2).map(
        lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"),
    max_leaves=6,
)
toml_lines = st.tuples(
    st.sampled_from(sorted(config.KEYS)) | st.text("abcxyz_-", min_size=1, max_size=8),
    toml_values,
).map(lambda kv: f"{kv[0]} = {kv[1]}")
toml_texts = st.one_of(
    st.lists(toml_lines | st.sampled_from(["[table]", "# comment", "", "= 1"]),
             max_size=6).map("\n".join),
    st.text(max_size=200),
)


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cfg")


@PROPS
@given(text=toml_texts)
def test_any_config_text_is_a_valid_config_or_bad_input(cfg_dir, text):
    path = cfg_dir / "mptcpctl.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = config.load(path, required=True)
    except BadInput as e:
        assert "\n" not in str(e).strip() or "unknown key" in str(e)
        return
    assert isinstance(cfg, DaemonConfig) and cfg.validate() is cfg


@pytest.mark.parametrize("content", [b'pm = "\xff"\n', b"pm = " + b"[" * 3000 + b"]" * 3000],
                         ids=["not-utf8", "deep-array"])
def test_an_unreadable_config_is_bad_input(tmp_path, content):
    path = tmp_path / "mptcpctl.toml"
    path.write_bytes(content)
    with pytest.raises(BadInput):
        config.load(path, required=True)
