"""The kernel's `mptcp_pm` generic netlink family: userspace path-manager commands, the in-kernel
endpoint/limit commands, and the `mptcp_pm_events` multicast events, declared as pyroute2
messages (extending pyroute2.netlink.generic.mptcp)."""

# Every number below was checked against the kernel's netlink spec
# (torvalds/linux Documentation/netlink/specs/mptcp_pm.yaml, include/uapi/linux/mptcp_pm.h and
# include/uapi/linux/mptcp.h) and against the running kernel's own policy dump
# (CTRL_CMD_GETPOLICY for family "mptcp_pm": 11 ops; per-op attributes as noted on each builder).

import enum
import ipaddress
import logging
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6

from pyroute2.netlink import (
    NETLINK_GENERIC,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    SOL_NETLINK,
    genlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import AsyncGenericNetlinkSocket, GenericNetlinkSocket
from pyroute2.netlink.generic.mptcp import mptcp_msg
from pyroute2.netlink.marshal import Marshal

from . import netns as netnsmod
from .errors import MissingFeature, MptcpctlError

log = logging.getLogger(__name__)

# Family and multicast group names (uapi mptcp_pm.h MPTCP_PM_NAME, mptcp.h MPTCP_PM_EV_GRP_NAME).
MPTCP_PM_NAME = "mptcp_pm"
MPTCP_PM_VER = 1
MPTCP_PM_EV_GRP_NAME = "mptcp_pm_events"
# linux/netlink.h socket options on SOL_NETLINK.
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_EXT_ACK = 11
# Generic netlink family ids start here (linux/genetlink.h GENL_MIN_ID); lower types are control.
GENL_MIN_ID = 16


class Cmd(enum.IntEnum):
    """Commands (spec `operations`, values implicit from 0 = unspec)."""

    ADD_ADDR = 1  # in-kernel PM: add endpoint
    DEL_ADDR = 2  # in-kernel PM: delete endpoint
    GET_ADDR = 3  # do/dump endpoints (dump with TOKEN: a userspace-PM connection's addresses)
    FLUSH_ADDRS = 4
    SET_LIMITS = 5
    GET_LIMITS = 6
    SET_FLAGS = 7  # endpoint flags; with TOKEN: userspace PM, MP_PRIO on one subflow
    ANNOUNCE = 8  # userspace PM: send ADD_ADDR
    REMOVE = 9  # userspace PM: send RM_ADDR
    SUBFLOW_CREATE = 10  # userspace PM: MP_JOIN a new subflow
    SUBFLOW_DESTROY = 11  # userspace PM: close one subflow


class Event(enum.IntEnum):
    """Event types (spec `definitions: event-type`); the name is PMEvent.type, lowercased.
    mptcpd's names in brackets."""

    CREATED = 1  # token, family, saddr, daddr, sport, dport, server-side, [flags] (new_connection)
    ESTABLISHED = 2  # same as CREATED (connection_established)
    CLOSED = 3  # token (connection_closed)
    ANNOUNCED = 6  # token, rem_id, family, daddr [, dport] (new_address)
    REMOVED = 7  # token, rem_id (address_removed)
    SUB_ESTABLISHED = 10  # token, family, loc_id, rem_id, saddr, daddr, sport, dport, backup,
    # if_idx [, error] (new_subflow)
    SUB_CLOSED = 11  # as SUB_ESTABLISHED [, error, reset_reason, reset_flags] (subflow_closed)
    SUB_PRIORITY = 13  # as SUB_ESTABLISHED (subflow_priority)
    LISTENER_CREATED = 15  # family, sport, saddr (listener_created)
    LISTENER_CLOSED = 16  # family, sport, saddr (listener_closed)


class AddrFlag(enum.IntFlag):
    """Endpoint flags, MPTCP_PM_ADDR_ATTR_FLAGS (uapi mptcp.h MPTCP_PM_ADDR_FLAG_*)."""

    SIGNAL = 1 << 0
    SUBFLOW = 1 << 1
    BACKUP = 1 << 2
    FULLMESH = 1 << 3
    IMPLICIT = 1 << 4
    LAMINAR = 1 << 5  # newer kernels (MPTCP_PM_ADDR_FLAGS_MASK = GENMASK(5, 0))


class EventFlag(enum.IntFlag):
    """MPTCP_ATTR_FLAGS in CREATED/ESTABLISHED (uapi mptcp.h MPTCP_PM_EV_FLAG_*)."""

    DENY_JOIN_ID0 = 1 << 0  # peer set the 'C' bit: no new subflow to its initial addr/port
    SERVER_SIDE = 1 << 1  # newer kernels; replaces the MPTCP_ATTR_SERVER_SIDE attribute


class ResetReason(enum.IntEnum):
    """MP_TCPRST reason codes (RFC 8684 3.6; uapi mptcp.h MPTCP_RST_*)."""

    UNSPEC = 0
    MPTCP = 1
    RESOURCE = 2
    PROHIBIT = 3
    WQ2BIG = 4
    BADPERF = 5
    MIDDLEBOX = 6


class pm_addr(mptcp_msg.pm_addr):
    """Nested `address` attribute set. pyroute2 declares IF_IDX as 'hex' and both addresses as
    'ipaddr'; the spec says addr4 be32 (= 4 address bytes), addr6 16 bytes, port u16 in host
    order (the kernel does htons(nla_get_u16())), flags u32, if-idx s32."""

    prefix = "MPTCP_PM_ADDR_ATTR_"
    nla_map = (
        ("MPTCP_PM_ADDR_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ADDR_ATTR_FAMILY", "uint16"),
        ("MPTCP_PM_ADDR_ATTR_ID", "uint8"),
        ("MPTCP_PM_ADDR_ATTR_ADDR4", "ip4addr"),
        ("MPTCP_PM_ADDR_ATTR_ADDR6", "ip6addr"),
        ("MPTCP_PM_ADDR_ATTR_PORT", "uint16"),
        ("MPTCP_PM_ADDR_ATTR_FLAGS", "uint32"),
        ("MPTCP_PM_ADDR_ATTR_IF_IDX", "int32"),
    )


class pm_msg(mptcp_msg):
    """Command messages (spec attribute set `attr`): pyroute2's three plus the userspace-PM
    TOKEN, LOC_ID and ADDR_REMOTE."""

    prefix = "MPTCP_PM_ATTR_"
    nla_map = (
        ("MPTCP_PM_ATTR_UNSPEC", "none"),
        ("MPTCP_PM_ATTR_ADDR", "pm_addr"),
        ("MPTCP_PM_ATTR_RCV_ADD_ADDRS", "uint32"),
        ("MPTCP_PM_ATTR_SUBFLOWS", "uint32"),
        ("MPTCP_PM_ATTR_TOKEN", "uint32"),
        ("MPTCP_PM_ATTR_LOC_ID", "uint8"),
        ("MPTCP_PM_ATTR_ADDR_REMOTE", "pm_addr"),
    )
    pm_addr = pm_addr


class pm_event_msg(genlmsg):
    """Event messages on `mptcp_pm_events` (spec attribute set `event-attr`); genl cmd = Event."""

    prefix = "MPTCP_ATTR_"
    nla_map = (
        ("MPTCP_ATTR_UNSPEC", "none"),
        ("MPTCP_ATTR_TOKEN", "uint32"),
        ("MPTCP_ATTR_FAMILY", "uint16"),
        ("MPTCP_ATTR_LOC_ID", "uint8"),
        ("MPTCP_ATTR_REM_ID", "uint8"),
        ("MPTCP_ATTR_SADDR4", "ip4addr"),  # be32
        ("MPTCP_ATTR_SADDR6", "ip6addr"),  # 16 bytes
        ("MPTCP_ATTR_DADDR4", "ip4addr"),
        ("MPTCP_ATTR_DADDR6", "ip6addr"),
        ("MPTCP_ATTR_SPORT", "be16"),
        ("MPTCP_ATTR_DPORT", "be16"),
        ("MPTCP_ATTR_BACKUP", "uint8"),
        ("MPTCP_ATTR_ERROR", "uint8"),
        ("MPTCP_ATTR_FLAGS", "uint16"),
        ("MPTCP_ATTR_TIMEOUT", "uint32"),
        ("MPTCP_ATTR_IF_IDX", "uint32"),  # spec u32; the kernel puts s32 (same 4 bytes)
        ("MPTCP_ATTR_RESET_REASON", "uint32"),
        ("MPTCP_ATTR_RESET_FLAGS", "uint32"),
        ("MPTCP_ATTR_SERVER_SIDE", "uint8"),
    )


# Expected payload size of each event attribute; anything else is logged and ignored.
_EVENT_ATTR_SIZE = {
    "MPTCP_ATTR_TOKEN": 4, "MPTCP_ATTR_FAMILY": 2, "MPTCP_ATTR_LOC_ID": 1,
    "MPTCP_ATTR_REM_ID": 1, "MPTCP_ATTR_SADDR4": 4, "MPTCP_ATTR_SADDR6": 16,
    "MPTCP_ATTR_DADDR4": 4, "MPTCP_ATTR_DADDR6": 16, "MPTCP_ATTR_SPORT": 2,
    "MPTCP_ATTR_DPORT": 2, "MPTCP_ATTR_BACKUP": 1, "MPTCP_ATTR_ERROR": 1,
    "MPTCP_ATTR_FLAGS": 2, "MPTCP_ATTR_TIMEOUT": 4, "MPTCP_ATTR_IF_IDX": 4,
    "MPTCP_ATTR_RESET_REASON": 4, "MPTCP_ATTR_RESET_FLAGS": 4, "MPTCP_ATTR_SERVER_SIDE": 1,
}


class PMError(MptcpctlError):
    """The kernel refused a path-manager command: errno plus its extended-ack text, if any."""

    def __init__(self, cmd: str, errno_: int, kernel_msg: str | None = None):
        self.cmd = cmd
        self.errno = errno_
        self.kernel_msg = kernel_msg
        text = f"mptcp_pm {cmd} failed: {os.strerror(errno_)} (errno {errno_})"
        if kernel_msg:
            text += f": {kernel_msg}"
        super().__init__(text)


# ---------------------------------------------------------------------------------------------
# Message builders (pure: the unit tests encode exactly what the client sends)


def _addr_attrs(addr: str | None = None, id: int | None = None, port: int | None = None,
                flags: int | None = None, ifindex: int | None = None) -> dict:
    """A nested `address` attribute value; the family follows from `addr`."""
    attrs = []
    if addr is not None:
        ip = ipaddress.ip_address(addr)
        if ip.version == 4:
            attrs += [("MPTCP_PM_ADDR_ATTR_FAMILY", AF_INET), ("MPTCP_PM_ADDR_ATTR_ADDR4", str(ip))]
        else:
            attrs += [("MPTCP_PM_ADDR_ATTR_FAMILY", AF_INET6),
                      ("MPTCP_PM_ADDR_ATTR_ADDR6", str(ip))]
    if id is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_ID", int(id)))
    if port is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_PORT", int(port)))
    if flags is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_FLAGS", int(flags)))
    if ifindex is not None:
        attrs.append(("MPTCP_PM_ADDR_ATTR_IF_IDX", int(ifindex)))
    return {"attrs": attrs}


def _msg(cmd: Cmd, attrs: list) -> pm_msg:
    msg = pm_msg()
    msg["cmd"] = int(cmd)
    msg["version"] = MPTCP_PM_VER
    msg["attrs"] = attrs
    return msg


def _nested(name: str, value: dict) -> tuple:
    return (name, value, 0x8000)  # NLA_F_NESTED, as pyroute2's own MPTCP endpoint() does


def build_announce(token: int, addr: str, id: int, port: int | None = None,
                   ifindex: int | None = None, flags: int = AddrFlag.SIGNAL) -> pm_msg:
    """ANNOUNCE: token + addr (family, addr, id != 0, flags must include SIGNAL)."""
    return _msg(Cmd.ANNOUNCE, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        _nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(addr, id, port, flags, ifindex)),
    ])


