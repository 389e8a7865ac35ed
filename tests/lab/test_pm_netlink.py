"""Lab tests for controller/pm.py against the real kernel: two namespaces joined by two veth
paths, userspace path manager on both ends, one MPTCP connection driven through mptcp_pm."""

import contextlib
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from controller import netns
from controller.pm import MptcpPM, PMError, PMEvents

from .conftest import require_root, unique_suffix

IPPROTO_MPTCP = 262
PORT = 5201
# Path 1 (initial subflow) and path 2 (the one we add by hand).
CLI1, SRV1 = "10.82.1.1", "10.82.1.2"
CLI2, SRV2 = "10.82.2.1", "10.82.2.2"
# A server address no subflow uses yet (the kernel already gave SRV2 an id at the join).
SRV3 = "10.82.2.3"


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def set_userspace_pm(ns: str) -> None:
    if os.path.exists("/proc/sys/net/mptcp/path_manager"):
        in_ns(ns, "sysctl", "-qw", "net.mptcp.path_manager=userspace")
    else:
        in_ns(ns, "sysctl", "-qw", "net.mptcp.pm_type=1")


def lab_up(suffix: str) -> tuple[str, str]:
    """Client and server namespaces, two veth pairs between them, userspace PM on both."""
    cli, srv = f"pmc-{suffix}", f"pms-{suffix}"
    sh("ip", "netns", "add", cli)
    sh("ip", "netns", "add", srv)
    for n, (c_ip, s_ip) in enumerate(((CLI1, SRV1), (CLI2, SRV2)), start=1):
        c_if, s_if = f"pc{n}{suffix}", f"ps{n}{suffix}"
        sh("ip", "link", "add", c_if, "netns", cli, "type", "veth", "peer", "name", s_if,
           "netns", srv)
        in_ns(cli, "ip", "addr", "add", f"{c_ip}/24", "dev", c_if)
        in_ns(srv, "ip", "addr", "add", f"{s_ip}/24", "dev", s_if)
        in_ns(cli, "ip", "link", "set", c_if, "up")
        in_ns(srv, "ip", "link", "set", s_if, "up")
    in_ns(srv, "ip", "addr", "add", f"{SRV3}/24", "dev", f"ps2{suffix}")
    for ns in (cli, srv):
        in_ns(ns, "ip", "link", "set", "lo", "up")
        set_userspace_pm(ns)
    return cli, srv


def lab_down(suffix: str) -> None:
    """Delete both namespaces (their veths go with them); works on a half-built lab."""
    for ns in (f"pmc-{suffix}", f"pms-{suffix}"):
        if netns.exists(ns):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def pm_lab():
    require_root()
    suffix = unique_suffix()
    try:
        yield lab_up(suffix)
    finally:
        lab_down(suffix)
        left = [n for n in sh("ip", "netns", "list").split() if suffix in n]
        assert left == [], f"pm lab {suffix} left namespaces behind: {left}"


class Connection:
    """An MPTCP server in `srv` and a client in `cli`, connected over path 1."""

    def __init__(self, cli: str, srv: str):
        with netns.entered(srv):
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("0.0.0.0", PORT))
        self.listener.listen(4)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        with netns.entered(cli):
            self.client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        self.client.settimeout(5)
        self.client.bind((CLI1, 0))
        self.client.connect((SRV1, PORT))
        # Data both ways makes the connection fully established on both sides.
        self.client.sendall(b"hello")

    def _accept(self):
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            self.accepted.append(conn)
            conn.recv(16)
            conn.sendall(b"world")

    def close(self):
        for s in (self.client, *self.accepted, self.listener):
            with contextlib.suppress(OSError):
                s.close()


def wait_for(sub: PMEvents, etype: str, seen: list, timeout: float = 5.0, **match):
    """The first event of `etype` (with matching fields) read from `sub`; all reads go to
    `seen`."""
    deadline = time.monotonic() + timeout
    start = 0
    while True:
        for ev in seen[start:]:
            if ev.type == etype and all(getattr(ev, k) == v for k, v in match.items()):
                return ev
        start = len(seen)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {etype} {match} event within {timeout}s; saw {seen}")
        seen += sub.read(timeout=left)


def ss_tokens(ns: str) -> list[int]:
    return [int(t, 16) for t in re.findall(r"token:([0-9a-f]+)", in_ns(ns, "ss", "-Mni"))]


def ss_subflows(ns: str) -> list[str]:
    out = in_ns(ns, "ss", "-tnH", "state", "established", "dport", f"= :{PORT}")
    return [ln for ln in out.splitlines() if ln.strip()]


