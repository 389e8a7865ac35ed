"""Load-balancer mode: the XDP program bpf/mptcp_lb.c from Python (load, configure, test-run,
events), the controller logic around it (Maglev table, tokens learned from MP_CAPABLE keys,
ADD_ADDR HMAC checks, backend changes), and its lifecycle (foreground loop or background
process, control socket, `lb down` removing everything). Backend set-up lives here too."""

import contextlib
import ctypes as C
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from . import crypto, maglev, netns
from .abi import Present
from .datapath import BPF_DIR, RUN_ROOT, compile_bpf, require_bpf, scope_name
from .errors import BadInput, DatapathError, MissingFeature, MptcpctlError
from .lb_abi import (
    LB_MAX_BACKENDS,
    BackendFlags,
    ConnFlags,
    Counter,
    EventType,
    Flags,
    LbBackend,
    LbConfig,
    LbConn,
    LbEvent,
    LbFlow,
    LbKey4,
    LbKey6,
)
from .libbpf import PinnedMap, test_run

SOURCE = BPF_DIR / "mptcp_lb.c"
XDP_MODES = {"auto": 0, "generic": 1 << 1, "native": 1 << 2}
# Learned connections the controller remembers (for ADD_ADDR checks and status); oldest go.
MAX_CONNS = 65536
# How often the loop refreshes the backends' neighbour entries (bpf_fib_lookup needs them).
NEIGH_REFRESH_S = 10.0
# How often XDP re-resolves its cached next hop to each backend (lb_config.hop_gen).
HOP_REFRESH_S = 1.0
JOIN_HMAC_NOTE = ("MP_JOIN HMACs are not verified: the LB sees R_A (join SYN) but not R_B, "
                  "which travels in the SYN/ACK that bypasses it (DSR)")


# --- the XDP program -------------------------------------------------------------------------


class LbProgram:
    """One compiled, loaded instance of bpf/mptcp_lb.c with its (private) maps."""

    def __init__(self, cflags: list[str] | None = None, family: int = 4):
        from .bpfload import BPF

        self._BPF = BPF
        # One VIP family per build: each map call site then names one map, which the
        # verifier inlines (a site shared by two maps costs a real call, ~17 ns).
        self.family = family
        cflags = [f"-DLB_VIP_FAMILY={family}", *(cflags or [])]
        self.bpf = compile_bpf(SOURCE, cflags, progs={"mptcp_lb": BPF.XDP,
                                                      "mptcp_lb_decap": BPF.XDP})
        try:
            self.xdp = self.bpf.load_func(b"mptcp_lb", BPF.XDP)
        except Exception as e:  # BCC raises bare Exception for compile and verifier errors
            raise DatapathError(f"loading the load-balancer program failed: {e}") from e
        self.config = self._map("lb_config", C.c_uint32, LbConfig)
        self.backends = self._map("lb_backends", C.c_uint32, LbBackend)
        self.ring = self._map("lb_ring", C.c_uint32, C.c_uint32)
        self.conns = self._map("lb_conns", LbKey6 if family == 6 else LbKey4, LbConn)
        self.tokens = self._map("lb_tokens", C.c_uint32, C.c_uint32)
        self.blocked = self._map("lb_blocked", LbFlow, C.c_uint32)
        self.counters = self._map("lb_counters", C.c_uint32, C.c_uint64 * Counter.LB_CNT_MAX,
                                  percpu=True)
        self._on_event = None
        self._rb_open = False

    def _map(self, name: str, key, value, percpu: bool = False) -> PinnedMap:
        return PinnedMap(self.bpf[name.encode()].map_fd, key, value, percpu)

    def conn_entries(self):
        """(client address, client port, struct lb_conn) of every flow in the tables."""
        for k, v in self.conns.items():
            yield (str(ipaddress.ip_address(bytes(k.saddr))), socket.ntohs(k.sport), v)

    def conn_count(self) -> int:
        return len(self.conns.keys())

    def set_ring(self, table: list[int]) -> None:
        """Write the Maglev table; only slots that change are written."""
        old = getattr(self, "_ring_cache", None)
        for slot, be in enumerate(table):
            if old is None or old[slot] != be:
                self.ring.update(C.c_uint32(slot), C.c_uint32(be))
        self._ring_cache = list(table)

    def run(self, frame: bytes, repeat: int = 1, out_size: int = 4096):
        """(verdict, ns per run, output frame) of the program on one frame."""
        return test_run(self.xdp.fd, frame, repeat, out_size)

    def on_events(self, callback) -> None:
        """Call callback(LbEvent) for each ring-buffer event, from poll()/consume()."""
        self._on_event = callback
        if not self._rb_open:
            def cb(_ctx, data, _size):
                ev = LbEvent.from_buffer_copy(C.string_at(data, C.sizeof(LbEvent)))
                if self._on_event:
                    self._on_event(ev)
                return 0

            self._cb = cb
            self.bpf[b"lb_events"].open_ring_buffer(cb)
            self._rb_open = True

    def poll(self, timeout_ms: int) -> None:
        if self._rb_open:
            self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        if self._rb_open:
            self.bpf.ring_buffer_consume()

    def counter_values(self) -> dict[str, int]:
        per_cpu = self.counters.lookup(C.c_uint32(0)) or []
        return {c.name.removeprefix("LB_CNT_").lower(): sum(v[c] for v in per_cpu)
                for c in Counter if c != Counter.LB_CNT_MAX}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