def build_remove(token: int, loc_id: int) -> pm_msg:
    """REMOVE: token + loc-id (policy: u32, u8)."""
    return _msg(Cmd.REMOVE, [("MPTCP_PM_ATTR_TOKEN", token), ("MPTCP_PM_ATTR_LOC_ID", loc_id)])


def build_subflow_create(token: int, local_addr: str, local_id: int | None, remote_addr: str,
                         remote_port: int, ifindex: int | None = None,
                         backup: bool = False) -> pm_msg:
    """SUBFLOW_CREATE: token + addr (local: family, addr, id, [if-idx], [flags=backup]) +
    addr-remote (family, addr, port)."""
    flags = int(AddrFlag.BACKUP) if backup else None
    return _msg(Cmd.SUBFLOW_CREATE, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        _nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(local_addr, local_id, None, flags, ifindex)),
        _nested("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attrs(remote_addr, port=remote_port)),
    ])


def build_subflow_destroy(token: int, local_addr: str, local_port: int, remote_addr: str,
                          remote_port: int) -> pm_msg:
    """SUBFLOW_DESTROY: token + addr (family, addr, port) + addr-remote (family, addr, port)."""
    return _msg(Cmd.SUBFLOW_DESTROY, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        _nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(local_addr, port=local_port)),
        _nested("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attrs(remote_addr, port=remote_port)),
    ])


