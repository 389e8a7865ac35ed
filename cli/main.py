"""mptcpctl entry point: the click group, shared options, and the one place where controller
errors become one-line messages and exit codes (0 ok, 1 failure, 2 bad usage/input, 3 missing
kernel feature)."""

import sys

import click

from controller.errors import MptcpctlError

from .commands import daemon, datapath, decode, doctor, lab, lb, top


class Group(click.Group):
    """Maps controller errors to `mptcpctl: message` and their exit code; never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MptcpctlError as e:
            click.echo(f"mptcpctl: {e}", err=True)
            sys.exit(e.exit_code)
        except PermissionError as e:
            click.echo(f"mptcpctl: permission denied ({e.strerror}): run as root", err=True)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mptcpctl", prog_name="mptcpctl")
def cli():
    """The userspace half of Linux Multipath TCP."""


cli.add_command(daemon.up)
cli.add_command(daemon.down)
cli.add_command(daemon.status)
cli.add_command(datapath.attach)
cli.add_command(datapath.detach)
cli.add_command(decode.decode)
cli.add_command(doctor.doctor)
cli.add_command(lab.lab)
cli.add_command(lb.lb)
cli.add_command(top.top)


def main():
    cli(prog_name="mptcpctl")


if __name__ == "__main__":
    main()
