"""Rich renderables built from controller data (one data source for tables and --json)."""

from rich.console import Group
from rich.table import Table
from rich.text import Text

BAR_WIDTH = 16


def human_bytes(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def human_rate(bps: float) -> str:
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if bps < 1000 or unit == "Gbit/s":
            return f"{bps:.1f} {unit}"
        bps /= 1000
    return f"{bps:.1f} Gbit/s"


def bar(value: float, peak: float) -> Text:
    filled = 0 if peak <= 0 else round(BAR_WIDTH * min(value, peak) / peak)
    return Text("█" * filled + "·" * (BAR_WIDTH - filled), style="green")


def subflow_table(subflows, rates: dict | None = None, title: str = "subflows") -> Table:
    """One row per subflow: token, path, direction rates with bars, bytes, options seen."""
    rates = rates or {}
    peak = max((max(r) for r in rates.values()), default=0.0)
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for col in ("token", "iface", "local → remote", "kind", "out", "in", "bytes out/in", "opts"):
        t.add_column(col, no_wrap=True)
    for sf in subflows:
        r_out, r_in = rates.get(sf.key, (0.0, 0.0))
        kind = ("join" if sf.join else "initial") + (" backup" if sf.backup else "")
        opts = " ".join(f"{k.lower().removeprefix('mp_')}:{v}" for k, v in sf.options.items())
        t.add_row(
            sf.token or "?",
            sf.iface,
            f"{sf.local}:{sf.lport} → {sf.remote}:{sf.rport}",
            kind,
            Text.assemble(bar(r_out * 8, peak * 8), f" {human_rate(r_out * 8)}"),
            Text.assemble(bar(r_in * 8, peak * 8), f" {human_rate(r_in * 8)}"),
            f"{human_bytes(sf.bytes_out)}/{human_bytes(sf.bytes_in)}",
            opts,
        )
    return t


def counters_line(counters: dict) -> Text:
    keys = ("packets", "tcp", "mptcp", "malformed", "unknown", "events_lost")
    return Text("  ".join(f"{k}={counters.get(k, 0)}" for k in keys), style="dim")


def top_view(subflows, rates, counters, header: str) -> Group:
    return Group(
        Text(header, style="bold"), subflow_table(subflows, rates), counters_line(counters)
    )