def build_set_flags(token: int, local_addr: str, local_port: int | None, remote_addr: str,
                    remote_port: int | None, backup: bool) -> pm_msg:
    """SET_FLAGS with TOKEN (userspace PM): addr (local + flags, BACKUP or 0) + addr-remote;
    the kernel sends MP_PRIO on the matching subflow."""
    flags = int(AddrFlag.BACKUP) if backup else 0
    return _msg(Cmd.SET_FLAGS, [
        ("MPTCP_PM_ATTR_TOKEN", token),
        _nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(local_addr, port=local_port, flags=flags)),
        _nested("MPTCP_PM_ATTR_ADDR_REMOTE", _addr_attrs(remote_addr, port=remote_port)),
    ])


def build_get_limits() -> pm_msg:
    return _msg(Cmd.GET_LIMITS, [])


def build_set_limits(subflows: int | None = None, add_addr_accepted: int | None = None) -> pm_msg:
    """SET_LIMITS: rcv-add-addrs and/or subflows (u32 each)."""
    attrs = []
    if add_addr_accepted is not None:
        attrs.append(("MPTCP_PM_ATTR_RCV_ADD_ADDRS", add_addr_accepted))
    if subflows is not None:
        attrs.append(("MPTCP_PM_ATTR_SUBFLOWS", subflows))
    return _msg(Cmd.SET_LIMITS, attrs)


