"""Unit tests for controller/policy.py: what each policy asks for on a client or a server, in
which order, within the kernel's limits; applying the actions (a tiny simulator) and planning
again asks for nothing; backoff helpers and policy parsing."""

import copy
import itertools

import pytest

from controller.errors import BadInput
from controller.model import (
    Announce,
    Connection,
    CreateSubflow,
    DestroySubflow,
    LocalAddr,
    NetState,
    PeerAddr,
    PolicyConfig,
    Remove,
    SetBackup,
    Subflow,
)
from controller.policy import (
    MAX_ANNOUNCED,
    backoff_delay,
    parse_policy,
    plan,
    plan_all,
    should_retry,
)

TOKEN = 0x1234ABCD
SERVER = "10.9.0.1"
SERVER6 = "2001:db8:9::1"
PORT = 443

WIFI = LocalAddr("10.0.1.2", "wifi0", 11, 4)
LTE = LocalAddr("10.0.2.2", "lte0", 12, 4)
ETH = LocalAddr("10.0.3.2", "eth0", 13, 4)
WIFI6 = LocalAddr("2001:db8:1::2", "wifi0", 11, 6)
LTE6 = LocalAddr("2001:db8:2::2", "lte0", 12, 6)

FULLMESH = PolicyConfig()
BACKUP_LTE = PolicyConfig(name="backup", backup_ifaces=frozenset({"lte0"}))


def net_of(*addrs: LocalAddr) -> NetState:
    """Network state with ids 1, 2, ... in the order given (as netmon would assign them)."""
    net = NetState(addrs={a.addr: a for a in addrs})
    for a in addrs:
        net.id_of(a.addr)
    return net


def drop(net: NetState, addr: str) -> None:
    """The address went away (link down or deleted), as netmon would report it."""
    net.update({k: v for k, v in net.addrs.items() if k != addr})


def initial(local: str = WIFI.addr, remote: str = SERVER, lport: int = 40000, **kw) -> Subflow:
    return Subflow(local=local, lport=lport, remote=remote, rport=PORT, **kw)


def client(
    local: LocalAddr = WIFI, remote: str = SERVER, subflows=None, peers=(), **kw
) -> Connection:
    """An established client connection whose initial subflow is local -> remote:PORT."""
    family = local.family
    if subflows is None:
        subflows = [initial(local.addr, remote)]
    return Connection(
        token=TOKEN, family=family, local=local.addr, lport=40000, remote=remote, rport=PORT,
        established=True, subflows=list(subflows), peer_addrs=list(peers), **kw,
    )


def server(local: str = SERVER, remote: str = WIFI.addr, announced=None, **kw) -> Connection:
    return Connection(
        token=TOKEN, family=4, local=local, lport=PORT, remote=remote, rport=40000,
        server_side=True, established=True, subflows=[initial(remote, local)],
        announced=dict(announced or {}), **kw,
    )


def create(la: LocalAddr, loc_id: int, remote: str = SERVER, rport: int = PORT, backup=False):
    return CreateSubflow(TOKEN, la.addr, loc_id, remote, rport, la.ifindex, backup)


def pairs(actions) -> list[tuple[str, str, int]]:
    return [(a.local, a.remote, a.rport) for a in actions if isinstance(a, CreateSubflow)]


def apply(conn: Connection, actions) -> None:
    """Simulate the kernel carrying out `actions` successfully on `conn`."""
    lports = itertools.count(max((s.lport for s in conn.subflows), default=40000) + 1)
    for a in actions:
        if isinstance(a, CreateSubflow):
            conn.subflows.append(Subflow(a.local, next(lports), a.remote, a.rport, a.loc_id,
                                         backup=a.backup, ifindex=a.ifindex))
        elif isinstance(a, DestroySubflow):
            conn.subflows = [s for s in conn.subflows
                             if (s.local, s.lport, s.remote, s.rport)
                             != (a.local, a.lport, a.remote, a.rport)]
        elif isinstance(a, SetBackup):
            for s in conn.subflows:
                if (s.local, s.lport, s.remote, s.rport) == (a.local, a.lport, a.remote, a.rport):
                    s.backup = a.backup
        elif isinstance(a, Announce):
            conn.announced[a.loc_id] = a.addr
        elif isinstance(a, Remove):
            del conn.announced[a.loc_id]
        else:
            raise AssertionError(f"unexpected action {a!r}")


# --- client: fullmesh ----------------------------------------------------------------------

