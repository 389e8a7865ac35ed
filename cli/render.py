"""Rich renderables built from controller data (one data source for tables and --json).
Sized for an 80-column terminal: one small table per connection, one row per subflow."""

import time
from collections import defaultdict

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 5


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def human_rate(bps: float) -> str:
    """Bits per second in at most 6 characters: 950, 19.1k, 19.1M, 1.2G."""
    for unit in ("", "k", "M", "G"):
        if bps < 1000 or unit == "G":
            return f"{bps:.0f}" if unit == "" else f"{bps:.1f}{unit}"
        bps /= 1000
    return f"{bps:.1f}G"


def bar(value: float, peak: float) -> Text:
    filled = 0 if peak <= 0 else round(BAR_WIDTH * min(value, peak) / peak)
    return Text("█" * filled + "·" * (BAR_WIDTH - filled), style="green")


def _rate_cell(bps: float, peak_bps: float) -> Text:
    return Text.assemble(bar(bps, peak_bps), f" {human_rate(bps):>6}")


def _cwnd_cell(cwnd, clamp) -> str:
    if cwnd is None:
        return "-"
    return f"{cwnd}/{clamp if clamp is not None else '-'}"


def connection_tables(subflows, rates: dict | None = None) -> list[Table]:
    """One table per connection (by local token): path, local end, kind, throughput each way
    in bit/s with bars scaled to the busiest subflow, bytes each way."""
    rates = rates or {}
    peak = max((max(r) for r in rates.values()), default=0.0) * 8
    conns = defaultdict(list)
    for sf in subflows:
        conns[sf.token or "?"].append(sf)
    tables = []
    for token, sfs in conns.items():
        first = next((s for s in sfs if not s.join), sfs[0])
        t = Table(
            title=f"connection {token}  → {first.remote}:{first.rport}",
            title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
            collapse_padding=True,
        )
        for col, just in (("path", "left"), ("local", "left"), ("kind", "left"),
                          ("↑ bit/s", "left"), ("↓ bit/s", "left"), ("bytes ↑/↓", "right"),
                          ("cwnd/cl", "right")):
            t.add_column(col, no_wrap=True, justify=just)
        for sf in sfs:
            r_out, r_in = rates.get(sf.key, (0.0, 0.0))
            kind = ("join" if sf.join else "init") + ("/bk" if sf.backup else "")
            t.add_row(
                sf.iface, f"{sf.local}:{sf.lport}", kind,
                _rate_cell(r_out * 8, peak), f"{human_rate(r_in * 8):>6}",
                f"{human_bytes(sf.bytes_out)}/{human_bytes(sf.bytes_in)}",
                _cwnd_cell(getattr(sf, "cwnd", None), getattr(sf, "clamp", None)),
            )
        tables.append(t)
    return tables


def counters_line(counters: dict) -> Text:
    keys = ("packets", "tcp", "mptcp", "malformed", "unknown", "events_lost")
    return Text("  ".join(f"{k}={counters.get(k, 0)}" for k in keys), style="dim")


EVENT_STYLE = {"handover": "bold green", "sub_closed": "yellow", "subflow_destroy": "yellow",
               "failed": "red", "link_down": "red", "addr_removed": "red"}


def events_table(events, limit: int = 8) -> Table:
    """The daemon's newest events, one line each (subflow up/down, announces, priority
    changes, handovers with their stall)."""
    t = Table(title="events", title_justify="left", title_style="bold", box=None,
              pad_edge=False, show_header=False)
    t.add_column("time", no_wrap=True, style="dim", min_width=8)
    t.add_column("event", no_wrap=True, min_width=15)
    t.add_column("detail", no_wrap=True, overflow="ellipsis")
    for e in list(events)[-limit:]:
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["t"])),
                  Text(e["event"], style=EVENT_STYLE.get(e["event"], "")), e["detail"])
    return t


def top_view(subflows, rates, counters, header: str, events=None) -> Group:
    parts = connection_tables(subflows, rates) or [Text("no MPTCP subflows seen yet", style="dim")]
    tail = [events_table(events)] if events is not None else []
    return Group(Text(header, style="bold"), *parts, counters_line(counters), *tail)


def status_view(data: dict) -> Group:
    """`mptcpctl status`: the daemon's answer to "status", for a terminal."""
    pol = data.get("policy", {})
    where = f"netns {data['netns']}" if data.get("netns") else "this namespace"
    head = Text.assemble(
        ("mptcpctl ", "bold"), f"pid {data.get('pid')} — {where} — pm {data.get('pm')} — ",
        f"policy {pol.get('name')} — cc {data.get('cc')}",
        f" (backup: {', '.join(pol['backup_ifaces'])})" if pol.get("backup_ifaces") else "",
        f" — up {data.get('uptime_s', 0)}s",
    )
    parts = [head]
    addrs = ", ".join(f"{a['addr']}@{a['ifname']}" for a in data.get("local_addrs", []))
    parts.append(Text(f"local addresses: {addrs or 'none'}", style="dim"))
    for c in data.get("connections", []):
        t = Table(
            title=(f"connection {c['token']}  {c['local']}:{c['lport']} → "
                   f"{c['remote']}:{c['rport']}  {c['side']} {c['state']} "
                   f"{c.get('age_s') or 0:.0f}s"),
            title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
            collapse_padding=True,
        )
        for col in ("path", "local", "remote", "ids", "kind", "rtt", "cwnd/clamp", "bytes ↑/↓"):
            t.add_column(col, no_wrap=True)
        for s in c.get("subflows", []):
            kind = ("backup" if s.get("backup") else "active") + (
                "" if s.get("established") else " (connecting)")
            rtt = f"{s['rtt_ms']:.1f}ms" if s.get("rtt_ms") is not None else "-"
            out = s.get("bytes_out") if s.get("bytes_out") is not None else s.get("bytes_sent")
            inn = s.get("bytes_in") if s.get("bytes_in") is not None else s.get("bytes_received")
            t.add_row(
                s.get("iface") or "-", f"{s['local']}:{s['lport']}",
                f"{s['remote']}:{s['rport']}", f"{s.get('loc_id')}/{s.get('rem_id')}", kind,
                rtt, _cwnd_cell(s.get("cwnd"), s.get("clamp")),
                f"{human_bytes(out or 0)}/{human_bytes(inn or 0)}",
            )
        parts.append(t)
    if not data.get("connections"):
        parts.append(Text("no MPTCP connections", style="dim"))
    for h in data.get("health", []):
        parts.append(Text(f"! {h.get('detail', h)}", style="bold yellow"))
    ev = Table(title="recent events", title_justify="left", box=None, pad_edge=False)
    ev.add_column("time", no_wrap=True)
    ev.add_column("event", no_wrap=True)
    ev.add_column("detail")
    for e in data.get("events", [])[-10:]:
        ev.add_row(time.strftime("%H:%M:%S", time.localtime(e["t"])), e["event"], e["detail"])
    parts.append(ev)
    parts.append(counters_line(data.get("datapath", {}).get("counters", {})))
    return Group(*parts)
