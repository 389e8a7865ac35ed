"""`mptcpctl up`, `down` and `status`: the path-manager daemon's life and what it knows."""

import contextlib
import dataclasses
import json
import logging
import logging.handlers
import os
import select
import sys

import click
from rich.console import Console

from controller import config as configmod
from controller import control, daemon
from controller.errors import MptcpctlError

from ..options import netns_option, require_root
from ..render import status_view

STARTUP_TIMEOUT = 60.0


@click.command()
@netns_option
@click.option("--foreground", is_flag=True, help="Stay in the foreground, log to stderr.")
@click.option("--iface", "ifaces", multiple=True, metavar="IF",
              help="Manage only these interfaces (repeat; default: every up interface).")
@click.option("--exclude", multiple=True, metavar="IF", help="Never manage this interface.")
@click.option("--pm", type=click.Choice(["userspace", "kernel"]), default=None,
              help="userspace: mptcpctl manages paths (default); kernel: your endpoints do.")
@click.option("--policy", type=click.Choice(["fullmesh", "backup", "ndiffports"]),
              default=None, help="Path-management policy (default fullmesh).")
@click.option("--backup", "backup_ifaces", multiple=True, metavar="IF",
              help="Subflows on this interface are backup (implies --policy backup).")
@click.option("--ndiffports", type=click.IntRange(1, 8), default=None,
              help="Subflows over the initial address pair (implies --policy ndiffports).")
@click.option("--cc", type=click.Choice(["lia", "olia", "balia", "uncoupled"]), default=None,
              help="Coupled congestion control (default lia; uncoupled leaves the kernel alone).")
@click.option("--no-datapath", is_flag=True, help="Do not attach the BPF datapath.")
@click.option("--metrics", metavar="ADDR:PORT", default=None,
              help="Serve Prometheus metrics there (PORT alone: 127.0.0.1; [::1]:PORT for IPv6).")
@click.option("--config", "config_file", metavar="FILE", default=None,
              help=f"Settings file (default {configmod.DEFAULT_PATH}, if present).")
@click.option("--fix-dss-checksum", is_flag=True,
              help="Gateway with a payload-rewriting ALG: fix the DSS checksums it breaks "
                   "(docs/dssfix.md).")
def up(netns, foreground, ifaces, exclude, pm, policy, backup_ifaces, ndiffports, cc,
       no_datapath, metrics, config_file, fix_dss_checksum):
    """Start the path manager for this (or --netns) namespace."""
    require_root("up")
    cfg = configmod.load(config_file, required=config_file is not None)
    overrides = {"netns": netns}
    if ifaces:
        overrides["ifaces"] = tuple(ifaces)
    if exclude:
        overrides["exclude"] = tuple(exclude)
    if pm:
        overrides["pm"] = pm
    if backup_ifaces:
        overrides["backup_ifaces"] = tuple(backup_ifaces)
        overrides["policy"] = "backup"
    if ndiffports:
        overrides["ndiffports"] = ndiffports
        overrides["policy"] = "ndiffports"
    if policy:
        overrides["policy"] = policy
    if no_datapath:
        overrides["datapath"] = False
    if cc:
        overrides["cc"] = cc
    if metrics is not None:
        overrides["metrics"] = metrics
    if fix_dss_checksum:
        overrides["fix_dss_checksum"] = True
    cfg = dataclasses.replace(cfg, **overrides).validate()
    pid = daemon.running_pid(netns)
    if pid:
        where = f"netns {netns}" if netns else "this namespace"
        raise MptcpctlError(f"mptcpctl is already running in {where} (pid {pid})")
    if foreground:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s")
        daemon.serve(cfg)
        return
    _daemonize(cfg)


def _daemonize(cfg) -> None:
    """Double fork; the parent waits for the daemon to say it started (or why it did not)."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        answer = _wait_ready(r)
        if not answer.get("ok"):
            code = int(answer.get("code", 1))
            click.echo(f"mptcpctl: {answer.get('error', 'the daemon failed to start')}", err=True)
            sys.exit(code)
        where = f" in netns {cfg.netns}" if cfg.netns else ""
        click.echo(f"mptcpctl running{where} (pid {answer['pid']}, pm {cfg.pm}, "
                   f"policy {cfg.policy}, cc {cfg.cc})")
        return
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _log_to_system(cfg.netns)
    try:
        daemon.serve(cfg, ready_fd=w)
    except MptcpctlError:
        os._exit(1)
    except BaseException as e:  # report anything unexpected to the waiting parent
        with contextlib.suppress(OSError):
            os.write(w, json.dumps({"ok": False, "error": f"daemon crashed: {e}"}).encode())
        logging.getLogger("mptcpctl").exception("daemon crashed")
        os._exit(1)
    os._exit(0)


def _wait_ready(fd: int) -> dict:
    buf = b""
    while b"\n" not in buf:
        ready, _, _ = select.select([fd], [], [], STARTUP_TIMEOUT)
        if not ready:
            return {"ok": False, "error": "the daemon did not report within "
                                          f"{STARTUP_TIMEOUT:.0f}s"}
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    try:
        return json.loads(buf.decode().splitlines()[0])
    except (ValueError, IndexError):
        return {"ok": False, "error": "the daemon exited during start-up"}


def _log_to_system(ns) -> None:
    """The journal/syslog when there is one, else a file under /var/log."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    tag = f"mptcpctl[{os.getpid()}]"
    if os.path.exists("/dev/log"):
        h = logging.handlers.SysLogHandler(address="/dev/log")
        h.setFormatter(logging.Formatter(f"{tag}: %(message)s"))
    else:
        h = logging.FileHandler(f"/var/log/mptcpctl-{ns or 'init'}.log")
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(h)


@click.command()
@netns_option
def down(netns):
    """Stop the daemon; restore sysctls and limits, detach, unpin, remove its files."""
    require_root("down")
    result = daemon.stop_running(netns)
    where = f" in netns {netns}" if netns else ""
    click.echo({"stopped": f"mptcpctl stopped{where}",
                "cleaned": f"cleaned up after a daemon that had died{where}",
                "not running": f"mptcpctl is not running{where}"}[result])


@click.command()
@netns_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(netns, as_json):
    """Connections, subflows, policy, limits, recent events and datapath counters."""
    require_root("status")
    if not daemon.running_pid(netns):
        where = f" in netns {netns}" if netns else ""
        raise MptcpctlError(f"mptcpctl is not running{where} (start it with `mptcpctl up`)")
    data = control.request(str(daemon.control_path(netns)), "status")
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        Console().print(status_view(data))
