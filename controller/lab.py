"""The netns lab: a client with two shaped paths ("wifi", "lte") through a router to a server,
built from the TOPOLOGY description below (data, so the Vagrant lab can read it too), and torn
down in exact mirror order by name alone."""

import ipaddress
import json
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field

from .errors import BadInput, MissingFeature, MptcpctlError, NotRoot

# Everything a lab is, as data. "{sfx}" is the lab's suffix. Walk order = build order; teardown
# walks it backwards. Addresses are private and exist only inside the lab's namespaces.
TOPOLOGY = {
    "nodes": [
        # role, namespace name; "forward" turns on IPv4/IPv6 forwarding
        {"role": "client", "netns": "mptcp-c-{sfx}", "forward": False},
        {"role": "router", "netns": "mptcp-r-{sfx}", "forward": True},
        {"role": "server", "netns": "mptcp-s-{sfx}", "forward": False},
    ],
    "links": [
        # a = the far end (client/server), b = the router; "shape": tbf on both ends' egress;
        # "table": the client's source-routing table for this path
        {
            "name": "wifi",
            "a": {"node": "client", "if": "wifi-{sfx}", "addr": "10.81.1.2/24",
                  "addr6": "fd81:1::2/64"},
            "b": {"node": "router", "if": "rw-{sfx}", "addr": "10.81.1.1/24",
                  "addr6": "fd81:1::1/64"},
            "rate_mbit": 20,
            "shape": True,
            "table": 101,
            "default": True,
        },
        {
            "name": "lte",
            "a": {"node": "client", "if": "lte-{sfx}", "addr": "10.81.2.2/24",
                  "addr6": "fd81:2::2/64"},
            "b": {"node": "router", "if": "rl-{sfx}", "addr": "10.81.2.1/24",
                  "addr6": "fd81:2::1/64"},
            "rate_mbit": 10,
            "shape": True,
            "table": 102,
            "default": False,
            "mptcp_endpoint": True,
        },
        {
            "name": "server",
            "a": {"node": "server", "if": "srv-{sfx}", "addr": "10.81.9.2/24",
                  "addr6": "fd81:9::2/64"},
            "b": {"node": "router", "if": "rs-{sfx}", "addr": "10.81.9.1/24",
                  "addr6": "fd81:9::1/64"},
            "rate_mbit": None,
            "shape": False,
            "table": None,
            "default": True,
        },
    ],
    # tbf parameters shared by every shaper (rate comes from the link)
    "tbf": {"burst": "32kbit", "latency": "50ms"},
    # in-kernel path manager limits on client and server
    "mptcp_limits": {"subflows": 2, "add_addr_accepted": 2},
    # The load-balancer profile of the Vagrant lab (MPTCPCTL_VAGRANT_PROFILE=lb): the server
    # becomes an LB node in front of three backends. The netns LB lab builds the same shape
    # in tests/lab/test_lb_lab.py.
    "lb": {
        "replaces": "server",
        "nodes": [{"role": "lb", "netns": "mptcp-lb-{sfx}", "forward": True},
                  *({"role": f"backend{i}", "netns": f"mptcp-b{i}-{{sfx}}", "forward": False}
                    for i in (1, 2, 3))],
        "links": [{"name": f"backend{i}",
                   "a": {"node": f"backend{i}", "if": "be-{sfx}", "addr": f"10.81.1{i}.2/24",
                         "addr6": f"fd81:1{i}::2/64"},
                   "b": {"node": "lb", "if": f"lb{i}-{{sfx}}", "addr": f"10.81.1{i}.1/24",
                         "addr6": f"fd81:1{i}::1/64"},
                   "rate_mbit": None, "shape": False, "table": None, "default": True}
                  for i in (1, 2, 3)],
    },
}

PATH_NAMES = ("wifi", "lte")
NETNS_PREFIX = "mptcp-"
# interface names are "<prefix>-<sfx>" with the longest prefix "wifi-" (5) and IFNAMSIZ-1 = 15
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_]{1,10}$")
_NETNS_RE = re.compile(r"^mptcp-[crs]-([A-Za-z0-9_]{1,10})$")


class LabError(MptcpctlError):
    """Building or tearing down a lab failed (a command failed; its stderr is in the message)."""


class LabExists(LabError):
    """A lab with this suffix (or one of its namespaces) already exists."""


class NoSuchLab(BadInput):
    """No lab with this suffix exists."""


@dataclass
class Path:
    name: str
    client_if: str
    router_if: str
    client_addr: str
    router_addr: str
    client_addr6: str
    router_addr6: str
    rate_mbit: int | None


