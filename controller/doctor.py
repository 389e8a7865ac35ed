"""`mptcpctl doctor`: what stops MPTCP from using every path on this host or namespace, in plain
words with the fix. gather() collects facts (sysctls, netlink dumps, files); evaluate() turns
facts into one Check per rule and never touches the system, so every rule is unit-tested."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import asdict, dataclass

from . import daemon, netmon, sysctl
from . import netns as netnsmod
from .errors import BadInput, MptcpctlError
from .pm import AddrFlag, MptcpPM

STATUSES = ("ok", "info", "warn", "fail")   # ordered from best to worst
MIN_KERNEL = (5, 19)           # the userspace path manager (README: requirements)
MIN_MPTCP_KERNEL = (5, 6)      # first upstream MPTCP
KERNEL_MAX_LIMIT = 8           # the kernel caps both MPTCP limits at 8
RT_TABLE_MAIN = 254
# tables that a source rule must not point to (main, local, default): they are the fallback
SYSTEM_TABLES = (253, RT_TABLE_MAIN, netmon.RT_TABLE_LOCAL)
FIRST_FREE_TABLE = 100         # where suggested per-interface routing tables start
BTF_PATH = "/sys/kernel/btf/vmlinux"
BPFFS_PATH = "/sys/fs/bpf"


@dataclass(frozen=True)
class Check:
    """One rule's verdict: status is ok, info, warn or fail (fail: MPTCP is blocked)."""

    id: str
    status: str
    title: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Facts: plain data, what gather() reads and what unit tests build by hand


@dataclass(frozen=True)
class Iface:
    """An up, non-loopback interface with at least one usable (global) address."""

    name: str
    index: int
    addrs: tuple[str, ...]
    rp_filter: int | None = 0      # net.ipv4.conf.IF.rp_filter


@dataclass(frozen=True)
class Route:
    """A default route (one per nexthop of a multipath route)."""

    family: int                    # 4 or 6
    table: int
    ifname: str | None
    gateway: str | None = None
    metric: int = 0


@dataclass(frozen=True)
class Rule:
    """An `ip rule [from SRC] lookup TABLE`; src None: from all."""

    family: int
    table: int
    src: str | None = None         # "10.0.0.2/32"


@dataclass(frozen=True)
class EndpointInfo:
    """An `ip mptcp endpoint`: flags by name, the interface name when `dev` was given."""

    id: int | None
    addr: str | None
    flags: frozenset[str] = frozenset()
    dev: str | None = None


@dataclass(frozen=True)
class Facts:
    """Everything the rules look at. The defaults describe a healthy single-homed host, so a
    test sets only what its rule reads."""

    netns: str | None = None
    kernel_release: str = "6.18.0"
    mptcp_enabled: str | None = "1"          # net.mptcp.enabled; None: no such sysctl
    path_manager: str | None = "kernel"      # kernel | userspace | other; None: unknown
    pm_sysctl: str = "net.mptcp.path_manager"
    daemon_pid: int | None = None
    limits: tuple[int, int] | None = (2, 1)  # (subflows, add_addr_accepted)
    limits_error: str | None = None
    endpoints: tuple[EndpointInfo, ...] = ()
    endpoints_error: str | None = None
    ifaces: tuple[Iface, ...] = ()
    rp_filter_all: int | None = 0
    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    btf: bool = True
    cgroup2: str | None = "/sys/fs/cgroup"
    bpffs: bool = True
    kernel_headers: bool = True
    bcc_error: str | None = None             # None: `import bcc` works


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the rules


def _where(f: Facts) -> str:
    return f"netns {f.netns}" if f.netns else "this namespace"


def _ip(f: Facts, args: str) -> str:
    """An `ip` command for the namespace doctor looked at."""
    return f"ip -n {f.netns} {args}" if f.netns else f"ip {args}"


def _in_ns(f: Facts, cmd: str) -> str:
    """Any other command, run inside that namespace."""
    return f"ip netns exec {f.netns} {cmd}" if f.netns else cmd


def _mptcpctl(f: Facts, verb: str) -> str:
    return f"mptcpctl {verb} --netns {f.netns}" if f.netns else f"mptcpctl {verb}"


