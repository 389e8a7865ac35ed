"""The health checks of controller/health.py on recorded inputs: fallen-back connections in
`ss -MtinH` output (recorded on kernel 6.18, iproute2 6.1, with the SYN's MP_CAPABLE stripped
by nftables), ADD_ADDRs counted in the MPTcpExt MIB, and addresses the daemon gave up on."""

import types

from controller import health
from controller.model import Connection, PeerAddr, Subflow

FALLBACK_SS = "\n".join([
    "tcp   ESTAB 0      0      10.81.1.2:44246 10.81.9.2:43973",
    "\t bbr wscale:10,10 rto:204 rtt:0.1/0.05 mss:1448 bytes_sent:3000000",
    "mptcp ESTAB 0      0      10.81.1.2:44246 10.81.9.2:43973",
    "\t subflows_max:2 add_addr_accepted_max:2 fallback token:d7df804a "
    "write_seq:35b72ee7c7edaff5 snd_una:35b72ee7c7edaff5",
])

HEALTHY_SS = "\n".join([
    "tcp   ESTAB 0      61184           10.81.1.2:56330 10.81.9.2:44405",
    "\t bbr cwnd:66 bytes_sent:1290736 tcp-ulp-mptcp flags:Mmec "
    "token:0000(id:0)/4dbaf5e7(id:0) seq:5b29e261da15ee28 sfseq:1 ssnoff:621fc3a8 maplen:0",
    "mptcp ESTAB 0      0               10.81.1.2:56330 10.81.9.2:44405",
    "\t subflows:1 subflows_max:2 add_addr_accepted_max:2 remote_key token:4dbaf5e7 "
    "write_seq:8c460d29cb519a15 snd_una:8c460d29cb50b5e5 rcv_nxt:5b29e261da15ee28",
])


def mib(tx, echo):
    names = "AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx"
    return f"TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: {names}\nMPTcpExt: 0 {tx} 0 {echo} 0\n"


def test_a_fallen_back_connection_is_found_and_a_healthy_one_is_not():
    assert health.fallen_back(FALLBACK_SS) == [("10.81.1.2", 44246, "10.81.9.2", 43973)]
    assert health.fallen_back(HEALTHY_SS) == []
    assert health.fallen_back("") == []


def test_the_fallback_report_says_where_mptcp_was_lost():
    flow = ("10.81.1.2", 44246, "10.81.9.2", 43973)
    syn = health.no_mptcp_detail(flow, health.fallback_reason((True, False)))
    assert syn.startswith("peer or path does not support MPTCP: 10.81.1.2:44246 -> "
                          "10.81.9.2:43973 fell back to plain TCP")
    assert "no MP_CAPABLE came back" in syn
    assert "vanished from later segments" in health.fallback_reason((True, True))
    assert health.fallback_reason(None) == "" and health.fallback_reason((False, False)) == ""


def test_the_mib_is_read_from_its_header_and_value_lines():
    assert health.parse_mptcp_mib(mib(3, 1)) == {
        "AddAddr": 0, "AddAddrTx": 3, "AddAddrTxDrop": 0, "EchoAdd": 1, "EchoAddTx": 0}
    assert health.parse_mptcp_mib("TcpExt: A\nTcpExt: 1\n") == {}


def test_add_addrs_that_keep_going_out_unechoed_are_reported_once():
    w = health.AddAddrWatch()
    seq = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    out = [w.update(health.parse_mptcp_mib(mib(tx, echo))) for tx, echo in seq]
    assert out[:2] == [None, None]
    assert out[2] and "ADD_ADDR not echoed: sent 2 times" in out[2]
    assert out[3:] == [None, None]


def test_echoed_add_addrs_are_not_reported():
    w = health.AddAddrWatch()
    # Each ADD_ADDR echoed within a tick; then two sent in one tick and echoed by the next.
    for tx, echo in [(0, 0), (1, 1), (2, 2), (4, 2), (4, 4), (5, 5)]:
        assert w.update({"AddAddrTx": tx, "EchoAdd": echo}) is None


