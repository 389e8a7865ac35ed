"""Prometheus metrics: a sample status dict (the shape of Daemon.status) scraped over HTTP from a
Metrics endpoint on 127.0.0.1; handovers counted once each; bad --metrics values rejected."""

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.errors import BadInput, MptcpctlError
from controller.metrics import Metrics, parse_listen


def subflow(local, lport, remote, rport, *, backup=False, established=True, iface="wifi0",
            bytes_out=None, bytes_in=None, clamp=None):
    return {"local": local, "lport": lport, "remote": remote, "rport": rport, "loc_id": 1,
            "rem_id": 0, "backup": backup, "established": established, "iface": iface,
            "bytes_out": bytes_out, "bytes_in": bytes_in, "rtt_ms": 12.0, "cwnd": 40,
            "clamp": clamp, "bytes_sent": None, "bytes_received": None}


def handover(t, stall_ms):
    return {"t": t, "event": "handover",
            "detail": f"token=fbc294e6 via 10.81.2.2 stall={stall_ms}ms"}


SERVER = "10.81.9.2"
STATUS = {
    "pid": 1, "netns": None, "uptime_s": 3, "pm": "userspace", "cc": "lia",
    "connections": [
        {"token": "fbc294e6", "family": 4, "local": "10.81.1.2", "lport": 57758,
         "remote": SERVER, "rport": 5201, "side": "client", "state": "established",
         "subflows": [
             subflow("10.81.1.2", 57758, SERVER, 5201, bytes_out=1000, bytes_in=20, clamp=17),
             subflow("10.81.2.2", 34151, SERVER, 5201, backup=True, iface="lte0",
                     bytes_out=300, bytes_in=4),
             subflow("10.81.2.2", 0, SERVER, 5201, established=False, iface=None),
         ]},
        {"token": "00000001", "family": 6, "local": "fd81:1::2", "lport": 40000,
         "remote": "fd81:9::2", "rport": 5201, "side": "client", "state": "established",
         "subflows": [subflow("fd81:1::2", 40000, "fd81:9::2", 5201, bytes_out=5,
                              bytes_in=6)]},
    ],
    "datapath": {"ifaces": ["wifi0", "lte0"], "counters": {
        "packets": 100, "tcp": 90, "mptcp": 80, "malformed": 2, "unknown": 1,
        "events_lost": 0, "not_parsed": 3, "opt_dss": 70, "opt_mp_join": 4,
        "opt_mp_capable": 3}},
    "events": [
        {"t": 1.0, "event": "started", "detail": "pm=userspace policy=fullmesh"},
        handover(2.0, 180),
        handover(3.0, 1200),
    ],
}