def kernel_version(release: str) -> tuple[int, int] | None:
    """'6.18.44-fc-v657' -> (6, 18); None when it does not start with two numbers."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or "x")
    except (IndexError, ValueError):
        return None


def _family(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def worst(checks: list[Check]) -> str:
    return max((c.status for c in checks), key=STATUSES.index, default="ok")


def blocks_mptcp(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# ---------------------------------------------------------------------------------------------
# Rules: each takes Facts and returns exactly one Check


def check_kernel(f: Facts) -> Check:
    title = "kernel version"
    ver = kernel_version(f.kernel_release)
    if ver is None:
        return Check("kernel", "info", title, f"cannot parse kernel release {f.kernel_release!r}")
    if ver < MIN_MPTCP_KERNEL:
        return Check("kernel", "fail", title,
                     f"kernel {f.kernel_release} predates upstream MPTCP (5.6)",
                     "boot a kernel 5.19 or newer with CONFIG_MPTCP=y")
    if ver < MIN_KERNEL:
        return Check("kernel", "warn", title,
                     f"kernel {f.kernel_release} has MPTCP but no userspace path manager, so "
                     "`mptcpctl up` cannot run (only --pm kernel)",
                     "boot a kernel 5.19 or newer")
    return Check("kernel", "ok", title, f"kernel {f.kernel_release}")


def check_mptcp_enabled(f: Facts) -> Check:
    title = "MPTCP enabled"
    if f.mptcp_enabled is None:
        return Check("mptcp-enabled", "fail", title,
                     "this kernel has no MPTCP (no net.mptcp.enabled sysctl): every "
                     "connection is plain TCP",
                     "boot a kernel built with CONFIG_MPTCP=y (5.19 or newer)")
    if f.mptcp_enabled != "1":
        return Check("mptcp-enabled", "fail", title,
                     f"net.mptcp.enabled={f.mptcp_enabled} in {_where(f)}: applications asking "
                     "for MPTCP silently get plain TCP",
                     _in_ns(f, "sysctl -w net.mptcp.enabled=1"))
    return Check("mptcp-enabled", "ok", title, f"net.mptcp.enabled=1 in {_where(f)}")


def check_path_manager(f: Facts) -> Check:
    title = "path manager"
    pm = f.path_manager
    if pm is None:
        return Check("path-manager", "info", title, "cannot read the path manager sysctl")
    if pm == "userspace" and f.daemon_pid is None:
        value = "kernel" if f.pm_sysctl.endswith("path_manager") else "0"
        return Check("path-manager", "warn", title,
                     f"{f.pm_sysctl} selects the userspace path manager but mptcpctl is not "
                     f"running in {_where(f)}: nobody creates subflows or announces "
                     "addresses, so connections stay on one path",
                     f"{_mptcpctl(f, 'up')}   (or go back to the in-kernel one: "
                     f"{_in_ns(f, f'sysctl -w {f.pm_sysctl}={value}')})")
    if pm == "userspace":
        return Check("path-manager", "ok", title,
                     f"userspace, driven by mptcpctl (pid {f.daemon_pid})")
    if pm == "kernel":
        return Check("path-manager", "ok", title,
                     "in-kernel: subflows follow `ip mptcp endpoint` and `ip mptcp limits`")
    return Check("path-manager", "info", title, f"{f.pm_sysctl}={pm} (not one doctor knows)")


def check_daemon(f: Facts) -> Check:
    title = "mptcpctl daemon"
    if f.daemon_pid is not None:
        return Check("daemon", "ok", title, f"running in {_where(f)} (pid {f.daemon_pid})")
    return Check("daemon", "info", title, f"not running in {_where(f)}",
                 f"{_mptcpctl(f, 'up')}   (only if you want mptcpctl to manage paths)")


def _needed_extra_subflows(f: Facts) -> int:
    """One subflow per extra interface (the initial subflow uses one), at least one."""
    return min(KERNEL_MAX_LIMIT, max(len(f.ifaces) - 1, 1))


def check_limits(f: Facts) -> Check:
    title = "MPTCP limits"
    n = len(f.ifaces)
    if f.path_manager == "userspace":
        return Check("limits", "info", title,
                     "the userspace path manager does not use `ip mptcp limits`"
                     + (f" (now {f.limits[0]} subflows / {f.limits[1]} accepted ADD_ADDRs)"
                        if f.limits else ""))
    if f.limits is None:
        return Check("limits", "warn", title,
                     f"cannot read `ip mptcp limits`: {f.limits_error or 'unknown error'}")
    subflows, accepted = f.limits
    need = _needed_extra_subflows(f)
    problems, status = [], "ok"
    if n >= 2 and subflows == 0:
        status = "fail"
        problems.append(f"subflows limit is 0 with {n} usable interfaces: no extra subflow "
                        "is opened or accepted, so traffic never uses more than one path")
    elif n >= 2 and subflows < n - 1:
        status = "warn"
        problems.append(f"subflows limit is {subflows} but {n} usable interfaces need "
                        f"{n - 1}: some paths stay unused")
    if accepted == 0:
        status = "warn" if status == "ok" else status
        problems.append("add_addr_accepted is 0: addresses the peer announces (ADD_ADDR) are "
                        "ignored, so a multihomed peer cannot add paths")
    if not problems:
        return Check("limits", "ok", title,
                     f"{subflows} subflows / {accepted} accepted ADD_ADDRs, enough for "
                     f"{n} usable interface{'s' if n != 1 else ''}")
    fix = _ip(f, f"mptcp limits set subflows {max(subflows, need)} "
                 f"add_addr_accepted {max(accepted, need)}")
    return Check("limits", status, title, "; ".join(problems), fix)


def _ifname_of(f: Facts, addr: str | None) -> str | None:
    for iface in f.ifaces:
        if addr in iface.addrs:
            return iface.name
    return None


def check_endpoints(f: Facts) -> Check:
    """With the in-kernel PM on a multihomed host, no subflow endpoint = no extra subflow."""
    title = "MPTCP endpoints"
    if f.path_manager == "userspace":
        return Check("endpoints", "info", title,
                     "the userspace path manager does not use `ip mptcp endpoint`")
    if f.endpoints_error:
        return Check("endpoints", "warn", title,
                     f"cannot read `ip mptcp endpoint`: {f.endpoints_error}")
    subflow = [e for e in f.endpoints if "subflow" in e.flags]
    if len(f.ifaces) >= 2 and not subflow:
        primaries = {_primary_ifname(f, 4), _primary_ifname(f, 6)}
        extra = [i for i in f.ifaces if i.name not in primaries] or list(f.ifaces[1:])
        fix = "\n".join(_ip(f, f"mptcp endpoint add {i.addrs[0]} dev {i.name} subflow")
                        for i in extra)
        return Check("endpoints", "warn", title,
                     f"{len(f.ifaces)} usable interfaces but no endpoint with the subflow "
                     "flag: the in-kernel path manager opens no extra subflow from here "
                     "(one per extra interface is needed; skip on the endpoint of the "
                     "interface your default route uses)", fix)
    missing = [e for e in f.endpoints if e.addr and _ifname_of(f, e.addr) is None]
    if missing:
        listed = ", ".join(f"{e.addr} (id {e.id})" for e in missing)
        fix = "\n".join(_ip(f, f"mptcp endpoint delete id {e.id}") for e in missing)
        return Check("endpoints", "warn", title,
                     f"endpoint address not on any up interface: {listed}; the kernel "
                     "cannot open subflows from it", fix)
    return Check("endpoints", "ok", title,
                 f"{len(f.endpoints)} endpoint{'s' if len(f.endpoints) != 1 else ''}, "
                 f"{len(subflow)} with the subflow flag")


def check_endpoint_dev(f: Facts) -> Check:
    title = "endpoints bound to a device"
    loose = [e for e in f.endpoints if "subflow" in e.flags and not e.dev]
    if not loose:
        return Check("endpoint-dev", "ok", title, "every subflow endpoint names its `dev`")
    listed = ", ".join(f"{e.addr} (id {e.id})" for e in loose)
    fixes = []
    for e in loose:
        dev = _ifname_of(f, e.addr) or "IF"
        flags = " ".join(sorted(e.flags))
        fixes.append(_ip(f, f"mptcp endpoint delete id {e.id}") + " && "
                     + _ip(f, f"mptcp endpoint add {e.addr} dev {dev} {flags}"))
    return Check("endpoint-dev", "warn", title,
                 f"subflow endpoint without `dev`: {listed}; its subflows follow the main "
                 "routing table and may leave through the wrong interface", "\n".join(fixes))


def check_endpoint_flags(f: Facts) -> Check:
    title = "endpoint flags"
    bad = [e for e in f.endpoints if {"signal", "fullmesh"} <= e.flags]
    if not bad:
        return Check("endpoint-flags", "ok", title, "no endpoint combines flags that conflict")
    listed = ", ".join(f"{e.addr} (id {e.id})" for e in bad)
    fixes = []
    for e in bad:
        flags = " ".join(sorted(e.flags - {"fullmesh"}))
        dev = f" dev {e.dev}" if e.dev else ""
        fixes.append(_ip(f, f"mptcp endpoint delete id {e.id}") + " && "
                     + _ip(f, f"mptcp endpoint add {e.addr}{dev} {flags}"))
    return Check("endpoint-flags", "fail", title,
                 f"signal and fullmesh on the same endpoint: {listed}; fullmesh applies to "
                 "subflow endpoints only and the kernel's path manager misbehaves with both",
                 "\n".join(fixes))


def check_rp_filter(f: Facts) -> Check:
    title = "reverse-path filter"
    all_value = f.rp_filter_all or 0
    strict = [i.name for i in f.ifaces if max(all_value, i.rp_filter or 0) == 1]
    if not strict:
        return Check("rp-filter", "ok", title, "no usable interface filters strictly")
    if len(f.ifaces) < 2:
        return Check("rp-filter", "ok", title,
                     f"strict on {', '.join(strict)}, harmless with one interface")
    names = ["all"] if all_value == 1 else []
    names += [i.name for i in f.ifaces if i.rp_filter == 1]
    setting = " ".join(f"net.ipv4.conf.{n}.rp_filter=2" for n in names)
    return Check("rp-filter", "warn", title,
                 f"strict rp_filter (1) on {', '.join(strict)} of a multihomed host: replies "
                 "arriving on an interface that is not the route back to the peer are "
                 "dropped, so subflows there stall (the effective value is max(all, IF))",
                 _in_ns(f, f"sysctl -w {setting}") + "   (2 = loose)")


def _primary_ifname(f: Facts, family: int) -> str | None:
    """The interface of the main table's preferred default route."""
    mains = sorted((r for r in f.routes if r.family == family and r.table == RT_TABLE_MAIN),
                   key=lambda r: r.metric)
    return mains[0].ifname if mains else None