def build_get_addr(token: int | None = None) -> pm_msg:
    """GET_ADDR dump; with a token, the userspace PM's addresses of that connection."""
    return _msg(Cmd.GET_ADDR, [("MPTCP_PM_ATTR_TOKEN", token)] if token is not None else [])


def build_add_addr(addr: str, id: int | None = None, flags: int = AddrFlag.SUBFLOW,
                   port: int | None = None, ifindex: int | None = None) -> pm_msg:
    """ADD_ADDR (in-kernel PM endpoint)."""
    return _msg(Cmd.ADD_ADDR, [
        _nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(addr, id, port, flags, ifindex)),
    ])


def build_del_addr(id: int, addr: str | None = None) -> pm_msg:
    """DEL_ADDR (in-kernel PM endpoint) by id (id 0 needs the address)."""
    return _msg(Cmd.DEL_ADDR, [_nested("MPTCP_PM_ATTR_ADDR", _addr_attrs(addr, id))])


def build_flush_addrs() -> pm_msg:
    return _msg(Cmd.FLUSH_ADDRS, [_nested("MPTCP_PM_ATTR_ADDR", {"attrs": []})])


# ---------------------------------------------------------------------------------------------
# Replies and events as plain data


@dataclass(frozen=True)
class Endpoint:
    """One address known to the path manager (GET_ADDR reply)."""

    id: int | None
    addr: str | None
    port: int | None
    flags: AddrFlag
    ifindex: int | None

    @classmethod
    def from_nla(cls, nla) -> "Endpoint":
        def get(name):
            return nla.get_attr("MPTCP_PM_ADDR_ATTR_" + name)

        return cls(id=get("ID"), addr=get("ADDR4") or get("ADDR6"), port=get("PORT"),
                   flags=AddrFlag(get("FLAGS") or 0), ifindex=get("IF_IDX"))


@dataclass(frozen=True)
class Limits:
    subflows: int | None
    add_addr_accepted: int | None


@dataclass(frozen=True)
class PMEvent:
    """One `mptcp_pm_events` message. `type` is the lowercased Event name ("created",
    "sub_established", ...); attributes the kernel did not send are None."""

    type: str
    token: int | None = None
    family: int | None = None
    saddr: str | None = None
    daddr: str | None = None
    sport: int | None = None
    dport: int | None = None
    loc_id: int | None = None
    rem_id: int | None = None
    backup: bool | None = None
    error: int | None = None
    flags: EventFlag | None = None
    timeout: int | None = None
    if_idx: int | None = None
    reset_reason: ResetReason | int | None = None
    reset_flags: int | None = None
    server_side: bool | None = None
    unknown_attrs: tuple = field(default=(), compare=False)

    @property
    def deny_join_id0(self) -> bool | None:
        return None if self.flags is None else EventFlag.DENY_JOIN_ID0 in self.flags