# --- pure helpers ----------------------------------------------------------------------------


def addr16(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def make_flow(saddr: str, daddr: str, sport: int, dport: int) -> LbFlow:
    f = LbFlow(family=ipaddress.ip_address(saddr).version, proto=6,
               sport=socket.htons(sport), dport=socket.htons(dport))
    f.saddr[:] = addr16(saddr)
    f.daddr[:] = addr16(daddr)
    return f


def flow_tuple(f: LbFlow) -> tuple[str, int, str, int]:
    """(client address, client port, VIP, VIP port) of a flow."""
    n = 4 if f.family == 4 else 16
    return (str(ipaddress.ip_address(bytes(f.saddr[:n]))), socket.ntohs(f.sport),
            str(ipaddress.ip_address(bytes(f.daddr[:n]))), socket.ntohs(f.dport))


def parse_vip(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[IPV6]:PORT` -> (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise BadInput(f"--vip {text!r}: expected ADDR:PORT (e.g. 198.51.100.80:80 or "
                       "[2001:db8::1]:80)")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise BadInput(f"--vip {text!r}: write an IPv6 VIP as [ADDR]:PORT")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError as e:
        raise BadInput(f"--vip {text!r}: {host!r} is not an IP address") from e
    return str(ip), int(port)


def family(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def parse_backends(addrs: list[str], vip: str) -> list[str]:
    if not addrs:
        raise BadInput("no backend given (use --backend ADDR)")
    out = []
    for a in addrs:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError as e:
            raise BadInput(f"--backend {a!r} is not an IP address") from e
        if ip.version != family(vip):
            raise BadInput(f"backend {ip} is IPv{ip.version} but the VIP {vip} is "
                           f"IPv{family(vip)}: backends must be of the VIP's family")
        if str(ip) in out:
            raise BadInput(f"backend {ip} is given twice")
        if str(ip) == vip:
            raise BadInput(f"backend {ip} is the VIP")
        out.append(str(ip))
    if len(out) > LB_MAX_BACKENDS:
        raise BadInput(f"at most {LB_MAX_BACKENDS} backends")
    return out


# --- the controller logic --------------------------------------------------------------------


@dataclass
class Backend:
    id: int
    addr: str
    draining: bool = False
    mac: bytes | None = None  # static next hop (tests)
    ifindex: int = 0


@dataclass
class ConnInfo:
    client_key: int
    server_key: int
    token: int
    backend: int
    flows: set = field(default_factory=set)


@dataclass
class LbOptions:
    vip: str
    port: int
    backends: list[str]
    src: str = "0.0.0.0"
    unknown_join: str = "drop"
    enforce_hmac: bool = False
    no_token_steering: bool = False
    smac: bytes | None = None  # static next hop: source MAC (tests, benchmarks)

    @property
    def flags(self) -> int:
        f = 0
        if self.unknown_join == "hash":
            f |= Flags.LB_F_UNKNOWN_JOIN_HASH
        if self.enforce_hmac:
            f |= Flags.LB_F_ENFORCE_HMAC
        if self.no_token_steering:
            f |= Flags.LB_F_NO_TOKEN_STEERING
        if self.smac is not None:
            f |= Flags.LB_F_STATIC_NEXTHOP
        return f


class LbCore:
    """What the controller does with a loaded program: configuration, backends and their
    Maglev table, tokens from the keys the program reports, ADD_ADDR HMAC checks. No
    interfaces, no sockets: tests drive it with test runs."""

    def __init__(self, prog: LbProgram, opts: LbOptions,
                 static_hops: dict[str, tuple[bytes, int]] | None = None):
        self.prog, self.opts = prog, opts
        self.static_hops = static_hops or {}
        self.backends: list[Backend] = []
        self.conns: OrderedDict[int, ConnInfo] = OrderedDict()  # token -> connection
        self.flow_token: OrderedDict[tuple, int] = OrderedDict()  # flow -> token
        self.collisions: list[dict] = []
        self.stats = {"tokens_learned": 0, "token_collisions": 0,
                      "add_addr_seen": 0, "add_addr_hmac_ok": 0, "add_addr_hmac_failed": 0,
                      "add_addr_unverifiable": 0, "flows_blocked": 0}
        self.family = family(opts.vip)
        if prog.family != self.family:
            raise BadInput(f"VIP {opts.vip} is IPv{self.family} but the program was built for "
                           f"IPv{prog.family}")
        cfg = LbConfig(vip_port=socket.htons(opts.port), family=self.family, flags=opts.flags,
                       hop_gen=1)
        cfg.vip[:] = addr16(opts.vip)
        cfg.src[:] = addr16(opts.src)
        if opts.smac is not None:
            cfg.smac[:] = opts.smac
        prog.config.update(C.c_uint32(0), cfg)
        self._cfg = cfg
        self.set_backends(opts.backends)
        prog.on_events(self.handle_event)

    # backends

    def set_backends(self, addrs: list[str]) -> dict:
        """Make `addrs` the backends for new flows. A backend left out is drained: the Maglev
        table no longer names it, but flows and tokens already on it keep going there."""
        addrs = parse_backends(addrs, self.opts.vip)
        by_addr = {b.addr: b for b in self.backends}
        for a in addrs:
            b = by_addr.get(a)
            if b is None:
                if len(self.backends) >= LB_MAX_BACKENDS:
                    raise BadInput(f"at most {LB_MAX_BACKENDS} backends over a run")
                mac, ifindex = self.static_hops.get(a, (None, 0))
                b = Backend(len(self.backends), a, mac=mac, ifindex=ifindex)
                self.backends.append(b)
            b.draining = False
        for b in self.backends:
            if b.addr not in addrs:
                b.draining = True
            self._write_backend(b)
        table = maglev.build_table({b.id: b.addr for b in self.backends if not b.draining})
        self.prog.set_ring(table)
        self.opts.backends = addrs
        self.refresh_hops()
        return {"active": addrs, "draining": [b.addr for b in self.backends if b.draining]}

    def refresh_hops(self) -> None:
        """Make XDP resolve its next hop to each backend again (bpf_fib_lookup once per
        backend and CPU, at the next packet to it)."""
        self._cfg.hop_gen = self._cfg.hop_gen % 0xFFFFFFFF + 1
        self.prog.config.update(C.c_uint32(0), self._cfg)

    def _write_backend(self, b: Backend) -> None:
        v = LbBackend(family=self.family, flags=BackendFlags.LB_BE_IN_USE
                      | (BackendFlags.LB_BE_DRAINING if b.draining else 0), ifindex=b.ifindex)
        v.addr[:] = addr16(b.addr)
        if b.mac:
            v.mac[:] = b.mac
        self.prog.backends.update(C.c_uint32(b.id), v)

    def backend_addr(self, idx: int) -> str | None:
        return self.backends[idx].addr if 0 <= idx < len(self.backends) else None

    # events

    def handle_event(self, ev: LbEvent) -> None:
        try:
            if ev.type == EventType.LB_EV_KEYS:
                self._on_keys(ev)
            elif ev.type == EventType.LB_EV_ADD_ADDR:
                self._on_add_addr(ev)
        except MptcpctlError:
            pass  # a map write failed: the next event retries; traffic is not held up

    def _remember_flow(self, flow: tuple, token: int) -> None:
        self.flow_token[flow] = token
        self.flow_token.move_to_end(flow)
        while len(self.flow_token) > MAX_CONNS * 8:
            self.flow_token.popitem(last=False)

    def _on_keys(self, ev: LbEvent) -> None:
        # The client sends the third ACK / first data: key_a is its key, key_b the server's.
        client_key, server_key = ev.opt.key_a, ev.opt.key_b
        token = crypto.token(server_key)
        flow = flow_tuple(ev.flow)
        old = self.tokens_get(token)
        if old is not None and old != ev.backend:
            self.stats["token_collisions"] += 1
            self.collisions.append({"token": f"{token:08x}", "backends": [
                self.backend_addr(old), self.backend_addr(ev.backend)]})
            del self.collisions[:-32]
        self.prog.tokens.update(C.c_uint32(token), C.c_uint32(ev.backend))
        self.stats["tokens_learned"] += 1
        info = ConnInfo(client_key, server_key, token, ev.backend, {flow})
        self.conns[token] = info
        self.conns.move_to_end(token)
        while len(self.conns) > MAX_CONNS:
            self.conns.popitem(last=False)
        self._remember_flow(flow, token)

    def tokens_get(self, token: int) -> int | None:
        v = self.prog.tokens.lookup(C.c_uint32(token))
        return None if v is None else v.value

    def _on_add_addr(self, ev: LbEvent) -> None:
        self.stats["add_addr_seen"] += 1
        flow = flow_tuple(ev.flow)
        # A join's token travels with the event (XDP keeps it in lb_conns); the initial
        # subflow's is known from its keys.
        token = ev.token if ev.conn_flags & ConnFlags.LB_CONN_JOIN else self.flow_token.get(flow)
        info = self.conns.get(token) if token is not None else None
        if info is None:
            self.stats["add_addr_unverifiable"] += 1
            return
        o = ev.opt
        n = 4 if o.version == 4 else 16
        addr = str(ipaddress.ip_address(bytes(o.addr[:n])))
        port = o.port if o.present & Present.HAS_PORT else None
        want = crypto.add_addr_hmac(info.client_key, info.server_key, o.addr_id, addr, port)
        if bytes(o.data[:8]) == want:
            self.stats["add_addr_hmac_ok"] += 1
            return
        self.stats["add_addr_hmac_failed"] += 1
        if self.opts.enforce_hmac:
            # Every known subflow of the connection goes on the blocklist: the initial one
            # and every join XDP steered with this token.
            flows = set(info.flows) | {flow}
            for addr, port, v in self.prog.conn_entries():
                if v.flags & ConnFlags.LB_CONN_JOIN and v.token == info.token:
                    flows.add((addr, port, self.opts.vip, self.opts.port))
            for f in flows:
                self.prog.blocked.update(make_flow(f[0], f[2], f[1], f[3]), C.c_uint32(1))
                self.stats["flows_blocked"] += 1

    # status

    def status(self, conn_counts: bool = True) -> dict:
        counts = {b.id: 0 for b in self.backends}
        if conn_counts:
            for _, _, v in self.prog.conn_entries():
                if v.backend in counts:
                    counts[v.backend] += 1
        return {
            "vip": (f"[{self.opts.vip}]:{self.opts.port}" if self.family == 6
                    else f"{self.opts.vip}:{self.opts.port}"),
            "unknown_join": self.opts.unknown_join,
            "enforce_hmac": self.opts.enforce_hmac,
            "token_steering": not self.opts.no_token_steering,
            "backends": [{"addr": b.addr, "state": "draining" if b.draining else "active",
                          "flows": counts.get(b.id, 0)} for b in self.backends],
            "tokens": len(self.prog.tokens.keys()),
            "counters": self.prog.counter_values(),
            "controller": dict(self.stats),
            "token_collisions": list(self.collisions),
            "join_hmac": JOIN_HMAC_NOTE,
        }


# --- run files -------------------------------------------------------------------------------


def run_dir(ns: str | None) -> Path:
    return RUN_ROOT / scope_name(ns)


def pid_file(ns: str | None) -> Path:
    return run_dir(ns) / "lb.pid"


def sock_path(ns: str | None) -> Path:
    return run_dir(ns) / "lb.sock"


def state_path(ns: str | None) -> Path:
    return run_dir(ns) / "lb.json"


def log_path(ns: str | None) -> Path:
    return run_dir(ns) / "lb.log"


def read_state(path: Path) -> dict:
    """A state file of ours (lb.json, lb-backend*.json); {} when it is missing or is not one
    we wrote (then what it names is left as it is): an XDP interface comes with its flags."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(state, dict) or not isinstance(state.get("forwarding_sysctl") or "", str):
        return {}
    if "iface" in state and not (isinstance(state["iface"], str)
                                 and type(state.get("xdp_flags")) is int):
        return {}
    return state


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def running_pid(ns: str | None) -> int | None:
    try:
        pid = int(pid_file(ns).read_text().strip())
    except (OSError, ValueError):
        return None
    # 0 and -1 are no process: kill() would reach our group or every process (stop SIGKILLs)
    return pid if pid > 0 and _pid_alive(pid) else None


# --- checks at `lb up` (run inside the namespace) --------------------------------------------


def _ip_json(*argv: str):
    cp = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True)
    if cp.returncode != 0:
        return None
    try:
        return json.loads(cp.stdout or "null")
    except ValueError:
        return None


def local_addresses() -> set[str]:
    out = set()
    for link in _ip_json("addr", "show") or []:
        for a in link.get("addr_info", []):
            out.add(a.get("local"))
    return out


def check_up(opts: LbOptions, iface: str) -> str:
    """Validate an `lb up` in the current namespace; returns the outer source address."""
    if not _ip_json("link", "show", "dev", iface):
        raise BadInput(f"no interface named {iface!r}")
    if opts.vip in local_addresses():
        raise BadInput(f"VIP {opts.vip} is an address of this host: the LB forwards the VIP "
                       "and must not own it (the backends hold it on lo)")
    src = None
    for b in opts.backends:
        if b in local_addresses():
            raise BadInput(f"backend {b} is an address of this host")
        route = _ip_json("route", "get", b)
        if not route:
            raise BadInput(f"backend {b} is unreachable: no route to it")
        r = route[0]
        if r.get("type", "unicast") != "unicast" or r.get("dev") == "lo":
            raise BadInput(f"backend {b} is unreachable: route type {r.get('type')}")
        src = src or r.get("prefsrc")
    if not src:
        raise BadInput("no source address toward the backends")
    return src


def refresh_neighbours(addrs: list[str]) -> None:
    """Make the kernel resolve each backend's next hop (bpf_fib_lookup only reads the
    neighbour table): a zero-length UDP datagram to the discard port is enough."""
    for a in addrs:
        fam = socket.AF_INET6 if family(a) == 6 else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
            s.sendto(b"", (a, 9))


def forwarding_sysctl(iface: str, fam: int) -> str:
    """bpf_fib_lookup answers only for an interface with forwarding on (per family)."""
    return f"net.ipv6.conf.{iface}.forwarding" if fam == 6 else f"net.ipv4.conf.{iface}.forwarding"


# --- the running load balancer ---------------------------------------------------------------


class LoadBalancer:
    """LbCore attached to an interface, with a control socket; serve() runs until stopped.
    Create it inside the namespace it serves."""

    def __init__(self, opts: LbOptions, iface: str, ns: str | None, xdp_mode: str = "auto"):
        self.ns, self.iface = ns, iface
        self.xdp_flags = XDP_MODES[xdp_mode]
        opts.src = check_up(opts, iface)
        self.prog = LbProgram(family=family(opts.vip))
        self.core = None
        self.sock = None
        self.stopping = False
        self.restore_forwarding = False
        self.fwd = forwarding_sysctl(iface, family(opts.vip))
        try:
            self.core = LbCore(self.prog, opts)
            refresh_neighbours(opts.backends)
            run_dir(ns).mkdir(parents=True, exist_ok=True)
            # bpf_fib_lookup answers only for an interface with forwarding on.
            if _sysctl_get(self.fwd) == "0":
                self.restore_forwarding = True
                _sysctl(self.fwd, "1")
            state_path(ns).write_text(json.dumps({"iface": iface, "xdp_flags": self.xdp_flags,
                                                  "pid": os.getpid(),
                                                  "restore_forwarding": self.restore_forwarding,
                                                  "forwarding_sysctl": self.fwd}))
            try:
                self.prog._BPF.attach_xdp(iface.encode(), self.prog.xdp, self.xdp_flags)
            except Exception as e:
                raise DatapathError(f"attaching XDP to {iface} failed: {e}") from e
            self._open_socket()
            pid_file(ns).write_text(f"{os.getpid()}\n")
        except BaseException:
            self.close()
            raise

    def _open_socket(self) -> None:
        path = sock_path(self.ns)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        os.chmod(path, 0o600)
        s.listen(8)
        s.setblocking(False)
        self.sock = s

    def _serve_client(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            req = json.loads(data or b"{}")
            cmd = req.get("cmd")
            if cmd == "status":
                reply = {"ok": True, "status": self.status()}
            elif cmd == "stop":
                self.stopping = True
                reply = {"ok": True}
            elif cmd == "set_backends":
                try:
                    reply = {"ok": True, "backends": self.core.set_backends(req["backends"])}
                except BadInput as e:
                    reply = {"ok": False, "error": str(e), "exit_code": e.exit_code}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}", "exit_code": 2}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def status(self) -> dict:
        st = self.core.status()
        st.update({"iface": self.iface, "netns": self.ns, "pid": os.getpid()})
        return st

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        last_neigh = last_hop = time.monotonic()
        while not self.stopping:
            self.prog.poll(50)
            while True:
                r, _, _ = select.select([self.sock], [], [], 0)
                if not r:
                    break
                try:
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    break
                self._serve_client(conn)
            if time.monotonic() - last_hop > HOP_REFRESH_S:
                with contextlib.suppress(MptcpctlError):
                    self.core.refresh_hops()
                last_hop = time.monotonic()
            if time.monotonic() - last_neigh > NEIGH_REFRESH_S:
                refresh_neighbours([b.addr for b in self.core.backends])
                last_neigh = time.monotonic()

    def close(self) -> None:
        _detach_xdp(self.iface, self.xdp_flags)
        if self.restore_forwarding:
            with contextlib.suppress(OSError):
                _sysctl(self.fwd, "0")
        if self.sock:
            self.sock.close()
        self.prog.close()
        _remove_run_files(self.ns)


def _detach_xdp(iface: str, flags: int) -> None:
    from .bpfload import BPF

    with contextlib.suppress(Exception):
        BPF.remove_xdp(iface.encode(), flags)


def _remove_run_files(ns: str | None) -> None:
    for p in (sock_path(ns), pid_file(ns), state_path(ns)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    with contextlib.suppress(OSError):
        run_dir(ns).rmdir()


def run_foreground(opts: LbOptions, iface: str, ns: str | None, xdp_mode: str = "auto",
                   ready=None) -> None:
    """Run the load balancer in this process until SIGTERM/SIGINT or `lb down`."""
    if ns:
        netns.enter_for_good(ns)
    if running_pid(ns):
        raise BadInput("the load balancer is already running" + (f" in netns {ns}" if ns else "")
                       + "; run `mptcpctl lb down` first")
    lb = LoadBalancer(opts, iface, ns, xdp_mode)
    try:
        if ready:
            ready(lb)
        lb.serve()
    finally:
        lb.close()


def start_background(opts: LbOptions, iface: str, ns: str | None, xdp_mode: str = "auto",
                     timeout: float = 60.0) -> int:
    """Start `python -m controller.lb` in its own session and wait until its control socket
    answers; returns its pid. Its failure becomes ours (same message and exit code)."""
    if running_pid(ns):
        raise BadInput("the load balancer is already running" + (f" in netns {ns}" if ns else "")
                       + "; run `mptcpctl lb down` first")
    spec = json.dumps({"opts": vars(opts) | {"smac": None}, "iface": iface, "ns": ns,
                       "xdp_mode": xdp_mode})
    run_dir(ns).mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    with open(log_path(ns), "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "controller.lb", spec], cwd=root,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = child.poll()
        if rc is not None:
            lines = log_path(ns).read_text().strip().splitlines()
            msg = lines[-1] if lines else f"exited with {rc}"
            _remove_run_files(ns)
            with contextlib.suppress(FileNotFoundError):
                log_path(ns).unlink()
            with contextlib.suppress(OSError):
                run_dir(ns).rmdir()
            err = BadInput(msg.removeprefix("mptcpctl: ")) if rc == 2 else DatapathError(msg)
            raise err
        with contextlib.suppress(MptcpctlError):
            request(ns, {"cmd": "status"}, timeout=1.0)
            return child.pid
        time.sleep(0.1)
    child.terminate()
    raise DatapathError("the load balancer did not start in time (see " + str(log_path(ns)) + ")")


def request(ns: str | None, req: dict, timeout: float = 5.0) -> dict:
    """One request to the running load balancer's control socket."""
    path = sock_path(ns)
    if not path.exists():
        raise BadInput("the load balancer is not running" + (f" in netns {ns}" if ns else "")
                       + " (start it with `mptcpctl lb up`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise DatapathError(f"the load balancer's control socket: {e}") from e
    try:
        reply = json.loads(data)
    except ValueError as e:
        raise DatapathError("the load balancer sent a broken reply") from e
    if not reply.get("ok"):
        err = BadInput if reply.get("exit_code") == 2 else DatapathError
        raise err(reply.get("error", "request failed"))
    return reply


def stop(ns: str | None, timeout: float = 15.0) -> bool:
    """Stop the load balancer of `ns` and remove everything it left (also after a crash: the
    XDP program on its interface, its run files). True if anything was there."""
    pid = running_pid(ns)
    found = pid is not None or state_path(ns).exists() or sock_path(ns).exists()
    if pid:
        with contextlib.suppress(MptcpctlError):
            request(ns, {"cmd": "stop"}, timeout=2.0)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    state = read_state(state_path(ns))
    if "iface" in state and (not ns or netns.exists(ns)):
        with netns.entered(ns):
            _detach_xdp(state["iface"], state["xdp_flags"])
            if state.get("restore_forwarding"):
                with contextlib.suppress(OSError):
                    _sysctl(state.get("forwarding_sysctl")
                            or f"net.ipv4.conf.{state['iface']}.forwarding", "0")
    _remove_run_files(ns)
    with contextlib.suppress(FileNotFoundError):
        log_path(ns).unlink()
    with contextlib.suppress(OSError):
        run_dir(ns).rmdir()
    return found


# --- backend set-up --------------------------------------------------------------------------


def _sh(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(argv, capture_output=True, text=True)
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise DatapathError(f"`{' '.join(argv)}` failed: {msg[-1] if msg else cp.returncode}")
    return cp


def _sysctl_get(name: str) -> str:
    return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()


def _sysctl(name: str, value: str) -> None:
    Path("/proc/sys/" + name.replace(".", "/")).write_text(value)


def backend_state_path(ns: str | None, fam: int = 4) -> Path:
    return run_dir(ns) / ("lb-backend6.json" if fam == 6 else "lb-backend.json")


# The kernel tunnel device decapsulating what the LB sends, per VIP family: (name, `ip link`
# type and arguments, kernel option).
TUNNEL_DEV = {4: ("mptcplb0", ["ipip", "external"], "CONFIG_NET_IPIP"),
              6: ("mptcplb6", ["ip6tnl", "external", "mode", "ip6ip6"], "CONFIG_IPV6_TUNNEL")}
DECAP_KIND = {4: "ipip", 6: "ip6tnl"}


def tunnel_supported(fam: int = 4) -> bool:
    """Whether this kernel can create the family's tunnel device (ipip or ip6tnl)."""
    name, kind, _ = TUNNEL_DEV[fam]
    if _ip_json("link", "show", "dev", name):
        return True
    probe = f"mptcplbprobe{fam}"
    cp = _sh(["ip", "link", "add", "name", probe, "type", *kind], check=False)
    if cp.returncode == 0:
        _sh(["ip", "link", "del", probe], check=False)
        return True
    return False


def ipip_supported() -> bool:
    """Whether this kernel can create an ipip device (CONFIG_NET_IPIP)."""
    return tunnel_supported(4)


def _attach_decap(iface: str, flags: int) -> None:
    require_bpf()
    from .bpfload import BPF

    if not _ip_json("link", "show", "dev", iface):
        raise BadInput(f"no interface named {iface!r}")
    b = compile_bpf(SOURCE, progs={"mptcp_lb_decap": BPF.XDP})
    try:
        fn = b.load_func(b"mptcp_lb_decap", BPF.XDP)
        BPF.attach_xdp(iface.encode(), fn, flags)
    except Exception as e:
        raise DatapathError(f"attaching the XDP decapsulator to {iface} failed: {e}") from e
    # The attachment outlives this process; the maps the compile created go with it.


def backend_setup(vip: str, ns: str | None, undo: bool = False, decap: str = "auto",
                  iface: str | None = None, xdp_mode: str = "auto") -> list[str]:
    """Prepare this host (or `ns`) to be a backend: decapsulation of what the LB sends (an
    ipip or ip6tnl device in collect-metadata mode, or where the kernel has none, the XDP
    program mptcp_lb_decap on `iface`, which takes both families), the VIP on lo, and for an
    IPv4 VIP rp_filter off on the device and `all`, ARP neither answered nor announced for
    the VIP. Returns what was done."""
    try:
        ip = ipaddress.ip_address(vip)
    except ValueError as e:
        raise BadInput(f"--vip {vip!r} is not an IP address") from e
    fam, vip = ip.version, str(ip)
    kind = DECAP_KIND[fam]
    if decap not in ("auto", "xdp", kind):
        raise BadInput(f"--decap {decap} cannot carry an IPv{fam} VIP: use {kind} or xdp")
    done = []
    with netns.entered(ns):
        if undo:
            return _backend_undo(vip, ns)
        if decap == "auto":
            decap = kind if tunnel_supported(fam) else "xdp"
        if decap == "xdp" and not iface:
            raise BadInput(f"this kernel has no {kind} device ({TUNNEL_DEV[fam][2]}): give "
                           "--iface IF to decapsulate with XDP there")
        state = {"vip": vip, "decap": decap}
        if decap == kind:
            dev, args, option = TUNNEL_DEV[fam]
            if not _ip_json("link", "show", "dev", dev):
                cp = _sh(["ip", "link", "add", "name", dev, "type", *args], check=False)
                if cp.returncode != 0:
                    raise MissingFeature(f"this kernel cannot create an {kind} device "
                                         f"({option}); use --decap xdp --iface IF")
                done.append(f"created {dev} ({kind}, external)")
            _sh(["ip", "link", "set", dev, "up"])
            rp_dev = dev
        else:
            flags = XDP_MODES[xdp_mode]
            _attach_decap(iface, flags)
            state.update(iface=iface, xdp_flags=flags)
            done.append(f"XDP decapsulator on {iface}")
            rp_dev = iface
        if vip not in local_addresses():
            if fam == 6:
                _sh(["ip", "-6", "addr", "add", f"{vip}/128", "dev", "lo", "nodad"])
            else:
                _sh(["ip", "addr", "add", f"{vip}/32", "dev", "lo"])
            done.append(f"added {vip}/{32 if fam == 4 else 128} to lo")
        # IPv6 needs nothing more: a backend answers neighbour solicitations only for
        # addresses of the interface asked on, and has no reverse-path filter.
        sysctls = () if fam == 6 else (("net.ipv4.conf.all.rp_filter", "0"),
                                       (f"net.ipv4.conf.{rp_dev}.rp_filter", "0"),
                                       ("net.ipv4.conf.all.arp_ignore", "1"),
                                       ("net.ipv4.conf.all.arp_announce", "2"))
        for name, value in sysctls:
            _sysctl(name, value)
            done.append(f"{name}={value}")
        run_dir(ns).mkdir(parents=True, exist_ok=True)
        backend_state_path(ns, fam).write_text(json.dumps(state))
    return done


def _backend_undo(vip: str, ns: str | None) -> list[str]:
    done = []
    fam = family(vip)
    other_fam = 6 if fam == 4 else 4
    state = read_state(backend_state_path(ns, fam))
    other = read_state(backend_state_path(ns, other_fam))
    if state.get("decap") == "xdp" and "iface" in state:
        # One decapsulator serves both families: keep it while the other VIP needs it.
        if other.get("decap") == "xdp" and other.get("iface") == state["iface"]:
            done.append(f"kept the XDP decapsulator on {state['iface']} (IPv{other_fam} VIP)")
        else:
            _detach_xdp(state["iface"], state["xdp_flags"])
            done.append(f"removed the XDP decapsulator from {state['iface']}")
    plen = 32 if fam == 4 else 128
    if _sh(["ip", "addr", "del", f"{vip}/{plen}", "dev", "lo"], check=False).returncode == 0:
        done.append(f"removed {vip}/{plen} from lo")
    dev = TUNNEL_DEV[fam][0]
    if _sh(["ip", "link", "del", dev], check=False).returncode == 0:
        done.append(f"deleted {dev}")
    with contextlib.suppress(FileNotFoundError):
        backend_state_path(ns, fam).unlink()
    with contextlib.suppress(OSError):
        run_dir(ns).rmdir()
    return done


# --- `python -m controller.lb SPEC`: the background process ----------------------------------


def _main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    opts = LbOptions(**spec["opts"])
    try:
        run_foreground(opts, spec["iface"], spec["ns"], spec["xdp_mode"])
    except MptcpctlError as e:
        print(f"mptcpctl: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

