"""Options and checks shared by several verbs."""

import os

import click

from controller.errors import NotRoot

netns_option = click.option(
    "--netns", "netns", metavar="NAME", default=None,
    help="Act on this network namespace (as in `ip netns`), not the current one.",
)


def require_root(verb: str) -> None:
    if os.geteuid() != 0:
        raise NotRoot(f"`mptcpctl {verb}` needs root (BPF programs and maps)")