def _event_from_msg(msg) -> PMEvent | None:
    """PMEvent from a decoded pm_event_msg; None (logged) for unknown event types."""
    cmd = msg["cmd"]
    try:
        etype = Event(cmd)
    except ValueError:
        log.info("mptcp_pm: skipping unknown event type %d", cmd)
        return None
    values: dict = {}
    unknown = []
    for slot in msg["attrs"]:
        name = slot.name
        size = _EVENT_ATTR_SIZE.get(name)
        if size is None:
            log.info("mptcp_pm: %s event: skipping unknown attribute %s", etype.name, name)
            unknown.append(name)
            continue
        payload = slot.cell[1].length - 4  # nla header is 4 bytes
        value = slot.get_value() if payload >= size else None
        # An attribute whose length runs past its message comes back as raw bytes.
        want = str if name.endswith(("ADDR4", "ADDR6")) else int
        if (payload < size or (size < 16 and payload != size) or value is None
                or not isinstance(value, want)):
            log.warning("mptcp_pm: %s event: %s has %d bytes, want %d; ignored",
                        etype.name, name, payload, size)
            continue
        values[name[len("MPTCP_ATTR_"):].lower()] = value
    flags = values.get("flags")
    server_side = values.get("server_side")
    if flags is None and etype in (Event.CREATED, Event.ESTABLISHED):
        # The kernel puts FLAGS only when non-zero; kernels >= 6.18 dropped SERVER_SIDE for
        # the FLAGS bit, older ones always send SERVER_SIDE. Absent both: client side.
        flags = 0
    if flags is not None:
        flags = EventFlag(flags)
        if server_side is None:
            server_side = EventFlag.SERVER_SIDE in flags
    reason = values.get("reset_reason")
    if reason is not None and reason in ResetReason._value2member_map_:
        reason = ResetReason(reason)
    return PMEvent(
        type=etype.name.lower(),
        token=values.get("token"),
        family=values.get("family"),
        saddr=values.get("saddr4", values.get("saddr6")),
        daddr=values.get("daddr4", values.get("daddr6")),
        sport=values.get("sport"),
        dport=values.get("dport"),
        loc_id=values.get("loc_id"),
        rem_id=values.get("rem_id"),
        backup=None if "backup" not in values else bool(values["backup"]),
        error=values.get("error"),
        flags=flags,
        timeout=values.get("timeout"),
        if_idx=values.get("if_idx"),
        reset_reason=reason,
        reset_flags=values.get("reset_flags"),
        server_side=None if server_side is None else bool(server_side),
        unknown_attrs=tuple(unknown),
    )


class _EventMarshal(Marshal):
    """Parses every generic netlink message in a buffer as a pm_event_msg (family ids are
    assigned at boot, so recorded messages may carry another id than this kernel's)."""

    default_message_class = pm_event_msg


def _whole_messages(data: bytes) -> tuple[bytes, bool]:
    """The netlink messages at the front of `data` whose headers fit and whose lengths stay
    inside it, and whether anything after them was cut short (logged). pyroute2's Marshal
    checks a length against the whole buffer only, so it would drop or half-decode the rest."""
    off = 0
    while off < len(data):
        # nlmsg_len, or None when not even the 16-byte nlmsghdr fits
        length = struct.unpack_from("=I", data, off)[0] if off + 16 <= len(data) else None
        if length is None or not 16 <= length <= len(data) - off:
            log.warning("mptcp_pm: undecodable event: truncated message at byte %d of %d "
                        "(nlmsg_len %s)", off, len(data), length)
            return data[:off], True
        off += length  # as Marshal.parse steps
    return data, False


def decode_event_buffer(data: bytes) -> tuple[list[PMEvent], bool]:
    """PMEvents from a buffer of netlink messages as read from the events socket, and whether
    events were lost to a truncated or undecodable buffer (the caller then resyncs, as on
    ENOBUFS). Unknown event types, unknown or malformed attributes and undecodable messages are
    logged and skipped."""
    events: list[PMEvent] = []
    data, lost = _whole_messages(data)
    try:
        msgs = list(_EventMarshal().parse(data))
    except Exception as exc:  # a malformed buffer must not kill the reader
        log.warning("mptcp_pm: undecodable event buffer (%d bytes): %s", len(data), exc)
        return events, True
    for msg in msgs:
        if msg["header"].get("type", 0) < GENL_MIN_ID:
            continue
        if msg["header"].get("error") is not None:
            log.warning("mptcp_pm: undecodable event: %s", msg["header"]["error"])
            continue
        try:
            ev = _event_from_msg(msg)
        except Exception as exc:
            log.warning("mptcp_pm: undecodable event: %s", exc)
            continue
        if ev is not None:
            events.append(ev)
    return events, lost