P2 = PeerAddr("10.9.0.2", 0, 1)


@pytest.mark.parametrize(
    "addrs, peers, deny_join_id0, expected",
    [
        pytest.param((WIFI,), (), False, [], id="one local one peer: nothing to add"),
        pytest.param((WIFI, LTE), (), False, [(LTE.addr, SERVER, PORT)],
                     id="second local address joins the initial peer address"),
        pytest.param((WIFI, LTE), (P2,), False,
                     [(WIFI.addr, P2.addr, PORT), (LTE.addr, SERVER, PORT),
                      (LTE.addr, P2.addr, PORT)],
                     id="peer announces a second address: every local joins it"),
        pytest.param((WIFI,), (PeerAddr("10.9.0.2", 8443, 1),), False,
                     [(WIFI.addr, "10.9.0.2", 8443)], id="announced port is used"),
        pytest.param((WIFI, LTE), (), True, [], id="deny_join_id0: no join to the id-0 address"),
        pytest.param((WIFI, LTE), (P2,), True,
                     [(WIFI.addr, P2.addr, PORT), (LTE.addr, P2.addr, PORT)],
                     id="deny_join_id0: announced addresses still joined"),
        pytest.param((WIFI, LTE, WIFI6), (PeerAddr("2001:db8:9::2", 0, 2),), False,
                     [(LTE.addr, SERVER, PORT)], id="IPv4 connection: no IPv6 subflows"),
        pytest.param((WIFI, LocalAddr("10.0.2.2", "lte0", 12, 4, routable=False)), (), False,
                     [], id="address without a route is not used"),
        pytest.param((WIFI, LocalAddr("10.0.1.10", "wifi0", 11, 4)), (), False,
                     [("10.0.1.10", SERVER, PORT)], id="same interface, second address"),
    ],
)
def test_fullmesh_joins_every_local_address_to_every_peer_address(
    addrs, peers, deny_join_id0, expected
):
    conn = client(peers=peers, deny_join_id0=deny_join_id0)
    assert pairs(plan(conn, net_of(*addrs), FULLMESH)) == expected


def test_new_subflow_carries_the_local_address_id_and_interface():
    net = net_of(WIFI, LTE)
    assert plan(client(), net, FULLMESH) == [create(LTE, net.ids[LTE.addr])]


def test_ipv6_connection_pairs_each_family_with_itself():
    # An IPv6 MPTCP socket may carry IPv4 subflows, but never mixed-family ones.
    conn = client(local=WIFI6, remote=SERVER6, peers=[PeerAddr("10.9.0.2", 0, 1)])
    conn.family = 6
    got = pairs(plan(conn, net_of(WIFI6, LTE6, WIFI), FULLMESH))
    assert got == [(WIFI.addr, "10.9.0.2", PORT), (LTE6.addr, SERVER6, PORT)]


def test_existing_subflow_matched_across_address_spellings():
    conn = client(local=WIFI6, remote=SERVER6,
                  subflows=[initial(WIFI6.addr, "2001:0db8:0009:0000::1")])
    conn.family = 6
    assert plan(conn, net_of(WIFI6), FULLMESH) == []


def test_never_more_than_max_subflows_in_total():
    many = [LocalAddr(f"10.0.{i}.2", f"eth{i}", 20 + i, 4) for i in range(1, 6)]
    peers = [PeerAddr(f"10.9.0.{i}", 0, i) for i in range(2, 4)]
    conn = client(local=many[0], peers=peers)
    net = net_of(*many)
    actions = plan(conn, net, FULLMESH)
    assert len(actions) == 7  # 5 locals x 3 peers = 15 wanted; 1 existing + 7 = 8
    # The first pairs in address order are the ones created.
    assert pairs(actions)[:3] == [("10.0.1.2", "10.9.0.2", PORT), ("10.0.1.2", "10.9.0.3", PORT),
                                  ("10.0.2.2", SERVER, PORT)]
    apply(conn, actions)
    assert len(conn.subflows) == 8
    assert plan(conn, net, FULLMESH) == []
    assert len(plan(conn, net, PolicyConfig(max_subflows=4))) == 0
    conn.subflows = conn.subflows[:2]
    assert len(plan(conn, net, PolicyConfig(max_subflows=4))) == 2


