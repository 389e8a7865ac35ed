"""Path-management policies: pure decisions from one connection, the local network and the
configuration to the actions the daemon carries out (subflow create/destroy, ANNOUNCE/REMOVE,
MP_PRIO). No I/O, clocks or globals here; the daemon owns retries and their timing."""

from __future__ import annotations

import ipaddress

from controller.errors import BadInput
from controller.model import (
    Action,
    Announce,
    Connection,
    CreateSubflow,
    DestroySubflow,
    LocalAddr,
    NetState,
    PolicyConfig,
    Remove,
    SetBackup,
    Subflow,
)

# Policy names parse_policy accepts, in the order its error message lists them.
POLICIES = ("fullmesh", "backup", "ndiffports")
# Kernel maximum (and RFC 8684 practice): 8 ADD_ADDRs accepted per connection by the peer.
MAX_ANNOUNCED = 8
# ndiffports shares the kernel's 8-subflow maximum with the initial subflow.
MAX_NDIFFPORTS = 8
# Interface names: at most IFNAMSIZ - 1 = 15 bytes (include/uapi/linux/if.h).
MAX_IFNAME = 15
# Local address ids are a u8 on the wire; 0 is the initial subflow's address.
MAX_LOC_ID = 255
# Exponent ceiling for backoff_delay so huge attempt counts cannot overflow a float.
_MAX_BACKOFF_EXP = 64

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(addr: str) -> _IP:
    """The address as an ip object, IPv4-mapped IPv6 (::ffff:a.b.c.d) folded to IPv4, so that
    textual variants of one address compare equal."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip_key(addr: str) -> tuple[int, int]:
    """Numeric sort key for an address: IPv4 before IPv6, then by value (10.0.0.2 < 10.0.0.10)."""
    ip = _ip(addr)
    return ip.version, int(ip)


def _present(net: NetState) -> dict[_IP, LocalAddr]:
    """Every local address the network state knows, routable or not, by ip object."""
    return {_ip(a.addr): a for a in net.addrs.values()}


def _local_ids(net: NetState) -> dict[str, int]:
    """The id of every local address, assigning ids (NetState.id_of) to new addresses in
    address order so the result does not depend on which connection is planned first. This
    memo in net.ids is the one change plan() makes to its arguments: an id, once given, must
    stay with its address for the daemon's life (the kernel names local addresses by id)."""
    for addr in sorted(net.addrs, key=_ip_key):
        if addr not in net.ids and len(net.ids) < MAX_LOC_ID:
            net.id_of(addr)
    return {addr: net.ids[addr] for addr in net.addrs if addr in net.ids}


def _peer_endpoints(conn: Connection) -> list[tuple[str, int, int]]:
    """(address, port, id) of every peer address we know: the initial one (id 0) first, then
    those the peer announced (port 0 meaning the connection's port), duplicates dropped."""
    seen: set[tuple[_IP, int]] = set()
    out = []
    for addr, port, pid in [(conn.remote, conn.rport, 0)] + [
        (p.addr, p.port or conn.rport, p.id) for p in conn.peer_addrs
    ]:
        key = (_ip(addr), port)
        if key not in seen:
            seen.add(key)
            out.append((addr, port, pid))
    return out


def _families_match(conn: Connection, local: str, remote: str) -> bool:
    """Whether the kernel accepts a subflow local -> remote on this connection: both ends of
    one family, and only IPv4 on an IPv4 MPTCP socket (mptcp_pm_addr_families_match)."""
    lv, rv = _ip(local).version, _ip(remote).version
    return lv == rv and (conn.family != 4 or rv == 4)


def _subflow_key(sub: Subflow) -> tuple:
    return _ip_key(sub.local), sub.lport, _ip_key(sub.remote), sub.rport


def _destroy(conn: Connection, sub: Subflow) -> DestroySubflow:
    return DestroySubflow(conn.token, sub.local, sub.lport, sub.remote, sub.rport)


def _set_backup(conn: Connection, sub: Subflow, backup: bool) -> SetBackup:
    return SetBackup(conn.token, sub.local, sub.lport, sub.remote, sub.rport, backup)