def decode_events(data: bytes) -> list[PMEvent]:
    """decode_event_buffer's events, for readers that do not resync."""
    return decode_event_buffer(data)[0]


# ---------------------------------------------------------------------------------------------
# Sockets


def _netlink_socket(netns: str | None) -> socket.socket:
    """A NETLINK_GENERIC socket created inside `netns` (it stays bound to that namespace)."""
    with netnsmod.entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_GENERIC)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    return sock


def _missing_family(exc: Exception) -> MissingFeature:
    return MissingFeature(f"kernel has no generic netlink family {MPTCP_PM_NAME!r} "
                          f"(MPTCP disabled or too old): {exc}")


class AsyncMptcpPM(AsyncGenericNetlinkSocket):
    """Async core: bound to `mptcp_pm` with pm_msg; every request returns a list of replies
    and raises PMError on a kernel error."""

    async def setup_endpoint(self):
        if getattr(self.local, "transport", None) is not None:
            return
        await super().setup_endpoint()
        await self.bind(MPTCP_PM_NAME, pm_msg)

    async def request(self, msg: pm_msg, dump: bool = False) -> list:
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        cmd = Cmd(msg["cmd"]).name
        try:
            return [m async for m in await self.nlm_request(msg, msg_type=self.prid,
                                                            msg_flags=flags)]
        except NetlinkError as exc:
            raise PMError(cmd, exc.code, _extack_text(exc)) from exc


def _extack_text(exc: NetlinkError) -> str | None:
    """The kernel's NLMSGERR_ATTR_MSG, which pyroute2 puts in args[1] (else strerror)."""
    text = exc.args[1] if len(exc.args) > 1 else None
    if not text or text == os.strerror(exc.code):
        return None
    return str(text)


class MptcpPM(GenericNetlinkSocket):
    """Sync client for `mptcp_pm` in one network namespace (None: ours). The netlink socket is
    made inside that namespace once (pyroute2 never re-creates it elsewhere); use one client
    per thread.

    Usage::

        with MptcpPM(netns="cli-x") as pm:
            pm.subflow_create(token, "10.82.2.1", 2, "10.82.0.2", 5201)
    """

    async_class = AsyncMptcpPM

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._sock = _netlink_socket(netns)
        try:
            super().__init__(use_socket=self._sock)
        except NetlinkError as exc:
            self._sock.close()
            raise _missing_family(exc) from exc
        except Exception:
            self._sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self, code=None):
        try:
            super().close()
        finally:
            self._sock.close()

    def _request(self, msg: pm_msg, dump: bool = False) -> list:
        return list(self._run_with_cleanup(self.asyncore.request, msg, dump))

    # --- userspace path manager (the connection's token selects the MPTCP socket)

    def announce(self, token: int, addr: str, id: int, port: int | None = None,
                 ifindex: int | None = None, flags: int = AddrFlag.SIGNAL) -> None:
        """Send ADD_ADDR for `addr` (local address id `id`, 1..255) on connection `token`."""
        self._request(build_announce(token, addr, id, port, ifindex, flags))

    def remove(self, token: int, loc_id: int) -> None:
        """Send RM_ADDR for local address id `loc_id` (closing subflows using it)."""
        self._request(build_remove(token, loc_id))

    def subflow_create(self, token: int, local_addr: str, local_id: int | None,
                       remote_addr: str, remote_port: int, ifindex: int | None = None,
                       backup: bool = False) -> None:
        """Open a new subflow (MP_JOIN) from local_addr/local_id to remote_addr:remote_port."""
        self._request(build_subflow_create(token, local_addr, local_id, remote_addr,
                                           remote_port, ifindex, backup))

    def subflow_destroy(self, token: int, local_addr: str, local_port: int, remote_addr: str,
                        remote_port: int) -> None:
        """Close the subflow with this 4-tuple."""
        self._request(build_subflow_destroy(token, local_addr, local_port, remote_addr,
                                            remote_port))

    def set_flags(self, token: int, local_addr: str, local_port: int | None, remote_addr: str,
                  remote_port: int | None, backup: bool) -> None:
        """Mark the subflow backup or not (MP_PRIO to the peer)."""
        self._request(build_set_flags(token, local_addr, local_port, remote_addr, remote_port,
                                      backup))

    def addresses(self, token: int) -> list[Endpoint]:
        """The userspace PM's local addresses announced on connection `token`."""
        return [Endpoint.from_nla(m.get_attr("MPTCP_PM_ATTR_ADDR"))
                for m in self._request(build_get_addr(token), dump=True)
                if m.get_attr("MPTCP_PM_ATTR_ADDR") is not None]

    # --- in-kernel path manager: limits and endpoints

    def get_limits(self) -> Limits:
        (reply,) = [m for m in self._request(build_get_limits()) if m.get("cmd") is not None]
        return Limits(subflows=reply.get_attr("MPTCP_PM_ATTR_SUBFLOWS"),
                      add_addr_accepted=reply.get_attr("MPTCP_PM_ATTR_RCV_ADD_ADDRS"))

    def set_limits(self, subflows: int | None = None,
                   add_addr_accepted: int | None = None) -> None:
        self._request(build_set_limits(subflows, add_addr_accepted))

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint.from_nla(m.get_attr("MPTCP_PM_ATTR_ADDR"))
                for m in self._request(build_get_addr(), dump=True)
                if m.get_attr("MPTCP_PM_ATTR_ADDR") is not None]

    def add_endpoint(self, addr: str, id: int | None = None, flags: int = AddrFlag.SUBFLOW,
                     port: int | None = None, ifindex: int | None = None) -> None:
        self._request(build_add_addr(addr, id, flags, port, ifindex))

    def del_endpoint(self, id: int, addr: str | None = None) -> None:
        self._request(build_del_addr(id, addr))

    def flush_endpoints(self) -> None:
        self._request(build_flush_addrs())