@dataclass
class Lab:
    suffix: str
    client: str
    router: str
    server: str
    paths: dict[str, Path] = field(default_factory=dict)
    server_if: str = ""
    server_addr: str = ""
    server_addr6: str = ""
    router_server_if: str = ""

    @property
    def namespaces(self) -> list[str]:
        return [self.client, self.router, self.server]

    def to_dict(self) -> dict:
        return {
            "suffix": self.suffix,
            "namespaces": {"client": self.client, "router": self.router, "server": self.server},
            "paths": {n: vars(p) for n, p in self.paths.items()},
            "server": {"if": self.server_if, "addr": self.server_addr,
                       "addr6": self.server_addr6, "router_if": self.router_server_if},
        }


def _bare(cidr: str) -> str:
    return cidr.split("/")[0]


def _check_suffix(suffix: str) -> None:
    if not SUFFIX_RE.match(suffix or ""):
        raise BadInput(f"bad lab name {suffix!r}: 1-10 characters from [A-Za-z0-9_]")


def _describe(suffix: str, rates: dict[str, int | None] | None = None) -> Lab:
    """The Lab a suffix names, from TOPOLOGY alone (nothing is checked on the system)."""
    rates = rates or {}
    ns = {n["role"]: n["netns"].format(sfx=suffix) for n in TOPOLOGY["nodes"]}
    lab = Lab(suffix=suffix, client=ns["client"], router=ns["router"], server=ns["server"])
    for link in TOPOLOGY["links"]:
        a, b = link["a"], link["b"]
        if link["name"] in PATH_NAMES:
            lab.paths[link["name"]] = Path(
                name=link["name"],
                client_if=a["if"].format(sfx=suffix),
                router_if=b["if"].format(sfx=suffix),
                client_addr=_bare(a["addr"]),
                router_addr=_bare(b["addr"]),
                client_addr6=_bare(a["addr6"]),
                router_addr6=_bare(b["addr6"]),
                rate_mbit=rates.get(link["name"], link["rate_mbit"]),
            )
        else:
            lab.server_if = a["if"].format(sfx=suffix)
            lab.server_addr = _bare(a["addr"])
            lab.server_addr6 = _bare(a["addr6"])
            lab.router_server_if = b["if"].format(sfx=suffix)
    return lab


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise MissingFeature(f"{argv[0]} not found: install iproute2/ethtool") from e
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {msg[-1] if msg else cp.returncode}")
    return cp


