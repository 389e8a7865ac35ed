"""Rich renderables built from controller data (one data source for tables and --json).
Sized for an 80-column terminal: one small table per connection, one row per subflow."""

from collections import defaultdict

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 6


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
                          ("↑ bit/s", "left"), ("↓ bit/s", "left"), ("bytes ↑/↓", "right")):
            t.add_column(col, no_wrap=True, justify=just)
        for sf in sfs:
            r_out, r_in = rates.get(sf.key, (0.0, 0.0))
            kind = ("join" if sf.join else "init") + ("/bk" if sf.backup else "")
            t.add_row(
                sf.iface, f"{sf.local}:{sf.lport}", kind,
                _rate_cell(r_out * 8, peak), _rate_cell(r_in * 8, peak),
                f"{human_bytes(sf.bytes_out)}/{human_bytes(sf.bytes_in)}",
            )
        tables.append(t)
    return tables


def counters_line(counters: dict) -> Text:
    keys = ("packets", "tcp", "mptcp", "malformed", "unknown", "events_lost")
    return Text("  ".join(f"{k}={counters.get(k, 0)}" for k in keys), style="dim")


def top_view(subflows, rates, counters, header: str) -> Group:
    parts = connection_tables(subflows, rates) or [Text("no MPTCP subflows seen yet", style="dim")]
    return Group(Text(header, style="bold"), *parts, counters_line(counters))
