"""`mptcpctl doctor`: check the host (or a namespace) for what keeps MPTCP from using every
path, and say how to fix it. Exit 0 when nothing blocks MPTCP, 1 when something does."""

import json
import sys

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from controller import doctor as doctormod

from ..options import netns_option

SYMBOL = {"ok": ("✓", "green"), "info": ("·", "blue"), "warn": ("!", "yellow"),
          "fail": ("✗", "bold red")}


def checks_table(checks, netns=None) -> Table:
    """One row per check: symbol, check, what's wrong (or what is fine), fix. Fits 80 columns
    by wrapping the text columns."""
    where = f"netns {netns}" if netns else "this namespace"
    t = Table(title=f"mptcpctl doctor — {where}", title_justify="left", title_style="bold",
              box=box.SIMPLE_HEAD, pad_edge=False, show_lines=False, expand=False)
    t.add_column("", no_wrap=True, width=1)
    t.add_column("check", ratio=2, max_width=16, overflow="fold")
    t.add_column("what's wrong", ratio=4, overflow="fold")
    t.add_column("fix", ratio=4, overflow="fold")
    for c in checks:
        sym, style = SYMBOL.get(c.status, ("?", ""))
        t.add_row(Text(sym, style=style), Text(c.title, style=style if c.status == "fail"
                                               else ""),
                  Text(c.detail, style="dim" if c.status in ("ok", "info") else ""),
                  Text(c.fix if c.status not in ("ok", "info") else "", style="cyan"))
    return t


def summary_line(checks) -> Text:
    counts = {s: sum(1 for c in checks if c.status == s) for s in doctormod.STATUSES}
    verdict = ("nothing blocks MPTCP" if not doctormod.blocks_mptcp(checks)
               else "MPTCP is blocked: fix the ✗ rows first")
    style = "bold red" if doctormod.blocks_mptcp(checks) else "bold green"
    return Text.assemble((verdict, style), f"  ({counts['fail']} fail, {counts['warn']} warn, "
                                           f"{counts['ok']} ok, {counts['info']} info)")


@click.command()
@netns_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {\"checks\": [...], \"ok\"}.")
def doctor(netns, as_json):
    """Check MPTCP, the path manager, limits, endpoints, rp_filter, source routing and BPF;
    explain each problem and its fix."""
    checks = doctormod.diagnose(netns)
    if as_json:
        click.echo(json.dumps(doctormod.report(checks), indent=2))
    else:
        console = Console()
        console.print(checks_table(checks, netns))
        console.print(summary_line(checks))
    sys.exit(1 if doctormod.blocks_mptcp(checks) else 0)