def ns_exec(ns: str, argv: list[str], **subprocess_kwargs) -> subprocess.CompletedProcess:
    """Run argv inside netns `ns` (`ip netns exec`); kwargs go to subprocess.run."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **subprocess_kwargs)


def _netns_names() -> list[str]:
    cp = _run(["ip", "netns", "list"])
    # lines look like "name" or "name (id: 3)"
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def list_labs() -> list[str]:
    """Suffixes of every lab with at least one namespace present."""
    found = {m.group(1) for n in _netns_names() if (m := _NETNS_RE.match(n))}
    return sorted(found)


def _router_rates(lab: Lab) -> dict[str, int | None]:
    """Each path's rate as configured on the router's tbf (None when unreadable)."""
    rates: dict[str, int | None] = {}
    for name, p in lab.paths.items():
        cp = _run(["tc", "-n", lab.router, "-j", "qdisc", "show", "dev", p.router_if], check=False)
        rate = None
        try:
            for q in json.loads(cp.stdout or "[]"):
                if q.get("kind") == "tbf":
                    rate = round(int(q["options"]["rate"]) * 8 / 1_000_000)
        except (ValueError, KeyError, TypeError):
            pass
        rates[name] = rate
    return rates


def get_lab(suffix: str) -> Lab | None:
    """Describe the lab with this suffix if any of its namespaces exists, else None."""
    _check_suffix(suffix)
    lab = _describe(suffix)
    present = set(_netns_names())
    if not present.intersection(lab.namespaces):
        return None
    if lab.router in present:
        lab = _describe(suffix, _router_rates(lab))
    return lab


def _build_steps(lab: Lab, wifi_mbit: int, lte_mbit: int, endpoints: bool) -> list[list[str]]:
    """Every command that builds the lab, in order (namespaces and links are made by
    lab_up itself so it knows what it created)."""
    sfx = lab.suffix
    ns = {n["role"]: n["netns"].format(sfx=sfx) for n in TOPOLOGY["nodes"]}
    rates = {"wifi": wifi_mbit, "lte": lte_mbit}
    tbf = TOPOLOGY["tbf"]
    steps: list[list[str]] = []

    def nsx(role, *argv):
        steps.append(["ip", "netns", "exec", ns[role], *argv])

    for node in TOPOLOGY["nodes"]:
        role = node["role"]
        steps.append(["ip", "-n", ns[role], "link", "set", "lo", "up"])
        nsx(role, "sysctl", "-qw", "net.mptcp.enabled=1")
        if node["forward"]:
            nsx(role, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            nsx(role, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    for link in TOPOLOGY["links"]:
        for end in (link["a"], link["b"]):
            dev, role = end["if"].format(sfx=sfx), end["node"]
            steps.append(["ip", "-n", ns[role], "addr", "add", end["addr"], "dev", dev])
            steps.append(["ip", "-n", ns[role], "-6", "addr", "add", end["addr6"], "dev", dev,
                          "nodad"])
            nsx(role, "ethtool", "-K", dev, "gro", "off", "tso", "off", "gso", "off")
            steps.append(["ip", "-n", ns[role], "link", "set", dev, "up"])
            if link["shape"]:
                rate = rates.get(link["name"], link["rate_mbit"])
                steps.append(["tc", "-n", ns[role], "qdisc", "add", "dev", dev, "root", "tbf",
                              "rate", f"{rate}mbit", "burst", tbf["burst"],
                              "latency", tbf["latency"]])

        a, b = link["a"], link["b"]
        dev, role = a["if"].format(sfx=sfx), a["node"]
        gw4, gw6 = _bare(b["addr"]), _bare(b["addr6"])
        if link["table"] is not None:
            # source-address routing: traffic from this path's address leaves by this path
            for fam, src, gw, net in (("-4", a["addr"], gw4, b["addr"]),
                                      ("-6", a["addr6"], gw6, b["addr6"])):
                table = str(link["table"])
                steps.append(["ip", "-n", ns[role], fam, "rule", "add", "from", _bare(src),
                              "table", table, "priority", str(1000 + link["table"])])
                steps.append(["ip", "-n", ns[role], fam, "route", "add",
                              _network(net), "dev", dev, "table", table])
                steps.append(["ip", "-n", ns[role], fam, "route", "add", "default", "via", gw,
                              "dev", dev, "table", table])
        if link["default"]:
            steps.append(["ip", "-n", ns[role], "route", "add", "default", "via", gw4,
                          "dev", dev])
            steps.append(["ip", "-n", ns[role], "-6", "route", "add", "default", "via", gw6,
                          "dev", dev])

    if endpoints:
        lim = TOPOLOGY["mptcp_limits"]
        limits = ["subflows", str(lim["subflows"]), "add_addr_accepted",
                  str(lim["add_addr_accepted"])]
        for role in ("client", "server"):
            steps.append(["ip", "-n", ns[role], "mptcp", "limits", "set", *limits])
        for link in TOPOLOGY["links"]:
            if link.get("mptcp_endpoint"):
                # one per family: the PM only pairs an endpoint with same-family connections
                a = link["a"]
                for key in ("addr", "addr6"):
                    steps.append(["ip", "-n", ns[a["node"]], "mptcp", "endpoint", "add",
                                  _bare(a[key]), "dev", a["if"].format(sfx=sfx), "subflow"])
    return steps


def _network(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).network)


def _links(lab: Lab) -> list[tuple[str, str, str, str]]:
    """(a_netns, a_if, b_netns, b_if) per TOPOLOGY link, in build order."""
    ns = {n["role"]: n["netns"].format(sfx=lab.suffix) for n in TOPOLOGY["nodes"]}
    return [(ns[lk["a"]["node"]], lk["a"]["if"].format(sfx=lab.suffix),
             ns[lk["b"]["node"]], lk["b"]["if"].format(sfx=lab.suffix))
            for lk in TOPOLOGY["links"]]


def lab_up(suffix: str | None = None, wifi_mbit: int = 20, lte_mbit: int = 10,
           endpoints: bool = True) -> Lab:
    """Build a lab; on any failure tear down what this call made and re-raise."""
    if os.geteuid() != 0:
        raise NotRoot("lab up needs root (network namespaces)")
    suffix = suffix or secrets.token_hex(3)
    _check_suffix(suffix)
    for name, rate in (("wifi", wifi_mbit), ("lte", lte_mbit)):
        if not isinstance(rate, int) or rate <= 0:
            raise BadInput(f"{name} rate must be a positive number of Mbit/s, not {rate!r}")
    lab = _describe(suffix, {"wifi": wifi_mbit, "lte": lte_mbit})
    existing = set(_netns_names()).intersection(lab.namespaces)
    if existing:
        raise LabExists(f"lab {suffix!r} already exists ({', '.join(sorted(existing))})")

    made: list[str] = []
    try:
        for ns in lab.namespaces:
            _run(["ip", "netns", "add", ns])
            made.append(ns)
        for a_ns, a_if, b_ns, b_if in _links(lab):
            # created directly in the target namespaces: nothing appears in the host's
            _run(["ip", "link", "add", a_if, "netns", a_ns, "type", "veth",
                  "peer", "name", b_if, "netns", b_ns])
        for argv in _build_steps(lab, wifi_mbit, lte_mbit, endpoints):
            _run(argv)
    except BaseException:
        _teardown(lab, only=set(made))
        raise
    return lab


def _teardown(lab: Lab, only: set[str] | None = None) -> bool:
    """Mirror of lab_up by name: kill what runs inside, delete links (reverse order), then
    namespaces (reverse order). Each step tolerates absence. `only` limits it to those
    namespaces. True if anything existed."""
    present = set(_netns_names()).intersection(lab.namespaces)
    if only is not None:
        present &= only
    if not present:
        return False
    for ns in reversed(lab.namespaces):
        if ns in present:
            _kill_inside(ns)
    for a_ns, a_if, b_ns, b_if in reversed(_links(lab)):
        for ns, dev in ((a_ns, a_if), (b_ns, b_if)):
            if ns in present:
                # deleting one end deletes its peer; the second call finds nothing
                _run(["ip", "-n", ns, "link", "del", dev], check=False)
    for ns in reversed(lab.namespaces):
        if ns in present:
            _run(["ip", "netns", "del", ns], check=False)
    left = set(_netns_names()).intersection(present)
    if left:
        raise LabError(f"could not remove namespace(s) {', '.join(sorted(left))}")
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL processes still running in a lab namespace (the lab's own servers/clients)."""
    cp = _run(["ip", "netns", "pids", ns], check=False)
    for tok in cp.stdout.split():
        if tok.isdigit():
            try:
                os.kill(int(tok), 9)
            except ProcessLookupError:
                pass