def scrape(m: Metrics) -> dict:
    """{(name, frozenset(labels)): value} of every sample the endpoint serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def labels(**kv):
    return frozenset(kv.items())


@pytest.fixture
def metrics():
    m = Metrics("127.0.0.1", 0)
    yield m
    m.close()


def test_the_endpoint_serves_connections_and_subflows_by_state(metrics):
    metrics.update(STATUS)
    got = scrape(metrics)
    assert got[("mptcpctl_connections", labels())] == 2
    assert got[("mptcpctl_subflows", labels(state="established", backup="false"))] == 2
    assert got[("mptcpctl_subflows", labels(state="established", backup="true"))] == 1
    assert got[("mptcpctl_subflows", labels(state="connecting", backup="false"))] == 1
    assert got[("mptcpctl_subflows", labels(state="connecting", backup="true"))] == 0


def test_subflow_bytes_are_counters_per_direction_and_path(metrics):
    metrics.update(STATUS)
    got = scrape(metrics)
    wifi = {"local": "10.81.1.2:57758", "remote": "10.81.9.2:5201", "iface": "wifi0"}
    assert got[("mptcpctl_subflow_bytes_total", labels(direction="out", **wifi))] == 1000
    assert got[("mptcpctl_subflow_bytes_total", labels(direction="in", **wifi))] == 20
    v6 = {"local": "[fd81:1::2]:40000", "remote": "[fd81:9::2]:5201", "iface": "wifi0"}
    assert got[("mptcpctl_subflow_bytes_total", labels(direction="out", **v6))] == 5
    # a subflow without datapath bytes (not yet established) has no series
    assert not [k for k in got if k[0] == "mptcpctl_subflow_bytes_total"
                and ("local", "10.81.2.2:0") in k[1]]


def test_datapath_counters_become_options_and_malformed_totals(metrics):
    metrics.update(STATUS)
    got = scrape(metrics)
    assert got[("mptcpctl_options_total", labels(subtype="dss"))] == 70
    assert got[("mptcpctl_options_total", labels(subtype="mp_join"))] == 4
    assert got[("mptcpctl_malformed_packets_total", labels())] == 2
    assert got[("mptcpctl_datapath_packets_total", labels(kind="mptcp"))] == 80


def test_cwnd_clamp_is_a_gauge_per_subflow_with_a_clamp(metrics):
    metrics.update(STATUS)
    got = scrape(metrics)
    key = ("mptcpctl_cwnd_clamp_packets",
           labels(local="10.81.1.2:57758", remote="10.81.9.2:5201"))
    assert got[key] == 17
    assert sum(1 for k in got if k[0] == "mptcpctl_cwnd_clamp_packets") == 1


def test_each_handover_is_counted_once_with_its_stall(metrics):
    metrics.update(STATUS)
    metrics.update(STATUS)  # the same events again: not counted twice
    later = dict(STATUS, events=[*STATUS["events"], handover(4.0, 40)])
    metrics.update(later)
    got = scrape(metrics)
    assert got[("mptcpctl_handovers_total", labels())] == 3
    stall = "mptcpctl_handover_stall_seconds"
    assert got[(f"{stall}_count", labels())] == 3
    assert got[(f"{stall}_sum", labels())] == pytest.approx(0.18 + 1.2 + 0.04)
    assert got[(f"{stall}_bucket", labels(le="0.05"))] == 1
    assert got[(f"{stall}_bucket", labels(le="0.25"))] == 2
    assert got[(f"{stall}_bucket", labels(le="2.5"))] == 3
    assert got[(f"{stall}_bucket", labels(le="+Inf"))] == 3


def test_before_any_update_the_endpoint_serves_zeroes(metrics):
    got = scrape(metrics)
    assert got[("mptcpctl_connections", labels())] == 0
    assert got[("mptcpctl_handovers_total", labels())] == 0


def test_a_port_in_use_is_a_one_line_error(metrics):
    with pytest.raises(MptcpctlError, match=r"cannot serve metrics on 127\.0\.0\.1:\d+"):
        Metrics("127.0.0.1", metrics.port)


def test_close_frees_the_port():
    m = Metrics("127.0.0.1", 0)
    port = m.port
    m.close()
    m.close()  # twice is fine
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("text, expected", [
    ("9464", ("127.0.0.1", 9464)),
    (":9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("10.81.1.2:65535", ("10.81.1.2", 65535)),
    ("[::1]:9000", ("::1", 9000)),
    ("[::]:9000", ("::", 9000)),
    (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
])
def test_metrics_listen_values(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "needs PORT or ADDR:PORT"),
    ("0", "from 1 to 65535"),
    ("65536", "from 1 to 65535"),
    ("127.0.0.1:", "from 1 to 65535"),
    ("127.0.0.1:http", "from 1 to 65535"),
    ("localhost:9000", "is not an IP address"),
    ("10.0.0.256:9000", "is not an IP address"),
    ("::1:9000", r"\[ADDR\]:PORT"),
    ("[::1]9000", r"\[ADDR\]:PORT"),
    ("[127.0.0.1]:9000", "brackets are for IPv6"),
])
def test_bad_metrics_values_are_one_line_errors(text, message):
    with pytest.raises(BadInput, match=message) as exc:
        parse_listen(text)
    assert "\n" not in str(exc.value)