def _covering_tables(f: Facts, addr: str) -> list[int]:
    ip = ipaddress.ip_address(addr)
    out = []
    for rule in f.rules:
        if rule.family != ip.version or rule.src is None or rule.table in SYSTEM_TABLES:
            continue
        if ip in ipaddress.ip_network(rule.src, strict=False):
            out.append(rule.table)
    return out


def check_source_routing(f: Facts) -> Check:
    title = "source-address routing"
    fixes, missing = [], []
    used_tables = {r.table for r in f.routes} | {r.table for r in f.rules}
    next_table = FIRST_FREE_TABLE
    checked = False
    for family in (4, 6):
        ifaces = [i for i in f.ifaces if any(_family(a) == family for a in i.addrs)]
        primary = _primary_ifname(f, family)
        if len(ifaces) < 2 or primary is None:
            continue
        checked = True
        for iface in ifaces:
            if iface.name == primary:
                continue
            own = [r for r in f.routes if r.family == family and r.ifname == iface.name]
            gateway = next((r.gateway for r in own if r.gateway), None)
            via = f"via {gateway} " if gateway else "via GATEWAY "
            for addr in (a for a in iface.addrs if _family(a) == family):
                tables = _covering_tables(f, addr)
                with_default = [t for t in tables
                                if any(r.table == t and r.family == family for r in f.routes)]
                if with_default:
                    continue
                dash6 = "-6 " if family == 6 else ""
                if tables:
                    table = tables[0]
                    missing.append(f"{addr} ({iface.name}): table {table} has no default route")
                else:
                    table = next((r.table for r in own if r.table not in SYSTEM_TABLES), None)
                    if table is None:
                        while next_table in used_tables:
                            next_table += 1
                        table = next_table
                        used_tables.add(table)
                    missing.append(f"{addr} ({iface.name}): no `ip rule from {addr}`")
                    fixes.append(_ip(f, f"{dash6}rule add from {addr} table {table}"))
                if not any(r.table == table and r.family == family for r in f.routes):
                    fixes.append(_ip(f, f"{dash6}route add default {via}dev {iface.name} "
                                        f"table {table}"))
    if not checked:
        return Check("source-routing", "ok", title,
                     "one interface per address family (or no default route): nothing to "
                     "steer")
    if not missing:
        return Check("source-routing", "ok", title,
                     "every address off the default-route interface has its own rule")
    fix = "\n".join(fixes)
    if "via GATEWAY" in fix:
        fix += "\n(GATEWAY: the router on that interface's network)"
    return Check("source-routing", "warn", title,
                 "several interfaces but packets from " + "; ".join(missing)
                 + ": subflows from those addresses follow the main default route out of "
                 "the wrong interface and the network drops them", fix)