def lab_down(suffix: str) -> bool:
    """Tear down the lab with this suffix; never depends on lab_up having finished.
    True if anything existed."""
    if os.geteuid() != 0:
        raise NotRoot("lab down needs root (network namespaces)")
    _check_suffix(suffix)
    return _teardown(_describe(suffix))


if __name__ == "__main__":
    # `python -m controller.lab` prints the topology as JSON (for the Vagrant lab and others)
    print(json.dumps(TOPOLOGY, indent=2))


def set_path(lab: Lab, name: str, *, link: bool | None = None, addr: bool | None = None) -> None:
    """Change one of the client's paths as a real network would: its link down or up, or its
    addresses gone or back (with the routes an address brings, as a DHCP client adds them).
    Used by the demo's handover and by the handover tests."""
    spec = next((lk for lk in TOPOLOGY["links"] if lk["name"] == name), None)
    if spec is None or name not in lab.paths:
        raise BadInput(f"no path named {name!r} (paths: {', '.join(lab.paths)})")
    a, b = spec["a"], spec["b"]
    dev = a["if"].format(sfx=lab.suffix)
    ns = lab.client
    if link is not None:
        _run(["ip", "-n", ns, "link", "set", dev, "up" if link else "down"])
    if addr is None:
        return
    fams = (("-4", a["addr"], b["addr"]), ("-6", a["addr6"], b["addr6"]))
    if not addr:
        for fam, cidr, _ in fams:
            _run(["ip", "-n", ns, fam, "addr", "del", cidr, "dev", dev], check=False)
        return
    for fam, cidr, peer in fams:
        extra = ["nodad"] if fam == "-6" else []
        _run(["ip", "-n", ns, fam, "addr", "replace", cidr, "dev", dev, *extra])
        if spec["table"] is not None:
            table = str(spec["table"])
            _run(["ip", "-n", ns, fam, "route", "replace", _network(peer), "dev", dev,
                  "table", table])
            _run(["ip", "-n", ns, fam, "route", "replace", "default", "via", _bare(peer),
                  "dev", dev, "table", table])
        if spec["default"]:
            _run(["ip", "-n", ns, fam, "route", "replace", "default", "via", _bare(peer),
                  "dev", dev])
