"""Load-balancer mode end to end in network namespaces: a client with two paths, a router, the
LB node (XDP, generic mode on veth) and three backends that decapsulate IP-in-IP and answer
the client directly (DSR). Every MPTCP connection's subflows must land on one backend, by
token; with token steering off the joins are hashed elsewhere and reset."""

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.lab import ns_exec

from .conftest import netns_with_suffix, require_root, unique_suffix

ROOT = Path(__file__).resolve().parents[2]
VIP, PORT = "198.51.100.80", 80
LAN = "10.32.0"  # router .1, LB .2, backends .11 .12 .13
BACKENDS = [f"{LAN}.{11 + i}" for i in range(3)]
CLIENT_A, CLIENT_B = "10.31.1.2", "10.31.2.2"
# `mptcpctl lb ...` without depending on cli/main.py registering the group.
MPTCPCTL_LB = [sys.executable, "-c",
               "import sys; from cli.main import Group; from cli.commands.lb import lb; "
               "Group(commands={'lb': lb})(sys.argv[1:], prog_name='mptcpctl')", "lb"]

SERVER = textwrap.dedent("""
    # Per connection: [8-byte length, data] -> 32-byte SHA-256, until a zero length.
    import hashlib, socket, struct, threading
    def recvn(c, n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x:
                raise EOFError
            b += x
        return b
    def serve(c):
        try:
            while True:
                (n,) = struct.unpack("!Q", recvn(c, 8))
                if n == 0:
                    break
                h = hashlib.sha256()
                while n:
                    x = c.recv(min(n, 65536))
                    if not x:
                        raise EOFError
                    h.update(x)
                    n -= len(x)
                c.sendall(h.digest())
        except (EOFError, OSError):
            pass
        c.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 80))
    s.listen(256)
    print("listening", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

CLIENT = textwrap.dedent("""
    # Commands on stdin: "open N", "send", "close"; one JSON line answers each.
    import ctypes, hashlib, json, os, socket, struct, sys, time
    VIP = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    def subflows(s):
        elem = 256
        buf = ctypes.create_string_buffer(16 + 8 * elem)
        struct.pack_into("IIII", buf, 0, 16, 0, 0, elem)
        ln = ctypes.c_uint32(len(buf))
        if libc.getsockopt(s.fileno(), 284, 3, buf, ctypes.byref(ln)) != 0:
            return []
        num = struct.unpack_from("I", buf, 4)[0]
        out = []
        for i in range(min(num, 8)):
            off = 16 + i * elem
            port = struct.unpack_from("!H", buf, off + 2)[0]
            out.append([socket.inet_ntoa(buf.raw[off + 4:off + 8]), port])
        return out
    def transfer(s):
        data = os.urandom(65536)
        s.sendall(struct.pack("!Q", len(data)) + data)
        got = b""
        while len(got) < 32:
            x = s.recv(32 - len(got))
            if not x:
                return False
            got += x
        return got == hashlib.sha256(data).digest()
    conns = []
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "open":
            new = []
            for _ in range(int(cmd[1])):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
                s.settimeout(20)
                s.connect((VIP, 80))
                new.append([s, transfer(s)])
            conns += new
            deadline = time.time() + 12
            while time.time() < deadline and any(len(subflows(s)) < 2 for s, _ in new):
                time.sleep(0.2)
            res = [{"ok": ok, "subflows": subflows(s)} for s, ok in new]
        elif cmd[0] == "send":
            res = []
            for s, _ in conns:
                try:
                    res.append({"ok": transfer(s), "subflows": subflows(s)})
                except OSError as e:
                    res.append({"ok": False, "error": str(e), "subflows": []})
        elif cmd[0] == "close":
            for s, _ in conns:
                try:
                    s.sendall(struct.pack("!Q", 0))
                    s.close()
                except OSError:
                    pass
            conns = []
            res = []
        print(json.dumps(res), flush=True)
""")


@dataclass
class LbLab:
    suffix: str
    client: str
    router: str
    lbnode: str
    backends: list[str]
    workdir: Path

    def lb(self, *args, check=True, timeout=120):
        cp = subprocess.run([*MPTCPCTL_LB, *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"lb {' '.join(args)}: {cp.returncode} {cp.stderr}")
        return cp


def sh(*argv):
    cp = subprocess.run(argv, capture_output=True, text=True)
    assert cp.returncode == 0, f"{' '.join(argv)}: {cp.stderr}"
    return cp


def build(suffix: str, workdir: Path) -> LbLab:
    c, r, lbn = f"lbc-{suffix}", f"lbr-{suffix}", f"lbl-{suffix}"
    bes = [f"lbb{i}-{suffix}" for i in range(3)]
    lab = LbLab(suffix, c, r, lbn, bes, workdir)
    for ns in (c, r, lbn, *bes):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        for k in ("all", "default"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0")
    # Client paths: c1 <-> r1 (10.31.1.0/24), c2 <-> r2 (10.31.2.0/24); MTU 1400 so the
    # encapsulated packets (+20 bytes) fit the 1500-byte LAN.
    for i, caddr in ((1, CLIENT_A), (2, CLIENT_B)):
        sh("ip", "-n", r, "link", "add", f"r{i}", "type", "veth", "peer", "name", f"c{i}",
           "netns", c)
        for ns, dev, a in ((c, f"c{i}", caddr), (r, f"r{i}", f"10.31.{i}.1")):
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1400", "up")
            sh("ip", "-n", ns, "addr", "add", f"{a}/24", "dev", dev)
    sh("ip", "-n", c, "route", "add", "default", "via", "10.31.1.1")
    sh("ip", "-n", c, "route", "add", "default", "via", "10.31.2.1", "table", "102")
    sh("ip", "-n", c, "rule", "add", "from", CLIENT_B, "table", "102")
    sh("ip", "-n", c, "mptcp", "limits", "set", "subflows", "2", "add_addr_accepted", "2")
    sh("ip", "-n", c, "mptcp", "endpoint", "add", CLIENT_B, "dev", "c2", "subflow")
    # The server LAN: a bridge in the router with the LB and the backends on it.
    sh("ip", "-n", r, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", r, "link", "set", "br0", "up")
    sh("ip", "-n", r, "addr", "add", f"{LAN}.1/24", "dev", "br0")
    sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for ns, dev, host in ((lbn, "l0", 2), *((b, "b0", 11 + i) for i, b in enumerate(bes))):
        port = f"p{host}"
        sh("ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns)
        sh("ip", "-n", r, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "addr", "add", f"{LAN}.{host}/24", "dev", dev)
        if ns != lbn:  # the LB has no default route: only the backends are reachable
            sh("ip", "-n", ns, "route", "add", "default", "via", f"{LAN}.1")
    sh("ip", "-n", r, "route", "add", f"{VIP}/32", "via", f"{LAN}.2")
    # No offloads on the way in: generic XDP sees wire-sized frames.
    for ns, devs in ((c, ["c1", "c2"]), (r, ["r1", "r2", "p2", "p11", "p12", "p13"]),
                     (lbn, ["l0"])):
        for dev in devs:
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "off", "tso", "off",
               "gso", "off")
    for b in bes:
        # This kernel may lack ipip (CONFIG_NET_IPIP): auto picks the XDP decapsulator then.
        lab.lb("backend-setup", "--vip", VIP, "--netns", b, "--iface", "b0",
               "--xdp-mode", "generic")
        sh("ip", "-n", b, "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "4")
    return lab


def teardown(lab_suffix: str) -> None:
    for ns in netns_with_suffix(lab_suffix):
        if ns.startswith("lbl-"):
            subprocess.run([*MPTCPCTL_LB, "down", "--netns", ns], capture_output=True, cwd=ROOT,
                           timeout=60)
        if ns.startswith("lbb"):
            subprocess.run([*MPTCPCTL_LB, "backend-setup", "--undo", "--vip", VIP, "--netns", ns],
                           capture_output=True, cwd=ROOT, timeout=60)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lblab(tmp_path):
    require_root()
    suffix = unique_suffix()
    servers = []
    try:
        lab = build(suffix, tmp_path)
        (tmp_path / "server.py").write_text(SERVER)
        (tmp_path / "client.py").write_text(CLIENT)
        for b in lab.backends:
            p = subprocess.Popen(["ip", "netns", "exec", b, sys.executable,
                                  str(tmp_path / "server.py")], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            servers.append(p)
            assert p.stdout.readline().strip() == "listening"
        yield lab
    finally:
        for p in servers:
            p.kill()
            p.wait()
        teardown(suffix)
        assert netns_with_suffix(suffix) == [], f"lb lab {suffix} left namespaces behind"
        left = [p.name for p in Path("/run/mptcpctl").glob(f"lb*-{suffix}")]
        assert left == [], f"lb left run files behind: {left}"


class Client:
    def __init__(self, lab: LbLab):
        self.p = subprocess.Popen(["ip", "netns", "exec", lab.client, sys.executable,
                                   str(lab.workdir / "client.py"), VIP], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def cmd(self, line: str) -> list:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        out = self.p.stdout.readline()
        assert out, "the client died"
        return json.loads(out)

    def close(self):
        with_close = self.p.poll() is None
        if with_close:
            self.cmd("close")
            self.p.stdin.close()
        self.p.wait(timeout=30)


def backend_peers(lab: LbLab) -> dict[str, set]:
    """backend namespace -> {(client address, port)} of its established TCP subflows on the VIP."""
    out = {}
    for b in lab.backends:
        text = ns_exec(b, ["ss", "-tnH", "state", "established", f"( sport = :{PORT} )"],
                       capture_output=True, text=True).stdout
        peers = set()
        for line in text.splitlines():
            cols = line.split()
            addr, _, port = cols[-1].rpartition(":")
            peers.add((addr, int(port)))
        out[b] = peers
    return out


def placement(lab: LbLab, conns: list, wait: float = 10.0) -> list[set]:
    """For each connection, the set of backends holding its subflows established. The client's
    subflow list includes joins still connecting (a join SYN dropped while the LB learns the
    token is retransmitted after 1 s), so wait until every listed subflow is established
    somewhere, or `wait` runs out."""
    deadline = time.monotonic() + wait
    while True:
        peers = backend_peers(lab)
        res, missing = [], 0
        for c in conns:
            found = [b for sf in c["subflows"] for b, ps in peers.items() if tuple(sf) in ps]
            missing += len(c["subflows"]) - len(found)
            res.append(set(found))
        if not missing or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def established_subflows(lab: LbLab, conns: list) -> list[int]:
    """For each connection, how many of its subflows are established on some backend."""
    peers = set().union(*backend_peers(lab).values())
    return [sum(tuple(sf) in peers for sf in c["subflows"]) for c in conns]


def lb_up(lab: LbLab, *extra):
    args = ["up", "--vip", f"{VIP}:{PORT}", "--iface", "l0", "--netns", lab.lbnode,
            "--xdp-mode", "generic", *extra]
    for b in BACKENDS:
        args += ["--backend", b]
    lab.lb(*args)


def status(lab: LbLab) -> dict:
    return json.loads(lab.lb("status", "--json", "--netns", lab.lbnode).stdout)


def test_fifty_connections_keep_both_subflows_on_one_backend_and_transfer_intact(lblab):
    lb_up(lblab)
    client = Client(lblab)
    try:
        conns = client.cmd("open 50")
        assert all(c["ok"] for c in conns), "a transfer's SHA-256 did not match"
        assert all(len(c["subflows"]) == 2 for c in conns), [c["subflows"] for c in conns]
        where = placement(lblab, conns)
        assert established_subflows(lblab, conns) == [2] * 50
        assert all(len(w) == 1 for w in where), where
        # Load is spread: every backend serves some connections.
        assert {b for w in where for b in w} == set(lblab.backends)
        again = client.cmd("send")
        assert all(c["ok"] for c in again)
        st = status(lblab)
        assert st["counters"]["join_hit"] >= 50, st["counters"]
        assert st["controller"]["tokens_learned"] >= 50
        assert st["controller"]["token_collisions"] == 0
    finally:
        client.close()
    lblab.lb("down", "--netns", lblab.lbnode)
    assert not ns_exec(lblab.lbnode, ["ip", "-d", "link", "show", "l0"], capture_output=True,
                       text=True).stdout.count("prog/xdp")


def test_without_token_steering_joins_land_on_other_backends_and_are_reset(lblab):
    lb_up(lblab, "--debug-no-token-steering")
    client = Client(lblab)
    try:
        conns = client.cmd("open 30")
        assert all(c["ok"] for c in conns)  # the initial subflow still works
        placement(lblab, conns, wait=3.0)
        single = [n for n in established_subflows(lblab, conns) if n < 2]
        # A join hashed to a backend without the token is reset: about 2 in 3 fail.
        assert len(single) >= 10, f"only {len(single)} of 30 joins failed"
        assert status(lblab)["counters"]["join_hit"] == 0
    finally:
        client.close()


def test_a_backend_removed_mid_run_keeps_its_connections_and_gets_no_new_ones(lblab):
    lb_up(lblab)
    client = Client(lblab)
    try:
        first = client.cmd("open 24")
        before = placement(lblab, first)
        assert all(len(w) == 1 for w in before)
        assert established_subflows(lblab, first) == [2] * 24
        victim_ns = next(iter(before[0]))
        victim = BACKENDS[lblab.backends.index(victim_ns)]
        on_victim = sum(victim_ns in w for w in before)
        lblab.lb("set-backends", "--netns", lblab.lbnode,
                 *sum((["--backend", b] for b in BACKENDS if b != victim), []))
        # Existing connections keep working on the backend they had.
        again = client.cmd("send")
        assert all(c["ok"] for c in again)
        assert placement(lblab, first) == before
        # New connections avoid the removed backend.
        new = client.cmd("open 24")
        assert all(c["ok"] and len(c["subflows"]) == 2 for c in new)
        assert all(victim_ns not in w and len(w) == 1 for w in placement(lblab, new))
        assert established_subflows(lblab, new) == [2] * 24
        st = status(lblab)
        states = {b["addr"]: b["state"] for b in st["backends"]}
        assert states[victim] == "draining"
        assert on_victim >= 1
    finally:
        client.close()


@pytest.mark.parametrize("args,message", [
    (["--vip", f"{LAN}.2:80", "--backend", BACKENDS[0]], "address of this host"),
    (["--vip", f"{VIP}:80", "--backend", "10.99.0.1"], "unreachable"),
    (["--vip", f"{VIP}:80", "--backend", BACKENDS[0], "--backend", BACKENDS[0]], "twice"),
    (["--vip", f"{VIP}", "--backend", BACKENDS[0]], "ADDR:PORT"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(lblab, args, message):
    cp = lblab.lb("up", "--iface", "l0", "--netns", lblab.lbnode, "--xdp-mode", "generic",
                  *args, check=False)
    assert cp.returncode == 2, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1 and message in cp.stderr, cp.stderr
    assert "prog/xdp" not in ns_exec(lblab.lbnode, ["ip", "-d", "link", "show", "l0"],
                                     capture_output=True, text=True).stdout
    assert not Path(f"/run/mptcpctl/{lblab.lbnode}/lb.pid").exists()



def test_foreground_mode_serves_status_and_lb_down_leaves_nothing(lblab):
    args = ["up", "--vip", f"{VIP}:{PORT}", "--iface", "l0", "--netns", lblab.lbnode,
            "--xdp-mode", "generic", "--foreground", "--backend", BACKENDS[0]]
    p = subprocess.Popen([*MPTCPCTL_LB, *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert "Ctrl-C" in p.stdout.readline()
        cp = lblab.lb("status", "--netns", lblab.lbnode)
        assert VIP in cp.stdout and BACKENDS[0] in cp.stdout and "R_B" in cp.stdout
        assert "prog/xdp" in ns_exec(lblab.lbnode, ["ip", "-d", "link", "show", "l0"],
                                     capture_output=True, text=True).stdout
        lblab.lb("down", "--netns", lblab.lbnode)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    assert "prog/xdp" not in ns_exec(lblab.lbnode, ["ip", "-d", "link", "show", "l0"],
                                     capture_output=True, text=True).stdout
    assert not Path(f"/run/mptcpctl/{lblab.lbnode}").exists()
    fwd = ns_exec(lblab.lbnode, ["sysctl", "-n", "net.ipv4.conf.l0.forwarding"],
                  capture_output=True, text=True).stdout.strip()
    assert fwd == "0"