def test_subflow_sort_is_numeric_not_textual():
    ten = LocalAddr("10.0.1.10", "eth1", 5, 4)
    nine = LocalAddr("10.0.1.9", "eth2", 6, 4)
    assert pairs(plan(client(), net_of(WIFI, ten, nine), FULLMESH)) == [
        (nine.addr, SERVER, PORT), (ten.addr, SERVER, PORT)]


# --- client: addresses going away ----------------------------------------------------------


def test_address_gone_destroys_first_then_creates_on_the_new_address():
    conn = client(local=WIFI)
    net = net_of(WIFI, LTE)
    drop(net, WIFI.addr)  # wifi went down; lte is still there, its id kept
    assert plan(conn, net, FULLMESH) == [
        DestroySubflow(TOKEN, WIFI.addr, 40000, SERVER, PORT),
        create(LTE, net.ids[LTE.addr]),
    ]


def test_destroying_a_dead_subflow_frees_room_under_the_limit():
    locs = [LocalAddr(f"10.0.{i}.2", f"eth{i}", 20 + i, 4) for i in range(1, 10)]
    subs = [initial(a.addr, lport=40000 + i) for i, a in enumerate(locs[:8])]
    conn = client(local=locs[0], subflows=subs)
    net = net_of(*locs)
    drop(net, locs[3].addr)
    actions = plan(conn, net, FULLMESH)
    assert actions == [DestroySubflow(TOKEN, locs[3].addr, 40003, SERVER, PORT),
                       create(locs[8], net.ids[locs[8].addr])]


def test_subflow_to_an_address_the_peer_removed_is_destroyed():
    conn = client(peers=[P2])
    net = net_of(WIFI)
    apply(conn, plan(conn, net, FULLMESH))
    assert len(conn.subflows) == 2
    conn.peer_addrs = []  # RM_ADDR id 1
    lport = conn.subflows[1].lport
    assert plan(conn, net, FULLMESH) == [DestroySubflow(TOKEN, WIFI.addr, lport, P2.addr, PORT)]


def test_unroutable_address_keeps_its_subflow():
    conn = client(subflows=[initial(), initial(LTE.addr, lport=40001)])
    lte_no_route = LocalAddr(LTE.addr, LTE.ifname, LTE.ifindex, 4, routable=False)
    assert plan(conn, net_of(WIFI, lte_no_route), FULLMESH) == []


# --- client: backup ------------------------------------------------------------------------


def test_backup_policy_creates_backup_subflows_on_backup_interfaces():
    net = net_of(WIFI, LTE, ETH)
    assert plan(client(), net, BACKUP_LTE) == [
        create(LTE, net.ids[LTE.addr], backup=True),
        create(ETH, net.ids[ETH.addr], backup=False),
    ]


def test_backup_policy_promotes_before_creating_and_demotes_last():
    # Initial subflow on lte (not backup), an old backup subflow on wifi: wifi is promoted
    # first, eth is made, then lte is demoted.
    subs = [initial(LTE.addr), initial(WIFI.addr, lport=40001, backup=True)]
    conn = client(local=LTE, subflows=subs)
    net = net_of(WIFI, LTE, ETH)
    assert plan(conn, net, BACKUP_LTE) == [
        SetBackup(TOKEN, WIFI.addr, 40001, SERVER, PORT, False),
        create(ETH, net.ids[ETH.addr]),
        SetBackup(TOKEN, LTE.addr, 40000, SERVER, PORT, True),
    ]


def test_fullmesh_leaves_backup_flags_alone():
    subs = [initial(), initial(LTE.addr, lport=40001, backup=True)]
    assert plan(client(subflows=subs), net_of(WIFI, LTE), FULLMESH) == []


# --- client: ndiffports --------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, existing, max_subflows, expected",
    [
        (1, 1, 8, 0),
        (4, 1, 8, 3),
        (4, 2, 8, 2),
        (4, 5, 8, 0),
        (8, 1, 8, 7),
        (8, 1, 3, 2),
    ],
)
def test_ndiffports_opens_n_subflows_over_the_initial_path(n, existing, max_subflows, expected):
    subs = [initial(lport=40000 + i) for i in range(existing)]
    net = net_of(WIFI, LTE)
    cfg = PolicyConfig(name="ndiffports", ndiffports=n, max_subflows=max_subflows)
    conn = client(subflows=subs, peers=[P2])
    actions = plan(conn, net, cfg)
    assert actions == [create(WIFI, net.ids[WIFI.addr])] * expected
    apply(conn, actions)
    assert plan(conn, net, cfg) == []


