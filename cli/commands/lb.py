"""`mptcpctl lb ...`: load-balancer mode (bpf/mptcp_lb.c + controller/lb.py): up, down, status,
set-backends on the LB node; backend-setup on each backend."""

import json

import click

from controller import lb as lbmod

from ..options import netns_option, require_root


@click.group()
def lb():
    """Load balancer: steer every subflow of an MPTCP connection to one backend (XDP)."""


@lb.command()
@click.option("--vip", required=True, metavar="ADDR:PORT",
              help="Virtual IP and port: 198.51.100.80:80 or [2001:db8::80]:80.")
@click.option("--backend", "backends", multiple=True, metavar="ADDR",
              help="Backend address (repeat for several).")
@click.option("--iface", required=True, metavar="IF", help="Interface receiving VIP traffic.")
@netns_option
@click.option("--foreground", is_flag=True, help="Run in this process until Ctrl-C.")
@click.option("--unknown-join", type=click.Choice(["drop", "hash"]), default="drop",
              show_default=True, help="What to do with an MP_JOIN SYN whose token is unknown.")
@click.option("--enforce-hmac", is_flag=True,
              help="Drop later packets of a subflow whose ADD_ADDR HMAC check failed.")
@click.option("--xdp-mode", type=click.Choice(sorted(lbmod.XDP_MODES)), default="auto",
              show_default=True, help="XDP attach mode (generic for veth labs).")
@click.option("--debug-no-token-steering", is_flag=True, hidden=True,
              help="Debug: hash MP_JOIN SYNs like new flows (shows why token steering exists).")
def up(vip, backends, iface, netns, foreground, unknown_join, enforce_hmac, xdp_mode,
       debug_no_token_steering):
    """Attach the load balancer to IF and forward VIP traffic to the backends (IP-in-IP)."""
    require_root("lb up")
    addr, port = lbmod.parse_vip(vip)
    opts = lbmod.LbOptions(addr, port, lbmod.parse_backends(list(backends), addr),
                           unknown_join=unknown_join, enforce_hmac=enforce_hmac,
                           no_token_steering=debug_no_token_steering)
    where = f" in netns {netns}" if netns else ""
    if foreground:
        def ready(_lb):
            click.echo(f"load balancer for {vip} on {iface}{where}: "
                       f"{', '.join(opts.backends)} (Ctrl-C stops)")

        lbmod.run_foreground(opts, iface, netns, xdp_mode, ready)
        return
    pid = lbmod.start_background(opts, iface, netns, xdp_mode)
    click.echo(f"load balancer for {vip} on {iface}{where}: {', '.join(opts.backends)} "
               f"(pid {pid})")


@lb.command()
@netns_option
def down(netns):
    """Stop the load balancer, detach its XDP program, remove its run files."""
    require_root("lb down")
    if lbmod.stop(netns):
        click.echo("load balancer stopped")
    else:
        click.echo("no load balancer running" + (f" in netns {netns}" if netns else ""))


@lb.command(name="set-backends")
@click.option("--backend", "backends", multiple=True, metavar="ADDR", required=True)
@netns_option
def set_backends(backends, netns):
    """Replace the backends for new flows; ones left out drain (existing flows stay)."""
    require_root("lb set-backends")
    reply = lbmod.request(netns, {"cmd": "set_backends", "backends": list(backends)})
    b = reply["backends"]
    click.echo(f"active: {', '.join(b['active'])}"
               + (f"; draining: {', '.join(b['draining'])}" if b["draining"] else ""))


def _render(st: dict):
    from rich.console import Group
    from rich.table import Table

    head = Table.grid(padding=(0, 2))
    head.add_row("VIP", st["vip"], "iface", f"{st['iface']}" + (
        f" (netns {st['netns']})" if st.get("netns") else ""))
    head.add_row("unknown joins", st["unknown_join"], "enforce HMAC",
                 "yes" if st["enforce_hmac"] else "no")
    head.add_row("tokens", str(st["tokens"]), "token steering",
                 "on" if st["token_steering"] else "[red]off (debug)[/]")
    be = Table(title="backends")
    be.add_column("address")
    be.add_column("state")
    be.add_column("flows", justify="right")
    for b in st["backends"]:
        be.add_row(b["addr"], b["state"], str(b["flows"]))
    cnt = Table(title="counters")
    cnt.add_column("name")
    cnt.add_column("value", justify="right")
    for k, v in {**st["counters"], **st["controller"]}.items():
        cnt.add_row(k, str(v))
    parts = [head, be, cnt]
    for c in st["token_collisions"]:
        parts.append(f"[yellow]token collision {c['token']}: {', '.join(map(str, c['backends']))}")
    parts.append(f"[dim]{st['join_hmac']}[/]")
    return Group(*parts)


@lb.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@netns_option
def status(as_json, netns):
    """Backends, flows per backend, tokens, counters, HMAC checks, token collisions."""
    require_root("lb status")
    st = lbmod.request(netns, {"cmd": "status"})["status"]
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    from rich.console import Console

    Console().print(_render(st))


@lb.command(name="backend-setup")
@click.option("--vip", required=True, metavar="ADDR",
              help="The VIP (IPv4 or IPv6) this backend serves.")
@click.option("--undo", is_flag=True, help="Remove what backend-setup added.")
@click.option("--decap", type=click.Choice(["auto", "ipip", "ip6tnl", "xdp"]), default="auto",
              show_default=True,
              help="ipip (IPv4 VIP) or ip6tnl (IPv6 VIP) device, or an XDP decapsulator on "
                   "--iface (kernels without them).")
@click.option("--iface", metavar="IF", help="Interface for --decap xdp.")
@click.option("--xdp-mode", type=click.Choice(sorted(lbmod.XDP_MODES)), default="auto",
              show_default=True, help="XDP attach mode for --decap xdp.")
@netns_option
def backend_setup(vip, undo, decap, iface, xdp_mode, netns):
    """Prepare a backend: decapsulation (ipip / ip6tnl device or XDP), VIP on lo; for an IPv4
    VIP rp_filter off and no ARP for the VIP. Sysctls are not restored by --undo."""
    require_root("lb backend-setup")
    done = lbmod.backend_setup(vip, netns, undo, decap, iface, xdp_mode)
    click.echo("\n".join(done) if done else "nothing to do")
