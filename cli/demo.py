"""`make demo`: build the netns lab, start `mptcpctl up` in the client, run an MPTCP transfer
and watch it live while the network changes under it: lte starts down; wifi dies mid-transfer
and lte comes up half a second later (break-before-make); then wifi returns and the daemon
puts a subflow back on it. Everything is removed at the end."""

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from controller import lab, transfer
from controller.errors import MptcpctlError

from .commands.top import run_top

ROOT = Path(__file__).resolve().parent.parent


def mptcpctl(*args) -> None:
    cp = subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                        text=True, cwd=ROOT)
    if cp.returncode != 0:
        raise MptcpctlError(cp.stderr.strip() or f"mptcpctl {args[0]} failed")


def script(the_lab, seconds: float, console: Console, stop: threading.Event) -> None:
    """The network's story, told while `top` shows it."""
    steps = [
        (0.30, "wifi link down", lambda: lab.set_path(the_lab, "wifi", link=False)),
        (0.30 + 0.5 / seconds, "lte comes up", lambda: lab.set_path(the_lab, "lte", link=True,
                                                                    addr=True)),
        (0.65, "wifi back", lambda: lab.set_path(the_lab, "wifi", link=True, addr=True)),
    ]
    start = time.monotonic()
    for frac, _what, act in steps:
        if stop.wait(max(0.0, start + frac * seconds - time.monotonic())):
            return
        act()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    console = Console()
    the_lab, up = None, False
    result, stop = {}, threading.Event()
    try:
        console.print("[bold]building the lab[/] (client ─ wifi 20M / lte 10M ─ router ─ server)")
        the_lab = lab.lab_up(endpoints=False)
        client = the_lab.client
        lab.set_path(the_lab, "lte", link=False)
        mptcpctl("up", "--netns", client)
        up = True
        console.print(f"mptcpctl up in netns {client}: lte starts down; at 30% wifi dies and "
                      "lte appears 0.5 s later; at 65% wifi returns")
        # Roughly what the paths carry over the story, so the transfer lasts the whole view.
        mbit = 20 * 0.30 + 10 * 0.35 + 30 * 0.35
        nbytes = int(mbit * 1e6 / 8 * args.seconds * 0.95)

        def run():
            try:
                result["res"] = transfer.run_transfer(the_lab, nbytes, timeout=args.seconds * 4)
            except Exception as e:  # reported after the view
                result["err"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        story = threading.Thread(target=script, args=(the_lab, args.seconds, console, stop),
                                 daemon=True)
        story.start()
        run_top(client, 0.25, args.seconds, console)
        console.print()
        t.join(timeout=args.seconds * 4)
        if "err" in result:
            raise result["err"]
        if "res" in result:
            sent, got = result["res"]
            ok = sent["sha256"] == got["sha256"] and sent["bytes"] == got["bytes"]
            console.print(f"transfer: {got['bytes']} bytes in {got['seconds']} s, SHA-256 "
                          + ("[green]intact[/]" if ok else "[red]MISMATCH[/]"))
        return 0
    except MptcpctlError as e:
        console.print(f"mptcpctl: {e}")
        return e.exit_code
    finally:
        stop.set()
        if the_lab is not None:
            if up:
                subprocess.run([sys.executable, "-m", "cli.main", "down", "--netns",
                                the_lab.client], capture_output=True, cwd=ROOT)
            lab.lab_down(the_lab.suffix)
            console.print("lab removed, mptcpctl stopped")


if __name__ == "__main__":
    sys.exit(main())
