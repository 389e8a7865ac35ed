"""The path manager's picture of the world, as plain data: local addresses (from rtnetlink),
MPTCP connections and their subflows (from mptcp_pm events), and the actions a policy asks for.
Policies are pure functions of these (controller/policy.py); the daemon carries them out."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LocalAddr:
    """A usable local address: on an up, managed interface, with a route out of it."""

    addr: str
    ifname: str
    ifindex: int
    family: int          # 4 or 6
    routable: bool = True  # a route (or default route) can carry traffic from this address

    @property
    def ip(self):
        return ipaddress.ip_address(self.addr)


@dataclass(frozen=True)
class PeerAddr:
    """An address of the peer: its initial one (id 0) or one it announced (ADD_ADDR)."""

    addr: str
    port: int          # 0: the connection's port
    id: int


@dataclass
class Subflow:
    local: str
    lport: int
    remote: str
    rport: int
    loc_id: int | None = None
    rem_id: int | None = None
    backup: bool = False
    ifindex: int | None = None
    established: bool = True


@dataclass
class Connection:
    token: int
    family: int
    local: str              # the initial subflow's local address and port
    lport: int
    remote: str
    rport: int
    server_side: bool = False
    deny_join_id0: bool = False
    established: bool = False
    subflows: list[Subflow] = field(default_factory=list)
    peer_addrs: list[PeerAddr] = field(default_factory=list)  # announced by the peer
    announced: dict[int, str] = field(default_factory=dict)   # our ADD_ADDRs: id -> address
    created_ns: int = 0


@dataclass
class NetState:
    """Local addresses by address string, and the ids we gave them (stable for the daemon's
    life: the userspace PM names local addresses by id in ANNOUNCE/REMOVE/SUBFLOW_CREATE).
    `gone` holds managed addresses that went away (link down, address deleted): their
    subflows are destroyed. An address we never managed (loopback, a VPN the user excluded)
    is not gone, so connections using it are left alone."""

    addrs: dict[str, LocalAddr] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)

    def update(self, addrs: dict[str, LocalAddr]) -> None:
        """Replace the usable addresses with a new snapshot, remembering which went away."""
        self.gone = (self.gone | (set(self.addrs) - set(addrs))) - set(addrs)
        self.addrs = dict(addrs)

    def id_of(self, addr: str) -> int:
        if addr not in self.ids:
            used = set(self.ids.values())
            self.ids[addr] = next(i for i in range(1, 256) if i not in used)
        return self.ids[addr]


@dataclass(frozen=True)
class PolicyConfig:
    name: str = "fullmesh"               # fullmesh | backup | ndiffports
    backup_ifaces: frozenset[str] = frozenset()
    ndiffports: int = 1
    max_subflows: int = 8                # kernel maximum per connection
    announce: bool = True                # server side: announce our other addresses


# --- actions a policy asks for -----------------------------------------------------------


@dataclass(frozen=True)
class CreateSubflow:
    token: int
    local: str
    loc_id: int
    remote: str
    rport: int
    ifindex: int
    backup: bool = False


@dataclass(frozen=True)
class DestroySubflow:
    token: int
    local: str
    lport: int
    remote: str
    rport: int


@dataclass(frozen=True)
class Announce:
    token: int
    addr: str
    loc_id: int
    ifindex: int


@dataclass(frozen=True)
class Remove:
    token: int
    loc_id: int


@dataclass(frozen=True)
class SetBackup:
    token: int
    local: str
    lport: int
    remote: str
    rport: int
    backup: bool


Action = CreateSubflow | DestroySubflow | Announce | Remove | SetBackup
