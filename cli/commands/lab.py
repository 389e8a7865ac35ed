"""`mptcpctl lab up|down|list`: the netns lab (client with wifi+lte paths, router, server)."""

import json
import os

import click

from controller import lab as lablib
from controller.errors import BadInput, NotRoot


def _need_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise NotRoot(f"lab {verb} needs root (network namespaces): run as root")


def _describe(lab: lablib.Lab) -> list[str]:
    lines = [
        f"lab {lab.suffix}",
        f"  client  {lab.client}",
        f"  router  {lab.router}",
        f"  server  {lab.server}  {lab.server_if} {lab.server_addr} {lab.server_addr6}",
    ]
    for p in lab.paths.values():
        rate = f"{p.rate_mbit}mbit" if p.rate_mbit else "?"
        lines.append(
            f"  path {p.name:<4}  client {p.client_if} {p.client_addr} {p.client_addr6}"
            f"  <-> router {p.router_if} {p.router_addr} {p.router_addr6}  tbf {rate}"
        )
    return lines


@click.group()
def lab():
    """Build or remove a network-namespace lab: client with two paths, router, server."""


@lab.command()
@click.option("--name", "name", metavar="SFX", help="Lab suffix (default: 6 random hex chars).")
@click.option("--wifi-mbit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rate of the wifi path (tbf, both directions).")
@click.option("--lte-mbit", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rate of the lte path (tbf, both directions).")
@click.option("--no-endpoints", is_flag=True,
              help="Do not configure the in-kernel MPTCP path manager (limits, lte endpoint).")
@click.option("--json", "as_json", is_flag=True, help="Print the lab description as JSON.")
def up(name, wifi_mbit, lte_mbit, no_endpoints, as_json):
    """Create a lab and print its namespaces and addresses."""
    _need_root("up")
    built = lablib.lab_up(name, wifi_mbit=wifi_mbit, lte_mbit=lte_mbit,
                          endpoints=not no_endpoints)
    if as_json:
        click.echo(json.dumps(built.to_dict()))
    else:
        click.echo("\n".join(_describe(built)))


@lab.command()
@click.option("--name", "name", metavar="SFX", help="Suffix of the lab to remove.")
@click.option("--all", "all_", is_flag=True, help="Remove every lab (mptcp-[crs]-* namespaces).")
def down(name, all_):
    """Remove a lab (or all of them); an unknown name is an error naming it."""
    if bool(name) == bool(all_):
        raise BadInput("lab down: give exactly one of --name SFX or --all")
    _need_root("down")
    if all_:
        for sfx in lablib.list_labs():
            lablib.lab_down(sfx)
            click.echo(f"removed lab {sfx}")
        return
    if not lablib.lab_down(name):
        raise lablib.NoSuchLab(f"no lab named {name!r} (see `mptcpctl lab list`)")
    click.echo(f"removed lab {name}")


@lab.command("list")
def list_():
    """List the suffixes of existing labs."""
    _need_root("list")
    for sfx in lablib.list_labs():
        click.echo(sfx)
