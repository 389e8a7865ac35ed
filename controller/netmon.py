"""rtnetlink monitor for one network namespace: which local addresses the path manager may use
now (snapshot), and what changed since the last look (read), decoded with pyroute2's rtnl
message classes."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import nh, rtmsg

from .errors import MptcpctlError
from .model import LocalAddr
from .netns import entered

log = logging.getLogger("mptcpctl")

# the multicast groups we listen to: links, addresses and routes of both families
GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
# room for a burst of events (e.g. an interface with many addresses going away); root may force it
RCVBUF = 4 << 20

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_UNIVERSE = 0
RT_TABLE_LOCAL = 255   # local and broadcast routes of our own addresses: not a way out
FR_ACT_TO_TBL = 1      # an ip rule that looks up a table
# operstates (RFC 2863) in which an interface can carry traffic; UNKNOWN: the driver does not
# report carrier (tun, some virtual devices), so trust IFF_UP
OPER_USABLE = ("UP", "UNKNOWN")
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}

KINDS = ("addr_added", "addr_removed", "link_up", "link_down", "route_added", "route_removed",
         "link_added", "link_removed", "overrun")


def _without_encap(nla_map) -> tuple:
    return tuple(("RTA_ENCAP", "hex") if nla[0] == "RTA_ENCAP" else nla for nla in nla_map)


class nexthop(nh):
    """A multipath route's nexthop, RTA_ENCAP left undecoded (see route_msg)."""

    nla_map = _without_encap(nh.nla_map)


class route_msg(rtmsg):
    """rtmsg with RTA_ENCAP left undecoded. Without an RTA_ENCAP_TYPE before it, pyroute2's
    encap_info looks for one by stepping over unpadded attribute lengths, and loops forever
    once it steps onto padding (an RTA_ENCAP, then a u8 attribute). We need no encapsulation."""

    nla_map = _without_encap(rtmsg.nla_map)

    @staticmethod
    def get_nh(self, *argv, **kwarg):
        return nexthop


# pyroute2 compiles a class's attribute table on first use, and a subclass created after its
# parent's was compiled would inherit the parent's: compile ours now.
for _cls in (nexthop, route_msg):
    _cls().compile_nla_table()


class EventMarshal(MarshalRtnl):
    """pyroute2's rtnetlink marshal, with routes decoded as route_msg."""

    msg_map = {**MarshalRtnl.msg_map, RTM_NEWROUTE: route_msg, RTM_DELROUTE: route_msg}


@dataclass(frozen=True)
class NetChange:
    """One decoded rtnetlink event. `addr`: the address (addr events) or "prefix/len" or
    "default" (route events); None for link events. `family`: 4, 6, or None for links.
    kind "overrun": events were lost (the socket buffer was full, or a message could not be
    decoded); take a new snapshot()."""

    kind: str
    ifname: str | None
    ifindex: int
    addr: str | None = None
    family: int | None = None


def link_is_up(msg) -> bool:
    """IFF_UP set and the operational state can carry traffic (carrier, or no carrier notion)."""
    if not msg["flags"] & IFF_UP:
        return False
    oper = msg.get_attr("IFLA_OPERSTATE")
    if oper is None:
        return bool(msg["flags"] & IFF_RUNNING)
    return oper in OPER_USABLE


def ifname_of(msg) -> str | None:
    """A link's IFLA_IFNAME; None if missing or undecodable (pyroute2 then hands back bytes)."""
    name = msg.get_attr("IFLA_IFNAME")
    return name if isinstance(name, str) else None


def addr_flags(msg) -> int:
    """IFA_FLAGS (32 bits) when present, else the 8-bit header flags."""
    flags = msg.get_attr("IFA_FLAGS")
    return flags if isinstance(flags, int) else msg["flags"]


def addr_of(msg) -> str | None:
    """The local address of an ifaddrmsg (IFA_LOCAL on point-to-point links, else IFA_ADDRESS);
    None if missing or not an address of the message's family (pyroute2 hands back the bytes
    of an attribute it cannot decode)."""
    addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    try:
        ip = ipaddress.ip_address(addr) if isinstance(addr, str) else None
    except ValueError:
        return None
    return str(ip) if ip is not None and ip.version == FAMILIES.get(msg["family"]) else None


def addr_is_usable(msg) -> bool:
    """Global scope, and for IPv6 not link-local, not tentative (DAD running), not DAD-failed."""
    addr = addr_of(msg)
    if addr is None or msg["family"] not in FAMILIES or msg["scope"] != RT_SCOPE_UNIVERSE:
        return False
    if msg["family"] == socket.AF_INET6:
        if ipaddress.ip_address(addr).is_link_local:
            return False
        if addr_flags(msg) & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            return False
    return True


