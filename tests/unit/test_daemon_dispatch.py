"""The daemon's event handling without a kernel: recorded-style mptcp_pm events and network
changes go in, the path-manager commands it would send come out. Missing, duplicate and
out-of-order events and unknown tokens are logged and skipped, never a crash."""

import pytest

from controller.config import DaemonConfig
from controller.daemon import Daemon
from controller.errors import MptcpctlError
from controller.model import LocalAddr
from controller.pm import PMEvent

TOKEN = 0xA1B2C3D4
WIFI = LocalAddr("10.81.1.2", "wifi0", 2, 4)
LTE = LocalAddr("10.81.2.2", "lte0", 3, 4)
SERVER, PORT = "10.81.9.2", 5201


class FakePM:
    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __getattr__(self, name):
        def call(*args, **kw):
            self.calls.append((name, args, kw))
            if name in self.fail:
                raise MptcpctlError(f"{name} failed")
        return call


@pytest.fixture
def d():
    daemon = Daemon(DaemonConfig(datapath=False, cc="uncoupled"))
    daemon.pm = FakePM()
    daemon.net.update({WIFI.addr: WIFI, LTE.addr: LTE})
    daemon._route_ready = lambda *_: True  # no lab routes here: every path is ready
    return daemon


def ev(type_, **kw):
    base = dict(token=TOKEN, family=2, saddr=WIFI.addr, sport=40000, daddr=SERVER, dport=PORT)
    base.update(kw)
    return PMEvent(type=type_, **base)


def creates(d):
    return [(c[1][1], c[1][3]) for c in d.pm.calls if c[0] == "subflow_create"]


def test_established_connection_gets_a_subflow_from_the_other_address(d):
    d.handle_pm_event(ev("created"))
    d.handle_pm_event(ev("established"))
    assert creates(d) == [(LTE.addr, SERVER)]


def test_a_second_established_event_does_not_create_twice(d):
    for _ in range(2):
        d.handle_pm_event(ev("established"))
    assert creates(d) == [(LTE.addr, SERVER)]


def test_an_announced_address_is_joined_from_every_local_address(d):
    d.handle_pm_event(ev("established"))
    d.handle_pm_event(ev("announced", saddr=None, sport=None, daddr="10.81.9.3", dport=0,
                         rem_id=1))
    assert sorted(c for c in creates(d) if c[1] == "10.81.9.3") == [
        (WIFI.addr, "10.81.9.3"), (LTE.addr, "10.81.9.3")]


def test_address_gone_destroys_its_subflow_and_the_next_one_is_created(d):
    d.handle_pm_event(ev("established"))
    d.net.update({LTE.addr: LTE})
    d.reconcile()
    assert ("subflow_destroy", (TOKEN, WIFI.addr, 40000, SERVER, PORT), {}) in d.pm.calls


def test_a_failed_creation_backs_off_instead_of_looping(d):
    d.pm = FakePM(fail={"subflow_create"})
    d.handle_pm_event(ev("established"))
    for _ in range(50):
        d.reconcile()
    assert len(creates(d)) == 1
    attempts, not_before = d.retries[(TOKEN, LTE.addr, SERVER, PORT)]
    assert attempts == 1 and not_before > 0


@pytest.mark.parametrize("event", [
    PMEvent(type="established"),                                  # no token
    PMEvent(type="created", token=TOKEN),                         # no addresses
    PMEvent(type="announced", token=0xDEAD, daddr="10.0.0.9", rem_id=3),  # unknown token
    PMEvent(type="sub_closed", token=0xDEAD, saddr="1.2.3.4", daddr="5.6.7.8"),
    PMEvent(type="removed", token=TOKEN),                         # before created
    PMEvent(type="closed", token=TOKEN),                          # closed twice
    PMEvent(type="sub_priority", token=TOKEN),
    PMEvent(type="listener_created"),
    PMEvent(type="something_new", token=TOKEN),
])
def test_odd_events_are_skipped_without_a_crash(d, event):
    d.handle_pm_event(event)
    d.handle_pm_event(event)
    assert not [c for c in d.pm.calls if c[0] == "subflow_create"]


def test_closed_forgets_the_connection_and_its_retries(d):
    d.pm = FakePM(fail={"subflow_create"})
    d.handle_pm_event(ev("established"))
    d.handle_pm_event(ev("closed"))
    assert TOKEN not in d.conns and not d.retries


def test_status_and_unknown_control_commands_answer(d):
    assert d.answer({"cmd": "status"})["connections"] == []
    assert "unknown command" in d.answer({"cmd": "reboot"})["error"]


def test_lost_events_are_repaired_from_the_kernels_connections(d, monkeypatch):
    """After an event-socket overrun the daemon forgets connections the kernel no longer has
    and adopts (and completes) the ones whose events it never got."""
    from types import SimpleNamespace

    from controller import diag

    d.handle_pm_event(ev("established"))            # known, but gone from the kernel
    missed = SimpleNamespace(token=0x0BADF00D, family=4, local=WIFI.addr, lport=41000,
                             remote=SERVER, rport=PORT)
    monkeypatch.setattr(diag, "connections", lambda ns: [missed])
    monkeypatch.setattr(diag, "subflows", lambda ns: [])
    d._resync()
    assert set(d.conns) == {0x0BADF00D}
    assert (LTE.addr, SERVER) in creates(d)[1:]


def test_no_subflow_is_requested_before_its_route_exists(d):
    d._route_ready = lambda local, remote, ifindex: local != LTE.addr
    d.handle_pm_event(ev("established"))
    assert creates(d) == []
    assert (TOKEN, LTE.addr, SERVER, PORT) in d.retries  # back on the next network event