def test_userspace_pm_drives_a_connection_and_reports_every_step(pm_lab):
    cli, srv = pm_lab
    with PMEvents(cli) as cli_events, PMEvents(srv) as srv_events, MptcpPM(cli) as cli_pm, \
            MptcpPM(srv) as srv_pm:
        cli_seen: list = []
        srv_seen: list = []
        monitor = subprocess.Popen(["ip", "netns", "exec", cli, "ip", "mptcp", "monitor"],
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)  # let the monitor join the group before the first event
        conn = Connection(cli, srv)
        try:
            created = wait_for(cli_events, "created", cli_seen)
            est = wait_for(cli_events, "established", cli_seen, token=created.token)
            token = est.token
            assert (est.saddr, est.daddr, est.dport) == (CLI1, SRV1, PORT)
            assert est.family == socket.AF_INET
            assert est.server_side is False
            assert token in ss_tokens(cli)

            # A second subflow over path 2.
            cli_pm.subflow_create(token, CLI2, 2, SRV2, PORT)
            sub = wait_for(cli_events, "sub_established", cli_seen, token=token, saddr=CLI2)
            assert (sub.daddr, sub.dport, sub.loc_id, sub.backup) == (SRV2, PORT, 2, False)
            assert len(ss_subflows(cli)) == 2

            # MP_PRIO: mark it backup. The kernel reports SUB_PRIORITY where MP_PRIO arrives,
            # i.e. on the server, which sees the subflow from the other end.
            srv_est = wait_for(srv_events, "established", srv_seen)
            cli_pm.set_flags(token, CLI2, sub.sport, SRV2, PORT, backup=True)
            prio = wait_for(srv_events, "sub_priority", srv_seen, token=srv_est.token)
            assert (prio.daddr, prio.dport, prio.backup) == (CLI2, sub.sport, True)

            # Close it again.
            cli_pm.subflow_destroy(token, CLI2, sub.sport, SRV2, PORT)
            closed = wait_for(cli_events, "sub_closed", cli_seen, token=token, saddr=CLI2)
            assert closed.sport == sub.sport
            deadline = time.monotonic() + 3
            while len(ss_subflows(cli)) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(ss_subflows(cli)) == 1

            # The server announces a third address, then withdraws it.
            assert srv_est.server_side is True
            srv_pm.announce(srv_est.token, SRV3, 5)
            ann = wait_for(cli_events, "announced", cli_seen, token=token)
            assert (ann.rem_id, ann.daddr) == (5, SRV3)
            assert (5, SRV3) in [(a.id, a.addr) for a in srv_pm.addresses(srv_est.token)]
            srv_pm.remove(srv_est.token, 5)
            rem = wait_for(cli_events, "removed", cli_seen, token=token)
            assert rem.rem_id == 5
        finally:
            conn.close()
        wait_for(cli_events, "closed", cli_seen, token=token)
        time.sleep(0.2)
        monitor.terminate()
        monitor_out = monitor.communicate(timeout=5)[0]
    # iproute2 saw the same events, in the same order, with the same token.
    names = {"sub_established": "SF_ESTABLISHED", "sub_closed": "SF_CLOSED"}
    ours = [(names.get(e.type, e.type.upper()), e.token) for e in cli_seen]
    theirs = [(m[0], int(m[1], 16)) for m in re.findall(r"\[\s*(\w+)\] token=([0-9a-f]+)",
                                                         monitor_out)]
    assert theirs == ours, monitor_out


def test_bad_token_gives_pm_error_with_the_kernels_reason(pm_lab):
    cli, _ = pm_lab
    with MptcpPM(cli) as pm, pytest.raises(PMError) as err:
        pm.announce(0xDEADBEEF, CLI2, 7)
    assert err.value.errno != 0
    assert err.value.kernel_msg, "kernel sent no extended-ack text"
    assert "ANNOUNCE" in str(err.value)


def test_limits_and_endpoints_round_trip_in_a_namespace(pm_lab):
    cli, _ = pm_lab
    in_ns(cli, "sysctl", "-qw", "net.mptcp.path_manager=kernel", check=False)
    with MptcpPM(cli) as pm:
        pm.set_limits(subflows=3, add_addr_accepted=2)
        limits = pm.get_limits()
        assert (limits.subflows, limits.add_addr_accepted) == (3, 2)
        pm.add_endpoint(CLI2, id=9, flags=2, port=None)
        (ep,) = pm.endpoints()
        assert (ep.id, ep.addr) == (9, CLI2)
        assert "subflow" in in_ns(cli, "ip", "mptcp", "endpoint", "show")
        pm.del_endpoint(9)
        assert pm.endpoints() == []


def test_missing_namespace_is_bad_input():
    from controller.errors import BadInput

    with pytest.raises(BadInput):
        MptcpPM("no-such-ns-" + unique_suffix())