def plan(conn: Connection, net: NetState, cfg: PolicyConfig) -> list[Action]:
    """Everything the daemon should do now so that `conn` matches the policy in `cfg`, given
    the local addresses in `net`. Call it after any change (connection established, subflow
    closed, peer ADD_ADDR/RM_ADDR, local address/link/route up or down); once the returned
    actions have taken effect, calling it again returns [].

    Not established yet: [] (wait for ESTABLISHED).

    Client side (we opened the connection), in this order:
    1. DestroySubflow for subflows whose local address left net.addrs, or whose peer address
       the peer removed (neither the initial address nor in conn.peer_addrs): break before make.
    2. backup policy: SetBackup(False) for backup subflows not on a backup interface.
    3. CreateSubflow for what the policy wants and no live subflow covers, in address order,
       keeping the total (surviving + new, the initial one included) within cfg.max_subflows:
       - fullmesh: every routable local address x every known peer address of the same family
         (the peer's id-0 address skipped when it set deny_join_id0);
       - backup: as fullmesh, with backup=True from addresses on cfg.backup_ifaces;
       - ndiffports: cfg.ndiffports subflows in all over conn.local -> conn.remote:conn.rport
         (the kernel picks each source port); none when the peer denies joins to id 0.
    4. backup policy: SetBackup(True) for other subflows on a backup interface (demoting last,
       so a non-backup path is promoted or made before one is taken away).

    Server side: Remove(id) for our announced addresses that left net.addrs, then (when
    cfg.announce) Announce for each routable local address of the peer's family other than
    conn.local not yet announced, at most MAX_ANNOUNCED in all. Servers create no subflows and
    leave subflows to the client (it may join from addresses we do not manage).

    Local address ids come from NetState.id_of: an address without one is given one (in
    net.ids, the only change plan() makes; see _local_ids). conn and cfg are not modified.
    """
    if not conn.established:
        return []
    if conn.server_side:
        return _plan_server(conn, net, cfg)
    return _plan_client(conn, net, cfg)


def plan_all(conns: dict[int, Connection], net: NetState, cfg: PolicyConfig) -> list[Action]:
    """plan() for every connection, concatenated in token order."""
    actions: list[Action] = []
    for token in sorted(conns):
        actions.extend(plan(conns[token], net, cfg))
    return actions


def _plan_client(conn: Connection, net: NetState, cfg: PolicyConfig) -> list[Action]:
    present = _present(net)
    gone_ips = {_ip(a) for a in net.gone}
    peers = _peer_endpoints(conn)
    known_peers = {(_ip(addr), port) for addr, port, _ in peers}

    destroys: list[Action] = []
    kept: list[Subflow] = []
    for sub in sorted(conn.subflows, key=_subflow_key):
        gone = _ip(sub.local) in gone_ips
        removed = (_ip(sub.remote), sub.rport) not in known_peers
        if gone or removed:
            destroys.append(_destroy(conn, sub))
        else:
            kept.append(sub)

    ids = _local_ids(net)
    if cfg.name == "ndiffports":
        wanted = _ndiffports_wanted(conn, net, cfg, kept, ids)
    else:
        wanted = _fullmesh_wanted(conn, net, cfg, kept, ids, peers)
    room = max(0, cfg.max_subflows - len(kept))
    creates: list[Action] = list(wanted[:room])

    promotes: list[Action] = []
    demotes: list[Action] = []
    if cfg.name == "backup":
        for sub in kept:
            if _ip(sub.local) not in present:
                continue  # not ours to manage
            on_backup = present[_ip(sub.local)].ifname in cfg.backup_ifaces
            if on_backup and not sub.backup:
                demotes.append(_set_backup(conn, sub, True))
            elif sub.backup and not on_backup:
                promotes.append(_set_backup(conn, sub, False))
    return destroys + promotes + creates + demotes


def _fullmesh_wanted(
    conn: Connection,
    net: NetState,
    cfg: PolicyConfig,
    kept: list[Subflow],
    ids: dict[str, int],
    peers: list[tuple[str, int, int]],
) -> list[CreateSubflow]:
    """Missing (local x peer) subflows, sorted by local address, then peer address and port."""
    covered = {(_ip(s.local), _ip(s.remote), s.rport) for s in kept}
    locals_ = [a for a in net.addrs.values() if a.routable and a.addr in ids]
    pairs = []
    for la in locals_:
        for addr, port, pid in peers:
            if pid == 0 and conn.deny_join_id0:
                continue
            if not _families_match(conn, la.addr, addr):
                continue
            if (_ip(la.addr), _ip(addr), port) in covered:
                continue
            pairs.append((la, addr, port))
    pairs.sort(key=lambda p: (_ip_key(p[0].addr), _ip_key(p[1]), p[2]))
    return [
        CreateSubflow(
            token=conn.token,
            local=la.addr,
            loc_id=ids[la.addr],
            remote=addr,
            rport=port,
            ifindex=la.ifindex,
            backup=cfg.name == "backup" and la.ifname in cfg.backup_ifaces,
        )
        for la, addr, port in pairs
    ]


