"""Prometheus metrics for the daemon (`mptcpctl up --metrics ADDR:PORT`): an HTTP endpoint whose
values come from the daemon's status dict (Daemon.status), refreshed by update() from its loop.
The BPF counters are already running totals, so they are exposed as counters read at scrape."""

from __future__ import annotations

import bisect
import ipaddress
import re
import threading

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from .errors import BadInput, MptcpctlError

# Address used when --metrics names only a port: scraping from elsewhere is a choice to make.
DEFAULT_ADDR = "127.0.0.1"
# Upper bounds (seconds) of the handover stall histogram: from a make-before-break switch
# (tens of ms) to a path that took the retry backoff's longest delays (5 s, retry_max_ms).
STALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# "handover" event detail, as Daemon._ev_sub_established writes it: "... stall=123ms"
_STALL_RE = re.compile(r"\bstall=(\d+(?:\.\d+)?)ms\b")
# Datapath counters that are not options or malformed packets, shown as packets by kind.
PACKET_KINDS = ("packets", "tcp", "mptcp", "unknown", "not_parsed")


def parse_listen(text: str) -> tuple[str, int]:
    """`--metrics` value to (address, port): PORT, :PORT, ADDR:PORT or [IPV6]:PORT."""
    raw = (text or "").strip()
    if not raw:
        raise BadInput("--metrics needs PORT or ADDR:PORT (e.g. 9464, 0.0.0.0:9464, [::1]:9464)")
    if raw.startswith("["):
        addr, sep, port = raw[1:].partition("]:")
        if not sep:
            raise BadInput(f"bad --metrics {text!r}: write an IPv6 address as [ADDR]:PORT")
    elif raw.count(":") > 1:
        raise BadInput(f"bad --metrics {text!r}: write an IPv6 address as [ADDR]:PORT")
    elif ":" in raw:
        addr, _, port = raw.partition(":")
        addr = addr or DEFAULT_ADDR
    else:
        addr, port = DEFAULT_ADDR, raw
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise BadInput(f"bad --metrics {text!r}: {addr!r} is not an IP address") from None
    if raw.startswith("[") and ip.version != 6:
        raise BadInput(f"bad --metrics {text!r}: brackets are for IPv6 addresses")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise BadInput(f"bad --metrics {text!r}: the port must be a number from 1 to 65535")
    return str(ip), int(port)


def format_listen(addr: str, port: int) -> str:
    """ADDR:PORT, with an IPv6 address in brackets."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class StatusCollector(Collector):
    """Every metric, from the latest status dict. Handover events are counted once each (by
    their timestamp), so the stall histogram survives the status' 50-event window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: dict = {}
        self._seen_t = 0.0                                    # newest event already counted
        self._stall_counts = [0] * (len(STALL_BUCKETS) + 1)   # per bucket, last is +Inf
        self._stall_sum = 0.0
        self._handovers = 0

    def update(self, status: dict) -> None:
        events = status.get("events") or []
        with self._lock:
            newest = self._seen_t
            for ev in events:
                t = float(ev.get("t") or 0)
                if t <= self._seen_t:
                    continue
                newest = max(newest, t)
                if ev.get("event") == "handover":
                    self._count_handover(ev.get("detail") or "")
            self._seen_t = newest
            self._status = status

    def _count_handover(self, detail: str) -> None:
        self._handovers += 1
        m = _STALL_RE.search(detail)
        if m is None:
            return
        seconds = float(m.group(1)) / 1000
        self._stall_counts[bisect.bisect_left(STALL_BUCKETS, seconds)] += 1
        self._stall_sum += seconds

    def collect(self):
        with self._lock:
            status = self._status
            stall_counts, stall_sum = list(self._stall_counts), self._stall_sum
            handovers = self._handovers
        conns = status.get("connections") or []
        subflows = [s for c in conns for s in c.get("subflows") or []]

        yield GaugeMetricFamily("mptcpctl_connections",
                                "MPTCP connections the daemon knows", value=len(conns))

        by_state = GaugeMetricFamily("mptcpctl_subflows", "Subflows of those connections",
                                     labels=["state", "backup"])
        for state in ("established", "connecting"):
            for backup in (False, True):
                n = sum(1 for s in subflows if bool(s.get("established")) is
                        (state == "established") and bool(s.get("backup")) is backup)
                by_state.add_metric([state, str(backup).lower()], n)
        yield by_state

        sf_bytes = CounterMetricFamily(
            "mptcpctl_subflow_bytes", "Bytes of a subflow seen by the datapath",
            labels=["direction", "local", "remote", "iface"])
        clamp = GaugeMetricFamily("mptcpctl_cwnd_clamp_packets",
                                  "Window clamp set by coupled congestion control",
                                  labels=["local", "remote"])
        for s in subflows:
            local = format_listen(str(s.get("local")), s.get("lport"))
            remote = format_listen(str(s.get("remote")), s.get("rport"))
            for direction, key in (("out", "bytes_out"), ("in", "bytes_in")):
                if s.get(key) is not None:
                    sf_bytes.add_metric([direction, local, remote, s.get("iface") or ""],
                                        s[key])
            if s.get("clamp") is not None:
                clamp.add_metric([local, remote], s["clamp"])
        yield sf_bytes
        yield clamp

        counters = (status.get("datapath") or {}).get("counters") or {}
        options = CounterMetricFamily("mptcpctl_options",
                                      "MPTCP options parsed by the datapath, by subtype",
                                      labels=["subtype"])
        for name, value in sorted(counters.items()):
            if name.startswith("opt_"):
                options.add_metric([name.removeprefix("opt_")], value)
        yield options
        packets = CounterMetricFamily("mptcpctl_datapath_packets",
                                      "Packets seen by the datapath, by kind", labels=["kind"])
        for kind in PACKET_KINDS:
            if kind in counters:
                packets.add_metric([kind], counters[kind])
        yield packets
        if "malformed" in counters:
            yield CounterMetricFamily("mptcpctl_malformed_packets",
                                      "Packets whose MPTCP options could not be parsed",
                                      value=counters["malformed"])
        if "events_lost" in counters:
            yield CounterMetricFamily("mptcpctl_datapath_events_lost",
                                      "Datapath events dropped (ring full)",
                                      value=counters["events_lost"])

        yield CounterMetricFamily("mptcpctl_handovers",
                                  "Connections that lost every subflow and got one back",
                                  value=handovers)
        buckets, cumulative = [], 0
        for bound, n in zip((*STALL_BUCKETS, float("inf")), stall_counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("mptcpctl_handover_stall_seconds",
                                    "Time without an established subflow, per handover",
                                    buckets=buckets, sum_value=stall_sum)


class Metrics:
    """The HTTP endpoint and its collector; update() from the daemon, close() at stop."""

    def __init__(self, addr: str, port: int):
        self.collector = StatusCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        except OSError as e:
            raise MptcpctlError(f"cannot serve metrics on {format_listen(addr, port)}: "
                                f"{e.strerror or e}") from e
        self.addr = addr
        self.port = self._server.server_port  # the real one when port 0 was asked for

    def update(self, status: dict) -> None:
        self.collector.update(status)

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