def table_of(msg) -> int:
    """A route's or rule's table id (the attribute holds ids above 255)."""
    attr = "FRA_TABLE" if msg.get_attr("FRA_TABLE") is not None else "RTA_TABLE"
    table = msg.get_attr(attr)
    return msg["table"] if table is None else table


def route_oifs(msg) -> list[int]:
    """Output interfaces of a route: RTA_OIF, or each nexthop's of a multipath route."""
    oif = msg.get_attr("RTA_OIF")
    if isinstance(oif, int) and oif:   # (an empty one decodes as bytes)
        return [oif]
    hops = msg.get_attr("RTA_MULTIPATH")
    if not isinstance(hops, list):
        return []  # none, or the bytes of one pyroute2 could not decode
    return [hop["oif"] for hop in hops if hop.get("oif")]


def route_dst(msg) -> str:
    dst = msg.get_attr("RTA_DST")
    if dst is None or msg["dst_len"] == 0:
        return "default"
    return f"{dst}/{msg['dst_len']}"


def is_default(msg) -> bool:
    return msg["dst_len"] == 0 and msg["type"] == 1  # RTN_UNICAST


def rule_covers(rule, addr: str) -> bool:
    """An `ip rule [from PREFIX] lookup TABLE` applies to traffic from `addr`."""
    if rule["action"] != FR_ACT_TO_TBL:
        return False
    src = rule.get_attr("FRA_SRC")
    if src is None or rule["src_len"] == 0:
        return True
    try:
        net = ipaddress.ip_network(f"{src}/{rule['src_len']}", strict=False)
    except ValueError:
        return False   # not a prefix (undecodable, or longer than the address)
    return ipaddress.ip_address(addr) in net