def check_btf(f: Facts) -> Check:
    if f.btf:
        return Check("btf", "ok", "kernel BTF", f"{BTF_PATH} present")
    return Check("btf", "warn", "kernel BTF",
                 f"{BTF_PATH} missing: the BPF datapath and coupled congestion control "
                 "cannot load", "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_cgroup2(f: Facts) -> Check:
    if f.cgroup2:
        return Check("cgroup2", "ok", "cgroup v2", f"mounted at {f.cgroup2}")
    return Check("cgroup2", "warn", "cgroup v2",
                 "no cgroup v2 hierarchy is mounted: `mptcpctl up` refuses to start",
                 "mount -t cgroup2 none /sys/fs/cgroup")


def check_bpffs(f: Facts) -> Check:
    if f.bpffs:
        return Check("bpffs", "ok", "bpffs", f"mounted at {BPFFS_PATH}")
    return Check("bpffs", "warn", "bpffs",
                 f"bpffs is not mounted at {BPFFS_PATH}: the datapath cannot pin its maps",
                 f"mount -t bpf bpf {BPFFS_PATH}   (make deps does it)")


def check_kernel_headers(f: Facts) -> Check:
    title = "kernel headers"
    where = f"/lib/modules/{f.kernel_release}/build/include/generated"
    if f.kernel_headers:
        return Check("kernel-headers", "ok", title, f"{where} present")
    return Check("kernel-headers", "warn", title,
                 f"{where} missing: BCC cannot compile the datapath", "make deps")


def check_bcc(f: Facts) -> Check:
    if f.bcc_error is None:
        return Check("bcc", "ok", "BCC", "`import bcc` works")
    return Check("bcc", "warn", "BCC",
                 f"`import bcc` fails ({f.bcc_error}): no datapath, no `top`, no `decode`",
                 "make deps   (python3-bpfcc and a venv with --system-site-packages)")


RULES = (check_kernel, check_mptcp_enabled, check_path_manager, check_daemon, check_limits,
         check_endpoints, check_endpoint_dev, check_endpoint_flags, check_rp_filter,
         check_source_routing, check_btf, check_cgroup2, check_bpffs, check_kernel_headers,
         check_bcc)


def evaluate(facts: Facts) -> list[Check]:
    """One Check per rule, in a fixed order."""
    return [rule(facts) for rule in RULES]


def report(checks: list[Check]) -> dict:
    """The --json document."""
    return {"checks": [c.to_dict() for c in checks], "ok": not blocks_mptcp(checks)}


# ---------------------------------------------------------------------------------------------
# Gathering facts from the system


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _path_manager() -> tuple[str | None, str]:
    """(kernel|userspace|raw value, the sysctl's name), read in the current netns."""
    value = sysctl.read("net.mptcp.path_manager")
    if value is not None:
        return value, "net.mptcp.path_manager"
    pm_type = sysctl.read("net.mptcp.pm_type")
    return {"0": "kernel", "1": "userspace"}.get(pm_type or "", pm_type), "net.mptcp.pm_type"


def _flag_names(flags: int) -> frozenset[str]:
    return frozenset(flag.name.lower() for flag in AddrFlag if flags & flag)


def _rtnl_facts() -> dict:
    """Interfaces, default routes and rules of the current netns (pyroute2 dumps)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = {m["index"]: m for m in ipr.get_links()}
        addrs = list(ipr.get_addr())
        routes = list(ipr.get_routes())   # every table (main, local, policy tables)
        rules = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(Exception):   # kernels without policy routing
                rules += list(ipr.get_rules(family=fam))
    names = {i: m.get_attr("IFLA_IFNAME") for i, m in links.items()}
    by_link: dict[int, list[str]] = {}
    for msg in addrs:
        link = links.get(msg["index"])
        if link is None or link["flags"] & netmon.IFF_LOOPBACK or not netmon.link_is_up(link):
            continue
        if netmon.addr_is_usable(msg):
            by_link.setdefault(msg["index"], []).append(
                str(ipaddress.ip_address(netmon.addr_of(msg))))
    ifaces = []
    for index, iface_addrs in sorted(by_link.items()):
        name = names[index]
        rp = _int_or_none(sysctl.read(f"net/ipv4/conf/{name}/rp_filter"))
        ifaces.append(Iface(name, index, tuple(iface_addrs), rp))
    default_routes = []
    for msg in routes:
        if not netmon.is_default(msg) or msg["family"] not in netmon.FAMILIES:
            continue
        family, table = netmon.FAMILIES[msg["family"]], netmon.table_of(msg)
        metric = msg.get_attr("RTA_PRIORITY") or 0
        hops = msg.get_attr("RTA_MULTIPATH")
        if hops:
            for hop in hops:
                default_routes.append(Route(family, table, names.get(hop["oif"]),
                                            hop.get_attr("RTA_GATEWAY"), metric))
        else:
            default_routes.append(Route(family, table, names.get(msg.get_attr("RTA_OIF")),
                                        msg.get_attr("RTA_GATEWAY"), metric))
    rule_facts = []
    for msg in rules:
        if msg["action"] != netmon.FR_ACT_TO_TBL or msg["family"] not in netmon.FAMILIES:
            continue
        src = msg.get_attr("FRA_SRC")
        src = f"{src}/{msg['src_len']}" if src is not None and msg["src_len"] else None
        rule_facts.append(Rule(netmon.FAMILIES[msg["family"]], netmon.table_of(msg), src))
    return {"ifaces": tuple(ifaces), "routes": tuple(default_routes),
            "rules": tuple(rule_facts), "names": names}


def _pm_facts(netns: str | None, names: dict[int, str]) -> dict:
    out: dict = {}
    try:
        with MptcpPM(netns) as pm:
            limits = pm.get_limits()
            out["limits"] = (limits.subflows or 0, limits.add_addr_accepted or 0)
            out["endpoints"] = tuple(
                EndpointInfo(e.id, e.addr, _flag_names(int(e.flags)),
                             names.get(e.ifindex, f"#{e.ifindex}") if e.ifindex else None)
                for e in pm.endpoints())
    except MptcpctlError as exc:
        out.setdefault("limits", None)
        out["limits_error"] = out["endpoints_error"] = str(exc)
    return out


def _bcc_error() -> str | None:
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no BCC
        return str(exc) or type(exc).__name__
    return None


def gather(netns: str | None = None) -> Facts:
    """Read every fact the rules need, for `netns` (None: the current namespace)."""
    if netns and not netnsmod.exists(netns):
        raise BadInput(f"no network namespace named {netns!r} (see `ip netns list`)")
    release = os.uname().release
    with netnsmod.entered(netns):
        enabled = sysctl.read("net.mptcp.enabled")
        pm, pm_sysctl = _path_manager()
        rp_all = _int_or_none(sysctl.read("net.ipv4.conf.all.rp_filter"))
        rtnl = _rtnl_facts()
    pm_facts = _pm_facts(netns, rtnl.pop("names")) if enabled is not None else {
        "limits": None, "limits_error": "no MPTCP in this kernel",
        "endpoints_error": "no MPTCP in this kernel"}
    return Facts(
        netns=netns, kernel_release=release, mptcp_enabled=enabled, path_manager=pm,
        pm_sysctl=pm_sysctl, daemon_pid=daemon.running_pid(netns), rp_filter_all=rp_all,
        btf=os.path.exists(BTF_PATH), cgroup2=daemon.cgroup2_mount(),
        bpffs=os.path.ismount(BPFFS_PATH),
        kernel_headers=os.path.isdir(f"/lib/modules/{release}/build/include/generated"),
        bcc_error=_bcc_error(), **rtnl, **pm_facts,
    )


def diagnose(netns: str | None = None) -> list[Check]:
    """gather() then evaluate()."""
    return evaluate(gather(netns))
