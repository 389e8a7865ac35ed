"""`mptcpctl top`: a live per-subflow view of the datapath's maps (q quits)."""

import contextlib
import os
import select
import sys
import termios
import time
import tty

import click
from rich.console import Console
from rich.live import Live

from controller import control, daemon, view
from controller.datapath import PinnedDatapath
from controller.errors import MptcpctlError
from controller.netns import entered

from ..options import netns_option, require_root
from ..render import top_view


@contextlib.contextmanager
def _keys():
    """Yield a function returning the key pressed since the last call (or None)."""
    if not sys.stdin.isatty():
        yield lambda: None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        def poll():
            ready, _, _ = select.select([fd], [], [], 0)
            return os.read(fd, 1).decode(errors="ignore") if ready else None
        yield poll
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(netns: str | None, interval: float, duration: float | None, console: Console) -> None:
    with entered(netns):
        dp = PinnedDatapath(netns)
        try:
            _loop(dp, netns, interval, duration, console)
        finally:
            dp.close()


class DaemonFeed:
    """What the daemon adds to the datapath's view, over the control socket: its event log
    (fetched incrementally) and which subflows are alive. None when no daemon runs for this
    namespace: the view then shows the datapath alone."""

    def __init__(self, netns):
        self.path = str(daemon.control_path(netns)) if daemon.running_pid(netns) else None
        self.events, self.since = [], 0.0
        self.mode = ""

    def poll(self):
        """(events, live subflow keys) or (None, None)."""
        if self.path is None:
            return None, None
        try:
            new = control.request(self.path, "events", timeout=0.5, since=self.since)["events"]
            answer = control.request(self.path, "subflows", timeout=0.5)
        except MptcpctlError:
            return self.events, None
        live = answer["subflows"]
        self.mode = f" — pm {answer.get('pm')} — cc {answer.get('cc')}"
        if new:
            self.events = (self.events + new)[-50:]
            self.since = new[-1]["t"]
        return self.events, {(s["local"], s["lport"], s["remote"], s["rport"]) for s in live}


def _loop(dp, netns, interval, duration, console):
    feed = DaemonFeed(netns)
    prev, prev_t = {}, time.monotonic()
    start = prev_t
    where = f"netns {netns}" if netns else "this namespace"
    with _keys() as key, Live(console=console, refresh_per_second=max(4, int(1 / interval)),
                             transient=False) as live:
        while True:
            now = time.monotonic()
            subflows = view.snapshot(dp)
            dt = max(now - prev_t, 1e-3)
            rates = {
                sf.key: (
                    (sf.bytes_out - prev.get(sf.key, (sf.bytes_out, sf.bytes_in))[0]) / dt,
                    (sf.bytes_in - prev.get(sf.key, (sf.bytes_out, sf.bytes_in))[1]) / dt,
                )
                for sf in subflows
            }
            prev = {sf.key: (sf.bytes_out, sf.bytes_in) for sf in subflows}
            prev_t = now
            events, alive = feed.poll()
            if alive is not None:
                # Subflows the daemon closed linger in the datapath's LRU map (and may still
                # flush queued data): list the live ones only.
                subflows = [sf for sf in subflows if sf.key in alive]
            header = (f"mptcpctl top — {where}{feed.mode} — {len(subflows)} subflows — "
                      "q quits")
            live.update(top_view(subflows, rates, dp.counter_values(), header, events))
            if key() in ("q", "Q"):
                return
            if duration is not None and now - start >= duration:
                return
            time.sleep(interval)


@click.command()
@netns_option
@click.option("--interval", type=click.FloatRange(0.05, 10), default=0.25, show_default=True,
              help="Seconds between refreshes.")
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Stop after this many seconds (default: until q).")
def top(netns, interval, duration):
    """Live per-subflow view: throughput, bytes and MPTCP options seen, from the datapath."""
    require_root("top")
    run_top(netns, interval, duration, Console())