def is_routable(addr: str, ifindex: int, family: int, routes, rules) -> bool:
    """Whether traffic from `addr` (on `ifindex`) has a way out. Deliberately simple:
    - any non-local route through the address's interface (e.g. its connected prefix), or
    - a default route in a table that an ip rule covering `addr` points to (`from all` rules
      included, so the main table's default route counts).
    It does not follow rule priorities or other selectors (fwmark, iif, ...)."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    routes = [r for r in routes if r["family"] == fam and table_of(r) != RT_TABLE_LOCAL]
    if any(ifindex in route_oifs(r) for r in routes):
        return True
    tables = {table_of(r) for r in rules if r["family"] == fam and rule_covers(r, addr)}
    if not any(r["family"] == fam for r in rules):
        tables = {254}  # no rules dumped: assume the main table only
    return any(is_default(r) and table_of(r) in tables for r in routes)


class NetMonitor:
    """Watches links, addresses and routes in netns `netns` (None: the current one).
    `ifaces`: the interfaces we manage (None: all but loopback); `exclude`: never these.
    Register fileno() with the event loop and call read() when it is readable."""

    def __init__(self, netns: str | None = None, ifaces: list[str] | None = None,
                 exclude: list[str] = ()):
        self.netns = netns
        self.ifaces = None if ifaces is None else set(ifaces)
        self.exclude = set(exclude)
        self.marshal = EventMarshal()
        # both sockets are created in the namespace and stay bound to it
        with entered(netns):
            # events: a plain non-blocking netlink socket, decoded with pyroute2's marshal, so
            # readiness of fileno() is exact (pyroute2's own reader would buffer messages in
            # its queues where select() cannot see them)
            self.events = socket.socket(socket.AF_NETLINK,
                                        socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                        | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            try:
                self._grow_rcvbuf()
                self.events.bind((0, GROUPS))
                # dumps (snapshot, interfaces): a separate request socket
                self.ipr = IPRoute()
            except BaseException:
                self.events.close()
                raise
        # ifindex -> (ifname, up); events after the subscription above update it, so nothing
        # between subscribing and this dump is lost
        self.links: dict[int, tuple[str, bool]] = {}
        self._load_links()

    def _grow_rcvbuf(self) -> None:
        try:
            self.events.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)

    def _load_links(self) -> None:
        self.links = {}
        for msg in self.ipr.get_links():
            self.links[msg["index"]] = (ifname_of(msg), link_is_up(msg))

    def fileno(self) -> int:
        return self.events.fileno()

    def close(self) -> None:
        self.events.close()
        self.ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def selected(self, ifname: str | None) -> bool:
        """Whether we manage this interface (by the ifaces/exclude configuration)."""
        if ifname is None or ifname in self.exclude:
            return False
        return self.ifaces is None or ifname in self.ifaces

    # --- state now ------------------------------------------------------------------------

    def interfaces(self, selected_only: bool = True) -> list[tuple[str, int, bool]]:
        """(ifname, ifindex, up) of every non-loopback interface (only managed ones unless
        selected_only=False), for attaching the datapath to interfaces as they come up."""
        out = []
        for msg in self.ipr.get_links():
            name = ifname_of(msg)
            if (name is None or msg["flags"] & IFF_LOOPBACK
                    or (selected_only and not self.selected(name))):
                continue
            out.append((name, msg["index"], link_is_up(msg)))
        return out

    def snapshot(self) -> dict[str, LocalAddr]:
        """Usable local addresses now, by address: on an up, managed, non-loopback interface,
        global scope, not link-local/tentative/DAD-failed. `routable`: see is_routable()."""
        links = {m["index"]: m for m in self.ipr.get_links()}
        routes = list(self.ipr.get_routes())
        try:
            rules = list(self.ipr.get_rules(family=socket.AF_INET))
            rules += list(self.ipr.get_rules(family=socket.AF_INET6))
        except Exception:  # noqa: BLE001 - kernels without policy routing: main table only
            rules = []
        out: dict[str, LocalAddr] = {}
        for msg in self.ipr.get_addr():
            link = links.get(msg["index"])
            if link is None or link["flags"] & IFF_LOOPBACK or not link_is_up(link):
                continue
            ifname = ifname_of(link)
            if not self.selected(ifname) or not addr_is_usable(msg):
                continue
            addr = str(ipaddress.ip_address(addr_of(msg)))
            family = FAMILIES[msg["family"]]
            out[addr] = LocalAddr(addr=addr, ifname=ifname, ifindex=msg["index"], family=family,
                                  routable=is_routable(addr, msg["index"], family, routes, rules))
        return out

    # --- changes --------------------------------------------------------------------------

    def read(self) -> list[NetChange]:
        """Decode every event received since the last call; never blocks."""
        changes: list[NetChange] = []
        while True:
            try:
                data = self.events.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise MptcpctlError(f"rtnetlink monitor: {exc.strerror}") from exc
                # events were lost: resynchronise the link table and tell the caller
                self._load_links()
                changes.append(NetChange("overrun", None, 0))
                continue
            if not data:
                break
            changes.extend(self.decode_buffer(data))
        return changes

    def decode_buffer(self, data: bytes) -> list[NetChange]:
        """The changes in one buffer read from the events socket. A buffer or a message that
        cannot be decoded is logged and skipped, and reported as an "overrun" (a lost event:
        the caller takes a new snapshot)."""
        try:
            msgs = list(self.marshal.parse(data))
        except Exception as exc:  # a malformed buffer must not kill the monitor
            log.warning("rtnetlink monitor: undecodable buffer (%d bytes): %s", len(data), exc)
            return [NetChange("overrun", None, 0)]
        changes: list[NetChange] = []
        lost = False
        for msg in msgs:
            error = msg["header"].get("error")   # pyroute2's, for a message it gave up on
            if error is None:
                try:
                    changes.extend(self.decode(msg))
                except Exception as exc:  # one bad message must not cost the others
                    error = exc
            if error is not None:
                log.warning("rtnetlink monitor: undecodable %s: %s", msg.get("event"), error)
                lost = True
        return changes + ([NetChange("overrun", None, 0)] if lost else [])

    def decode(self, msg) -> list[NetChange]:
        """The changes one rtnetlink message means (and update the link table)."""
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            return self._decode_link(msg, event)
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            if msg["family"] not in FAMILIES or addr_of(msg) is None:
                return []
            kind = "addr_added" if event == "RTM_NEWADDR" else "addr_removed"
            addr = str(ipaddress.ip_address(addr_of(msg)))
            return [NetChange(kind, self._name(msg["index"]), msg["index"], addr,
                              FAMILIES[msg["family"]])]
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            if msg["family"] not in FAMILIES or table_of(msg) == RT_TABLE_LOCAL:
                return []
            kind = "route_added" if event == "RTM_NEWROUTE" else "route_removed"
            oifs = route_oifs(msg)
            ifindex = oifs[0] if oifs else 0
            return [NetChange(kind, self._name(ifindex), ifindex, route_dst(msg),
                              FAMILIES[msg["family"]])]
        return []

    def _name(self, ifindex: int) -> str | None:
        return self.links.get(ifindex, (None, False))[0]

    def _decode_link(self, msg, event: str) -> list[NetChange]:
        index = msg["index"]
        name = ifname_of(msg) or self._name(index)
        if event == "RTM_DELLINK":
            self.links.pop(index, None)
            return [NetChange("link_removed", name, index)]
        up = link_is_up(msg)
        known = self.links.get(index)
        self.links[index] = (name, up)
        if known is None:
            return [NetChange("link_added", name, index)] + (
                [NetChange("link_up", name, index)] if up else [])
        if up != known[1]:
            return [NetChange("link_up" if up else "link_down", name, index)]
        return []
