"""Root tier for netmon, sysctl and diag: two fresh namespaces joined by two veth pairs
(10.83.x.y), deleted by the fixture even on failure."""

import re
import secrets
import select
import socket
import subprocess
import time

import pytest
from gates import missing_root_netns, skip_or_fail

from controller import diag, sysctl
from controller.netmon import NetMonitor
from controller.netns import entered

DEADLINE = 2.0   # seconds for an event or a connection to show up
IPPROTO_MPTCP = 262


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pair():
    """Namespaces (client, server): veth c1-s1 10.83.1.0/24 and c2-s2 10.83.2.0/24, all up."""
    skip_or_fail(missing_root_netns())
    sfx = secrets.token_hex(4)
    cns, sns = f"mnsd-c-{sfx}", f"mnsd-s-{sfx}"
    try:
        ip("netns", "add", cns)
        ip("netns", "add", sns)
        for n in ("1", "2"):
            ip("link", "add", f"c{n}", "netns", cns, "type", "veth", "peer", "name", f"s{n}",
               "netns", sns)
            ip("-n", cns, "addr", "add", f"10.83.{n}.1/24", "dev", f"c{n}")
            ip("-n", sns, "addr", "add", f"10.83.{n}.2/24", "dev", f"s{n}")
            ip("-n", cns, "link", "set", f"c{n}", "up")
            ip("-n", sns, "link", "set", f"s{n}", "up")
        for ns in (cns, sns):
            ip("-n", ns, "link", "set", "lo", "up")
        yield cns, sns
    finally:
        for ns in (cns, sns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for(mon, want, deadline=DEADLINE):
    """Changes read from `mon` until one matches `want` (or the deadline passes)."""
    seen = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        ready, _, _ = select.select([mon], [], [], end - time.monotonic())
        if ready:
            seen += mon.read()
            if any(want(c) for c in seen):
                return seen
    pytest.fail(f"no matching change within {deadline}s; saw {seen}")


def test_monitor_sees_address_and_link_changes(pair):
    cns, _ = pair
    with NetMonitor(cns) as mon:
        t0 = time.monotonic()
        ip("-n", cns, "addr", "add", "10.83.1.9/24", "dev", "c1")
        wait_for(mon, lambda c: c.kind == "addr_added" and c.addr == "10.83.1.9"
                 and c.ifname == "c1" and c.family == 4)
        assert time.monotonic() - t0 < 0.5
        assert "10.83.1.9" in mon.snapshot()
        ip("-n", cns, "addr", "del", "10.83.1.9/24", "dev", "c1")
        wait_for(mon, lambda c: c.kind == "addr_removed" and c.addr == "10.83.1.9")
        assert "10.83.1.9" not in mon.snapshot()
        ip("-n", cns, "link", "set", "c2", "down")
        wait_for(mon, lambda c: c.kind == "link_down" and c.ifname == "c2")
        assert "10.83.2.1" not in mon.snapshot()
        assert {name: up for name, _, up in mon.interfaces()} == {"c1": True, "c2": False}


def test_snapshot_lists_managed_usable_addresses(pair):
    cns, _ = pair
    ip("-n", cns, "addr", "add", "fd83:1::1/64", "dev", "c1", "nodad")
    with NetMonitor(cns, exclude=["c2"]) as mon:
        snap = mon.snapshot()
        assert set(snap) == {"10.83.1.1", "fd83:1::1"}   # no loopback, link-local or c2
        a = snap["10.83.1.1"]
        assert (a.ifname, a.family, a.routable) == ("c1", 4, True)
        assert [name for name, _, _ in mon.interfaces()] == ["c1"]
    with NetMonitor(cns, ifaces=["c2"]) as mon:
        assert set(mon.snapshot()) == {"10.83.2.1"}


def test_rule_table_default_route_makes_an_address_routable(pair):
    cns, _ = pair
    ip("-n", cns, "route", "add", "default", "via", "10.83.1.2", "table", "100")
    ip("-n", cns, "rule", "add", "from", "10.83.2.1", "lookup", "100")
    with NetMonitor(cns) as mon:
        assert mon.snapshot()["10.83.2.1"].routable


def test_saved_sysctls_restore_and_leave_the_host_alone(pair, tmp_path):
    cns, _ = pair
    name, value = sysctl.userspace_pm_sysctl(cns)
    host_before = sysctl.read(name)
    before = sysctl.read(name, cns)
    assert sysctl.mptcp_enabled(cns) and sysctl.userspace_pm_available(cns)
    saved = sysctl.SavedSysctls(cns)
    saved.set(name, value)
    assert sysctl.read(name, cns) == value
    assert sysctl.read(name) == host_before
    # what the daemon does across a crash: save, load in a new process, restore
    saved.save(str(tmp_path / "saved.json"))
    again = sysctl.SavedSysctls.load(str(tmp_path / "saved.json"))
    assert again.netns == cns and again.saved == {name: before}
    again.restore()
    assert sysctl.read(name, cns) == before
    assert sysctl.read(name) == host_before
    assert sysctl.read("net.mptcp.no_such_thing", cns) is None


def test_entered_namespace_reads_its_own_proc_sys_net(pair):
    cns, _ = pair
    name = "net.mptcp.add_addr_timeout"
    host = sysctl.read(name)
    new = str(int(host) + 7)
    sysctl.write(name, new, cns)
    via_exec = subprocess.run(["ip", "netns", "exec", cns, "sysctl", "-n", name],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert via_exec == new == sysctl.read(name, cns)
    assert sysctl.read(name) == host


def test_diag_lists_a_live_connection_and_its_two_subflows(pair):
    cns, sns = pair
    for ns in (cns, sns):
        ip("-n", ns, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
    ip("-n", cns, "mptcp", "endpoint", "add", "10.83.2.1", "dev", "c2", "subflow")
    with entered(sns):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    with entered(cns):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    try:
        server.bind(("10.83.1.2", 5201))
        server.listen(4)
        client.settimeout(DEADLINE)
        client.connect(("10.83.1.2", 5201))
        accepted, _ = server.accept()
        client.sendall(b"x" * 10000)
        end = time.monotonic() + DEADLINE
        while True:
            conns, subs = diag.snapshot(cns)
            mine = [s for s in subs if s.rport == 5201]
            if len(mine) == 2 or time.monotonic() > end:
                break
            time.sleep(0.05)
        assert len(conns) == 1
        conn = conns[0]
        shown = subprocess.run(["ip", "netns", "exec", cns, "ss", "-MnH", "-i"],
                               capture_output=True, text=True).stdout
        assert conn.token in {int(t, 16) for t in re.findall(r"token:([0-9a-f]+)", shown)}
        assert (conn.local, conn.remote, conn.rport, conn.family) == (
            "10.83.1.1", "10.83.1.2", 5201, 4)
        assert conn.lport == client.getsockname()[1]
        assert sorted((s.local, s.loc_id, s.token) for s in mine) == [
            ("10.83.1.1", 0, conn.token), ("10.83.2.1", 1, conn.token)]
        assert any(s.bytes_sent > 0 for s in mine)
        assert diag.connections(sns)[0].remote == "10.83.1.1"
        accepted.close()
    finally:
        client.close()
        server.close()
