"""rtnetlink monitor for one network namespace: which local addresses the path manager may use
now (snapshot), and what changed since the last look (read), decoded with pyroute2's rtnl
message classes."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .errors import MptcpctlError
from .model import LocalAddr
from .netns import entered

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


@dataclass(frozen=True)
class NetChange:
    """One decoded rtnetlink event. `addr`: the address (addr events) or "prefix/len" or
    "default" (route events); None for link events. `family`: 4, 6, or None for links.
    kind "overrun": the kernel dropped events (socket buffer full); take a new snapshot()."""

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


def addr_flags(msg) -> int:
    """IFA_FLAGS (32 bits) when present, else the 8-bit header flags."""
    flags = msg.get_attr("IFA_FLAGS")
    return msg["flags"] if flags is None else flags


def addr_of(msg) -> str | None:
    """The local address of an ifaddrmsg (IFA_LOCAL on point-to-point links, else IFA_ADDRESS)."""
    return msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")


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
    if oif:
        return [oif]
    return [hop["oif"] for hop in (msg.get_attr("RTA_MULTIPATH") or []) if hop.get("oif")]


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
    net = ipaddress.ip_network(f"{src}/{rule['src_len']}", strict=False)
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
        self.marshal = MarshalRtnl()
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
            self.links[msg["index"]] = (msg.get_attr("IFLA_IFNAME"), link_is_up(msg))

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
            name = msg.get_attr("IFLA_IFNAME")
            if msg["flags"] & IFF_LOOPBACK or (selected_only and not self.selected(name)):
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
            ifname = link.get_attr("IFLA_IFNAME")
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
            for msg in self.marshal.parse(data):
                changes.extend(self.decode(msg))
        return changes

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
        name = msg.get_attr("IFLA_IFNAME") or self._name(index)
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
