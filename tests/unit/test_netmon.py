"""Decoding rtnetlink events and judging addresses (controller/netmon.py), without root: the
messages are built with pyroute2's classes, encoded, and parsed back as the kernel's would be."""

import socket

from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from controller import netmon
from controller.netmon import NetChange, NetMonitor


def wire(msg, msg_type):
    """Encode as the kernel would send it, and parse back with the monitor's marshal."""
    msg["header"]["type"] = msg_type
    msg.encode()
    return list(MarshalRtnl().parse(msg.data))[0]


def link(index, name, up=True, oper="UP", msg_type=RTM_NEWLINK):
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = (netmon.IFF_UP | netmon.IFF_RUNNING) if up else 0
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_OPERSTATE", oper)]
    return wire(msg, msg_type)


def addr(index, address, family=socket.AF_INET, scope=0, flags=0, msg_type=RTM_NEWADDR):
    msg = ifaddrmsg()
    msg["family"], msg["index"], msg["scope"] = family, index, scope
    msg["prefixlen"] = 24 if family == socket.AF_INET else 64
    msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)]
    return wire(msg, msg_type)


def route(dst, dst_len, oif, table=254, family=socket.AF_INET, msg_type=RTM_NEWROUTE):
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = family, dst_len, table, 1
    attrs = [("RTA_TABLE", table), ("RTA_OIF", oif)]
    if dst_len:
        attrs.append(("RTA_DST", dst))
    msg["attrs"] = attrs
    return wire(msg, msg_type)


def monitor(links=None):
    """A NetMonitor without sockets: decode() only needs the link table."""
    mon = NetMonitor.__new__(NetMonitor)
    mon.links = dict(links or {})
    return mon


def test_new_interface_is_added_then_goes_down_and_away():
    mon = monitor()
    assert mon.decode(link(3, "veth0")) == [NetChange("link_added", "veth0", 3),
                                            NetChange("link_up", "veth0", 3)]
    assert mon.decode(link(3, "veth0")) == []   # same state again: nothing new
    assert mon.decode(link(3, "veth0", oper="LOWERLAYERDOWN")) == [
        NetChange("link_down", "veth0", 3)]
    assert mon.decode(link(3, "veth0", oper="UP")) == [NetChange("link_up", "veth0", 3)]
    assert mon.decode(link(3, "veth0", msg_type=RTM_DELLINK)) == [
        NetChange("link_removed", "veth0", 3)]
    assert 3 not in mon.links


def test_admin_down_is_down_even_with_unknown_operstate():
    assert not netmon.link_is_up(link(3, "tun0", up=False, oper="UNKNOWN"))
    assert netmon.link_is_up(link(3, "tun0", up=True, oper="UNKNOWN"))


def test_address_events_name_the_interface_from_the_link_table():
    mon = monitor({4: ("wifi0", True)})
    assert mon.decode(addr(4, "10.83.1.1")) == [
        NetChange("addr_added", "wifi0", 4, "10.83.1.1", 4)]
    assert mon.decode(addr(4, "fd83::1", family=socket.AF_INET6, msg_type=RTM_DELADDR)) == [
        NetChange("addr_removed", "wifi0", 4, "fd83::1", 6)]


def test_route_events_skip_the_local_table():
    mon = monitor({4: ("wifi0", True)})
    assert mon.decode(route(None, 0, 4)) == [NetChange("route_added", "wifi0", 4, "default", 4)]
    assert mon.decode(route("10.83.1.0", 24, 4)) == [
        NetChange("route_added", "wifi0", 4, "10.83.1.0/24", 4)]
    assert mon.decode(route("10.83.1.1", 32, 4, table=255)) == []


def test_only_global_settled_addresses_are_usable():
    v6 = socket.AF_INET6
    assert netmon.addr_is_usable(addr(4, "10.83.1.1"))
    assert not netmon.addr_is_usable(addr(4, "127.0.0.1", scope=254))
    assert netmon.addr_is_usable(addr(4, "fd83::1", family=v6))
    assert not netmon.addr_is_usable(addr(4, "fe80::1", family=v6, scope=253))
    assert not netmon.addr_is_usable(addr(4, "fd83::1", family=v6, flags=netmon.IFA_F_TENTATIVE))
    assert not netmon.addr_is_usable(addr(4, "fd83::1", family=v6, flags=netmon.IFA_F_DADFAILED))


def test_routable_through_interface_route_or_a_default_route():
    connected = route("10.83.1.0", 24, 4)
    default_other = route(None, 0, 5)
    assert netmon.is_routable("10.83.1.1", 4, 4, [connected], [])
    assert not netmon.is_routable("10.83.2.1", 6, 4, [connected], [])
    # the main table's default route (no rules dumped: main table assumed)
    assert netmon.is_routable("10.83.2.1", 6, 4, [connected, default_other], [])
    # a default route in table 100 counts only for addresses an `ip rule from` sends there
    assert not netmon.is_routable("10.83.2.1", 6, 4, [route(None, 0, 5, table=100)], [])
    local_only = route("10.83.2.1", 32, 6, table=255)
    assert not netmon.is_routable("10.83.2.1", 6, 4, [local_only], [])


def test_selection_by_ifaces_and_exclude():
    mon = monitor()
    mon.ifaces, mon.exclude = None, {"mgmt0"}
    assert mon.selected("wifi0") and not mon.selected("mgmt0")
    mon.ifaces = {"wifi0"}
    assert mon.selected("wifi0") and not mon.selected("lte0")