def _family_ids(sock: socket.socket) -> tuple[int, int]:
    """(family id, events group id) of mptcp_pm, resolved over `sock`'s namespace."""
    probe = GenericNetlinkSocket(use_socket=sock)
    try:
        probe.bind(MPTCP_PM_NAME, pm_event_msg)
        return probe.prid, probe.mcast_groups[MPTCP_PM_EV_GRP_NAME]
    except NetlinkError as exc:
        raise _missing_family(exc) from exc
    except KeyError as exc:
        raise MissingFeature(f"{MPTCP_PM_NAME} has no {MPTCP_PM_EV_GRP_NAME} group") from exc
    finally:
        probe.close()


class PMEvents:
    """Subscriber to `mptcp_pm_events` in one namespace: fileno() for select/asyncio
    add_reader, read() for the events waiting (blocking only if told to)."""

    RECV_SIZE = 65536
    # Kernel buffer for bursts (2,000 connections closing at once are ~1.7 MB of events).
    RCVBUF = 32 << 20

    def __init__(self, netns: str | None = None):
        self.overflowed = False  # events were lost since the caller last cleared this
        self.netns = netns
        with _netlink_socket(netns) as probe_sock:
            self.family_id, self.group_id = _family_ids(probe_sock)
        self._sock = _netlink_socket(netns)
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, self.group_id)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root) first
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, opt, self.RCVBUF)
                break
            except OSError:
                continue

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout: float | None = 0) -> list[PMEvent]:
        """Events received so far; wait up to `timeout` seconds (None: forever) for the first."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        events: list[PMEvent] = []
        while ready:
            try:
                data, _, msg_flags, _ = self._sock.recvmsg(self.RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: the kernel dropped events; say so and go on
                log.warning("mptcp_pm: event socket: %s", exc)
                self.overflowed = True
                break
            if msg_flags & socket.MSG_TRUNC:  # the datagram was longer than RECV_SIZE
                log.warning("mptcp_pm: undecodable event: datagram truncated to %d bytes",
                            len(data))
                self.overflowed = True
            decoded, lost = decode_event_buffer(data)
            events += decoded
            self.overflowed |= lost
        return events

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def events(netns: str | None = None) -> Iterator[PMEvent]:
    """Every path-manager event in `netns`, as it happens (blocks; close the generator to
    stop)."""
    with PMEvents(netns) as sub:
        while True:
            yield from sub.read(timeout=None)