def _ndiffports_wanted(
    conn: Connection,
    net: NetState,
    cfg: PolicyConfig,
    kept: list[Subflow],
    ids: dict[str, int],
) -> list[CreateSubflow]:
    """Enough extra subflows over the initial address pair to make cfg.ndiffports in all."""
    if conn.deny_join_id0:
        return []
    la = _present(net).get(_ip(conn.local))
    if la is None or la.addr not in ids:
        return []
    pair = (_ip(conn.local), _ip(conn.remote), conn.rport)
    have = sum(1 for s in kept if (_ip(s.local), _ip(s.remote), s.rport) == pair)
    create = CreateSubflow(
        token=conn.token,
        local=la.addr,
        loc_id=ids[la.addr],
        remote=conn.remote,
        rport=conn.rport,
        ifindex=la.ifindex,
    )
    return [create] * max(0, cfg.ndiffports - have)


def _plan_server(conn: Connection, net: NetState, cfg: PolicyConfig) -> list[Action]:
    present = _present(net)
    actions: list[Action] = []
    still_announced: set[_IP] = set()
    for loc_id, addr in sorted(conn.announced.items()):
        if _ip(addr) in present:
            still_announced.add(_ip(addr))
        else:
            actions.append(Remove(conn.token, loc_id))
    if not cfg.announce:
        return actions

    ids = _local_ids(net)
    family = _ip(conn.remote).version
    skip = still_announced | {_ip(conn.local)}
    candidates = sorted(
        (
            a
            for a in net.addrs.values()
            if a.routable and a.addr in ids and _ip(a.addr).version == family
            and _ip(a.addr) not in skip
        ),
        key=lambda a: _ip_key(a.addr),
    )
    room = max(0, MAX_ANNOUNCED - len(still_announced))
    actions.extend(Announce(conn.token, a.addr, ids[a.addr], a.ifindex) for a in candidates[:room])
    return actions


def backoff_delay(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry): base * 2**attempt,
    never more than cap. Deterministic; a caller wanting jitter adds it."""
    if base <= 0 or cap <= 0:
        raise ValueError(f"backoff base and cap must be positive, got {base} and {cap}")
    exp = min(max(attempt, 0), _MAX_BACKOFF_EXP)
    return min(cap, base * 2.0**exp)


def should_retry(attempt: int, max_attempts: int = 8) -> bool:
    """Whether retry number `attempt` (0 for the first retry) may still be made."""
    return 0 <= attempt < max_attempts


def parse_policy(
    spec: str, backup_ifaces: str | tuple[str, ...] | frozenset[str] = (), ndiffports: int = 1
) -> PolicyConfig:
    """A PolicyConfig from user input (config file or command line).

    spec: fullmesh | backup | ndiffports (case and surrounding blanks ignored).
    backup_ifaces: interface names, or one comma-separated string ("wlan0,wwan0"); the backup
    policy needs at least one. ndiffports: subflows over the initial path, 1..8.
    Raises BadInput with a one-line message on anything else.
    """
    if not isinstance(spec, str):
        raise BadInput(f"policy must be a name, got {spec!r}")
    name = spec.strip().lower()
    if name not in POLICIES:
        raise BadInput(f"unknown policy {spec!r} ({', '.join(POLICIES)})")

    if isinstance(backup_ifaces, str):
        backup_ifaces = tuple(i.strip() for i in backup_ifaces.split(",") if i.strip())
    ifaces = frozenset(backup_ifaces)
    for ifname in sorted(ifaces, key=str):
        _check_ifname(ifname)
    if name == "backup" and not ifaces:
        raise BadInput("policy 'backup' needs at least one backup interface")

    if isinstance(ndiffports, bool) or not isinstance(ndiffports, int):
        raise BadInput(f"ndiffports must be an integer 1..{MAX_NDIFFPORTS}, got {ndiffports!r}")
    if not 1 <= ndiffports <= MAX_NDIFFPORTS:
        raise BadInput(f"ndiffports must be 1..{MAX_NDIFFPORTS}, got {ndiffports}")
    return PolicyConfig(name=name, backup_ifaces=ifaces, ndiffports=ndiffports)


def _check_ifname(ifname: object) -> None:
    """The kernel's dev_valid_name(): 1..15 bytes, not . or .., no '/', ':' or whitespace."""
    ok = (
        isinstance(ifname, str)
        and 0 < len(ifname.encode()) <= MAX_IFNAME
        and ifname not in (".", "..")
        and not any(c in "/:" or c.isspace() for c in ifname)
    )
    if not ok:
        raise BadInput(f"bad interface name {ifname!r}")