def test_ndiffports_respects_deny_join_id0_and_a_vanished_initial_address():
    cfg = PolicyConfig(name="ndiffports", ndiffports=4)
    assert plan(client(deny_join_id0=True), net_of(WIFI), cfg) == []
    net = net_of(WIFI, LTE)
    drop(net, WIFI.addr)
    assert plan(client(), net, cfg) == [DestroySubflow(TOKEN, WIFI.addr, 40000, SERVER, PORT)]


# --- server side ---------------------------------------------------------------------------


def test_server_announces_its_other_addresses():
    s1 = LocalAddr(SERVER, "eth0", 2, 4)
    s2 = LocalAddr("10.9.0.2", "eth1", 3, 4)
    s3 = LocalAddr("10.9.0.3", "eth2", 4, 4)
    s6 = LocalAddr(SERVER6, "eth0", 2, 6)
    norte = LocalAddr("10.9.0.4", "eth3", 5, 4, routable=False)
    net = net_of(s1, s2, s3, s6, norte)
    conn = server(peer_addrs=[P2])
    assert plan(conn, net, FULLMESH) == [
        Announce(TOKEN, s2.addr, net.ids[s2.addr], s2.ifindex),
        Announce(TOKEN, s3.addr, net.ids[s3.addr], s3.ifindex),
    ]
    conn.announced = {net.ids[s2.addr]: s2.addr}
    assert plan(conn, net, FULLMESH) == [Announce(TOKEN, s3.addr, net.ids[s3.addr], s3.ifindex)]
    assert plan(conn, net, PolicyConfig(announce=False)) == []


def test_server_removes_withdrawn_addresses_and_creates_no_subflows():
    s1 = LocalAddr(SERVER, "eth0", 2, 4)
    s2 = LocalAddr("10.9.0.2", "eth1", 3, 4)
    net = net_of(s1, s2)
    conn = server(announced={2: s2.addr, 7: "10.9.0.7"})
    assert plan(conn, net, FULLMESH) == [Remove(TOKEN, 7)]
    assert plan(conn, net, PolicyConfig(announce=False)) == [Remove(TOKEN, 7)]


def test_server_announces_at_most_the_kernel_limit():
    addrs = [LocalAddr(f"10.9.1.{i}", f"eth{i}", i, 4) for i in range(1, 13)]
    net = net_of(LocalAddr(SERVER, "eth0", 100, 4), *addrs)
    conn = server()
    actions = plan(conn, net, FULLMESH)
    assert len(actions) == MAX_ANNOUNCED
    apply(conn, actions)
    assert plan(conn, net, FULLMESH) == []


# --- everywhere ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", [client, server])
def test_connection_not_established_gets_nothing(side):
    conn = side()
    conn.established = False
    net = net_of(WIFI, LTE, LocalAddr("10.9.0.2", "eth1", 3, 4))
    assert plan(conn, net, FULLMESH) == []


def gone_wifi_net():
    net = net_of(WIFI, LTE, ETH)
    drop(net, WIFI.addr)
    return net


@pytest.mark.parametrize(
    "conn, net, cfg",
    [
        pytest.param(client(peers=[P2]), net_of(WIFI, LTE, ETH), FULLMESH, id="fullmesh"),
        pytest.param(client(peers=[P2]), gone_wifi_net(), FULLMESH, id="address gone"),
        pytest.param(client(local=LTE, subflows=[initial(LTE.addr),
                                                 initial(WIFI.addr, lport=1, backup=True)]),
                     net_of(WIFI, LTE, ETH), BACKUP_LTE, id="backup"),
        pytest.param(client(), net_of(WIFI), PolicyConfig(name="ndiffports", ndiffports=5),
                     id="ndiffports"),
        pytest.param(server(announced={9: "10.9.9.9"}),
                     net_of(LocalAddr(SERVER, "eth0", 2, 4), LocalAddr("10.9.0.2", "eth1", 3, 4)),
                     FULLMESH, id="server"),
    ],
)
def test_planning_after_the_actions_took_effect_asks_for_nothing(conn, net, cfg):
    conn = copy.deepcopy(conn)
    actions = plan(conn, net, cfg)
    assert actions
    apply(conn, actions)
    assert plan(conn, net, cfg) == []


