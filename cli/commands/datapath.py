"""`mptcpctl attach` and `mptcpctl detach`: the BPF datapath on interfaces, by hand."""

import click

from controller import datapath as dp

from ..options import netns_option, require_root


@click.command()
@click.option("--iface", "ifaces", multiple=True, metavar="IF", required=True,
              help="Interface to attach to (repeat for several).")
@click.option("--xdp-mode", type=click.Choice(["auto", "native", "generic"]), default="auto",
              show_default=True, help="XDP attach mode.")
@netns_option
def attach(ifaces, xdp_mode, netns):
    """Attach the datapath (XDP ingress + tc egress) to interfaces and pin its maps."""
    require_root("attach")
    flags = {"auto": 0, "generic": 1 << 1, "native": 1 << 2}[xdp_mode]
    state = dp.attach(list(ifaces), netns, flags)
    where = f" in netns {netns}" if netns else ""
    click.echo(f"attached to {', '.join(i.name for i in state.ifaces)}{where}; "
               f"maps pinned in {state.pin_dir}")


@click.command()
@netns_option
def detach(netns):
    """Detach the datapath, remove the clsact qdiscs it added and its pinned maps."""
    require_root("detach")
    if dp.detach(netns):
        click.echo("detached")
    else:
        click.echo("nothing attached" + (f" in netns {netns}" if netns else ""))