def test_a_burst_in_one_tick_is_not_yet_a_finding():
    w = health.AddAddrWatch()
    assert w.update({"AddAddrTx": 0, "EchoAdd": 0}) is None
    assert w.update({"AddAddrTx": 2, "EchoAdd": 0}) is None   # replies may be in flight
    assert w.update({"AddAddrTx": 3, "EchoAdd": 0})           # still none, and resent


def conn(token=1, established_to=()):
    c = Connection(token=token, family=4, local="10.0.1.2", lport=1000, remote="10.0.9.2",
                   rport=80, established=True)
    c.peer_addrs = [PeerAddr("10.0.9.2", 0, 0), PeerAddr("192.168.7.3", 0, 1)]
    c.subflows = [Subflow("10.0.1.2", 1000, r, 80) for r in ("10.0.9.2", *established_to)]
    return c


LOCALS = ["10.0.1.2", "10.0.2.2", "fd00::2"]


def test_an_announced_address_is_unreachable_only_once_every_local_address_gave_up():
    unreachable = health.unreachable_peer_addrs
    retries = {(1, "10.0.1.2", "192.168.7.3", 80): (3, 0.0)}
    assert unreachable([conn()], retries, 3, LOCALS) == []          # 10.0.2.2 not tried yet
    retries[(1, "10.0.2.2", "192.168.7.3", 80)] = (2, 0.0)
    assert unreachable([conn()], retries, 3, LOCALS) == []          # still trying
    retries[(1, "10.0.2.2", "192.168.7.3", 80)] = (3, 0.0)
    assert unreachable([conn()], retries, 3, LOCALS) == [(1, "192.168.7.3")]
    # Reached from somewhere after all, or never tried: nothing to say.
    assert unreachable([conn(established_to=["192.168.7.3"])], retries, 3, LOCALS) == []
    assert unreachable([conn()], {}, 3, LOCALS) == []


def test_the_monitor_reports_each_finding_once(monkeypatch, tmp_path):
    netstat = tmp_path / "netstat"
    netstat.write_text(mib(0, 0))
    monkeypatch.setattr(health.diag, "run_ss", lambda ns=None: FALLBACK_SS)
    mon = health.HealthMonitor(netstat=str(netstat))
    retries = {(1, "10.0.1.2", "192.168.7.3", 80): (8, 0.0)}
    daemon = types.SimpleNamespace(conns={1: conn()}, retries=retries, attachment=None,
                                   net=types.SimpleNamespace(addrs={"10.0.1.2": None}),
                                   cfg=types.SimpleNamespace(retry_attempts=8))
    first = mon.tick(daemon)
    assert sorted(f.kind for f in first) == [health.NO_MPTCP, health.PEER_ADDR_UNREACHABLE]
    assert "address 192.168.7.3 announced by the peer is unreachable" in first[1].detail
    assert mon.tick(daemon) == []
    assert [f["kind"] for f in mon.view()] == [f.kind for f in first]


def test_a_failing_check_does_not_stop_the_others(monkeypatch, tmp_path):
    def broken(ns=None):
        raise OSError("ss is gone")

    monkeypatch.setattr(health.diag, "run_ss", broken)
    mon = health.HealthMonitor(netstat=str(tmp_path / "missing"))
    daemon = types.SimpleNamespace(conns={1: conn()}, attachment=None,
                                   retries={(1, "10.0.1.2", "192.168.7.3", 80): (8, 0.0)},
                                   net=types.SimpleNamespace(addrs={"10.0.1.2": None}),
                                   cfg=types.SimpleNamespace(retry_attempts=8))
    assert [f.kind for f in mon.tick(daemon)] == [health.PEER_ADDR_UNREACHABLE]


def test_payload_modified_names_the_path_and_the_subflow():
    from controller.health import payload_modified_detail

    d = payload_modified_detail(("10.81.9.2", 5201, "10.81.1.2", 40000), "srv-x", 3)
    assert d == ("payload modified on path srv-x: 3 DSS checksum mismatches on "
                 "10.81.1.2:40000 -> 10.81.9.2:5201")
