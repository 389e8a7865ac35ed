"""`make demo`: build the netns lab, attach the datapath to the client's two paths, run an
MPTCP transfer over both and show the live per-subflow view; then remove everything."""

import argparse
import sys
import threading

from rich.console import Console

from controller import datapath, lab, transfer
from controller.errors import MptcpctlError

from .commands.top import run_top


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    console = Console()
    the_lab = None
    result = {}
    try:
        console.print("[bold]building the lab[/] (client ─ wifi/lte ─ router ─ server) ...")
        the_lab = lab.lab_up()
        client = the_lab.client
        ifaces = [p.client_if for p in the_lab.paths.values()]
        datapath.attach(ifaces, client)
        console.print(f"datapath attached to {', '.join(ifaces)} in netns {client}")
        # Enough bytes to keep both paths busy for the whole view.
        rate = sum(p.rate_mbit for p in the_lab.paths.values()) * 1e6 / 8
        nbytes = int(rate * args.seconds * 0.9)

        def run():
            try:
                result["res"] = transfer.run_transfer(the_lab, nbytes, timeout=args.seconds * 4)
            except Exception as e:  # reported after the view
                result["err"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        run_top(client, 0.25, args.seconds, console)
        console.print()
        t.join(timeout=args.seconds * 4)
        if "err" in result:
            raise result["err"]
        if "res" in result:
            sent, got = result["res"]
            ok = sent["sha256"] == got["sha256"] and sent["bytes"] == got["bytes"]
            console.print(
                f"transfer: {got['bytes']} bytes, SHA-256 "
                + ("[green]intact[/]" if ok else "[red]MISMATCH[/]")
            )
        return 0
    except MptcpctlError as e:
        console.print(f"mptcpctl: {e}")
        return e.exit_code
    finally:
        if the_lab is not None:
            datapath.detach(the_lab.client)
            lab.lab_down(the_lab.suffix)
            console.print("lab removed, datapath detached")


if __name__ == "__main__":
    sys.exit(main())