def test_plan_leaves_the_connection_alone_and_gives_new_addresses_stable_ids():
    net = NetState(addrs={a.addr: a for a in (ETH, LTE, WIFI)}, ids={WIFI.addr: 1})
    conn = client()
    before = copy.deepcopy(conn)
    actions = plan(conn, net, FULLMESH)
    assert conn == before
    # New addresses get ids in address order; existing ids never move.
    assert net.ids == {WIFI.addr: 1, LTE.addr: 2, ETH.addr: 3}
    assert {a.local: a.loc_id for a in actions} == {LTE.addr: 2, ETH.addr: 3}
    assert plan(conn, net, FULLMESH) == actions  # same input, same answer
    # An address appearing later that sorts first does not renumber the others.
    early = LocalAddr("10.0.0.2", "eth9", 19, 4)
    net.addrs[early.addr] = early
    assert [a.loc_id for a in plan(conn, net, FULLMESH)] == [4, 2, 3]
    assert net.ids == {WIFI.addr: 1, LTE.addr: 2, ETH.addr: 3, early.addr: 4}


def test_plan_all_concatenates_in_token_order():
    net = net_of(WIFI, LTE)
    a, b = client(), client()
    a.token, b.token = 2, 1
    got = plan_all({2: a, 1: b}, net, FULLMESH)
    assert [x.token for x in got] == [1, 2]
    assert plan_all({}, net, FULLMESH) == []


# --- retries -------------------------------------------------------------------------------


def test_backoff_grows_then_stays_at_the_cap():
    delays = [backoff_delay(n) for n in range(12)]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(x <= y for x, y in itertools.pairwise(delays))
    assert max(delays) == 5.0
    assert backoff_delay(10**9) == 5.0
    assert backoff_delay(-3) == pytest.approx(0.1)
    assert backoff_delay(3, base=1.0, cap=2.5) == 2.5
    with pytest.raises(ValueError):
        backoff_delay(1, base=0)


def test_retries_stop_after_max_attempts():
    assert [should_retry(n) for n in range(10)] == [True] * 8 + [False] * 2
    assert should_retry(0, max_attempts=0) is False


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, ifaces, n, expected",
    [
        ("fullmesh", (), 1, PolicyConfig()),
        (" FullMesh ", (), 1, PolicyConfig()),
        ("backup", ("lte0",), 1, BACKUP_LTE),
        ("backup", "lte0, wwan0", 1,
         PolicyConfig(name="backup", backup_ifaces=frozenset({"lte0", "wwan0"}))),
        ("ndiffports", (), 4, PolicyConfig(name="ndiffports", ndiffports=4)),
        ("ndiffports", (), 8, PolicyConfig(name="ndiffports", ndiffports=8)),
    ],
)
def test_parse_policy_accepts(spec, ifaces, n, expected):
    assert parse_policy(spec, ifaces, n) == expected


@pytest.mark.parametrize(
    "spec, ifaces, n, message",
    [
        ("x", (), 1, "unknown policy 'x' (fullmesh, backup, ndiffports)"),
        ("", (), 1, "unknown policy '' (fullmesh, backup, ndiffports)"),
        (None, (), 1, "policy must be a name, got None"),
        ("backup", (), 1, "policy 'backup' needs at least one backup interface"),
        ("backup", ("a/b",), 1, "bad interface name 'a/b'"),
        ("backup", ("x" * 16,), 1, "bad interface name 'xxxxxxxxxxxxxxxx'"),
        ("fullmesh", ("..",), 1, "bad interface name '..'"),
        ("ndiffports", (), 0, "ndiffports must be 1..8, got 0"),
        ("ndiffports", (), 9, "ndiffports must be 1..8, got 9"),
        ("ndiffports", (), "4", "ndiffports must be an integer 1..8, got '4'"),
        ("ndiffports", (), True, "ndiffports must be an integer 1..8, got True"),
    ],
)
def test_parse_policy_rejects(spec, ifaces, n, message):
    with pytest.raises(BadInput) as err:
        parse_policy(spec, ifaces, n)
    assert str(err.value) == message
    assert err.value.exit_code == 2


def test_a_subflow_on_an_address_we_never_managed_is_left_alone():
    """A connection over loopback (or an excluded VPN) keeps its subflow: not ours, not gone."""
    lo = LocalAddr("127.0.0.1", "lo", 1, 4)
    conn = client(local=lo, remote="127.0.0.1",
                  subflows=[initial(local="127.0.0.1", remote="127.0.0.1")])
    assert not any(isinstance(a, DestroySubflow) for a in plan(conn, net_of(WIFI), FULLMESH))
