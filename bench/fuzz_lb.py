"""Fuzz the load balancer (bpf/mptcp_lb.c: mptcp_lb, and mptcp_lb_decap on what it sends)
through BPF_PROG_TEST_RUN, an IPv4 and an IPv6 build with small maps, the policy flags changed
between batches (unknown joins dropped or hashed, HMAC enforcement, token steering off): the
seed corpus mutated (tokens known and unknown included) in headers mostly to VIP:port, random
TCP headers to the VIP, random frames. Checks against a Python model of docs/lb.md: no test-run
error; the verdict of the packet's class (not to VIP:port or not handled: XDP_PASS, untouched;
MP_JOIN SYN with an unknown token under the drop policy: XDP_DROP; forwarded: XDP_TX, the
client's packet behind the outer header to an allowed backend, and decapsulated back to it);
every counter moves as predicted and they add up; lb_conns stays bounded, lb_tokens and
lb_blocked hold exactly what the controller wrote. Part of `python -m bench.fuzz`
(`--program lb`)."""

import ctypes as C
import functools
import ipaddress
import random
import struct
from dataclasses import dataclass, field

from bench import fuzz
from bench.dsscsum import ones_sum
from bench.fuzz_seeds import corpus
from controller import maglev
from controller.datapath import TEST_RUN_MAX
from controller.errors import BadInput, DatapathError
from controller.lb_abi import LB_NO_BACKEND, Counter, Flags

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
VERDICTS = {XDP_DROP: "drop", XDP_PASS: "pass", XDP_TX: "tx"}
# Small tables (-D overrides of lb_abi.h), so the LRU connection table overflows many times.
LB_CONN_ENTRIES = 512
LB_TOKEN_ENTRIES = 64
LB_BLOCK_ENTRIES = 256
CFLAGS = [f"-DLB_CONN_ENTRIES={LB_CONN_ENTRIES}", f"-DLB_TOKEN_ENTRIES={LB_TOKEN_ENTRIES}",
          f"-DLB_BLOCK_ENTRIES={LB_BLOCK_ENTRIES}"]
VPORT = 80
LB_MAC = bytes.fromhex("02aa00000002")
# Per family: VIP, the LB's outer source, backends, outer header length.
SITES = {
    4: ("198.51.100.80", "10.20.0.2", ["10.20.0.11", "10.20.0.12", "10.20.0.13"], 20),
    6: ("2001:db8::80", "fd00:20::2", ["fd00:20::11", "fd00:20::12", "fd00:20::13"], 40),
}
BE_MAC = [bytes.fromhex(f"02bb000000{i + 1:02x}") for i in range(3)]
# Clients that come back (more than the connection table holds); 1 in 16 is blocklisted.
POOL = 2048
BLOCK_EVERY = 16
# Tokens the controller knows (two of them are the seed corpus's join tokens), and backends.
KNOWN_TOKENS = {t: i % 3 for i, t in enumerate(
    [0xDEADBEEF, 0x8A3F11D2] + random.Random(8684).sample(range(1, 1 << 32), 30))}
# Policies a batch runs under (lb_config.flags besides LB_F_STATIC_NEXTHOP), with weights.
POLICIES = {"drop": (0, 4), "hash": (Flags.LB_F_UNKNOWN_JOIN_HASH, 2),
            "enforce-hmac": (Flags.LB_F_ENFORCE_HMAC, 2),
            "no-token-steering": (Flags.LB_F_NO_TOKEN_STEERING, 1)}
N_CNT = int(Counter.LB_CNT_MAX)
CNT = {c.name.removeprefix("LB_CNT_").lower(): int(c) for c in Counter if c != Counter.LB_CNT_MAX}
# Counters checked as a range per packet (they depend on state the model does not follow:
# whether a flow's keys were reported already).
RANGED = ("malformed", "keys")
# How often a frame that was not forwarded also goes through the decapsulator.
DECAP_EVERY = 4


# --- the model: what docs/lb.md says mptcp_lb does -----------------------------------------


@dataclass
class Segment:
    """A TCP segment to VIP:port as parse_vip_segment() finds it."""

    key: tuple[bytes, bytes]  # the client's address and port: lb_conns' key
    l3_len: int               # IP total length (IPv6: payload length + 40)
    opts: bytes
    tcp_flags: int


def parse_vip(f: bytes, fam: int, vip: bytes) -> Segment | str:
    """Segment, or "pass" (not to VIP:port), or "not-handled" (to the VIP, VLAN-tagged or
    behind IPv6 extension headers)."""
    n, at = len(f), 14
    proto = f[12:14]
    if proto in (b"\x81\x00", b"\x88\xa8"):
        if n < 18:
            return "pass"
        proto, at = f[16:18], 18
    if fam == 4:
        if proto != b"\x08\x00" or at + 20 > n:
            return "pass"
        if f[at + 16 : at + 20] != vip or f[at + 9] != 6 or f[at] >> 4 != 4:
            return "pass"
        if at != 14:
            return "not-handled"
        hl = (f[at] & 0x0F) * 4
        if hl < 20 or int.from_bytes(f[at + 6 : at + 8], "big") & 0x1FFF:
            return "pass"
        saddr, l3_len, th = f[at + 12 : at + 16], int.from_bytes(f[at + 2 : at + 4], "big"), at + hl
    else:
        if proto != b"\x86\xdd" or at + 40 > n or f[at] >> 4 != 6:
            return "pass"
        if f[at + 24 : at + 40] != vip:
            return "pass"
        if f[at + 6] != 6:
            return "not-handled" if f[at + 6] in (0, 43, 44, 60) else "pass"
        if at != 14:
            return "not-handled"
        saddr, th = f[at + 8 : at + 24], at + 40
        l3_len = int.from_bytes(f[at + 4 : at + 6], "big") + 40
    if th + 20 > n or int.from_bytes(f[th + 2 : th + 4], "big") != VPORT:
        return "pass"
    tlen = (f[th + 12] >> 4) * 4
    if tlen < 20 or th + tlen > n:
        return "pass"
    return Segment((saddr, f[th : th + 2]), l3_len, f[th + 20 : th + tlen], f[th + 13])


# Where the walk starts: after NOP NOP timestamps, or after Linux's SYN options.
TS_PREFIX = b"\x01\x01\x08\x0a"
OPT_MIN_USEFUL = 12


@dataclass
class Found:
    malformed: bool = False
    token: int | None = None    # an MP_JOIN of length 12 (the last one)
    mpc_len: int | None = None  # MP_CAPABLE of 20-24 bytes (the last one)
    addr_len: int | None = None  # a non-echo ADD_ADDR of at most 32 bytes (the last one)


def scan(o: bytes) -> Found:
    """docs/lb.md step 3: the walk, from where Linux's usual options end; it stops when fewer
    than 12 option bytes are left (no option the LB reads is shorter)."""
    n, at, f = len(o), 0, Found()
    if n >= 12 and o[:4] == TS_PREFIX:
        at = 12
    elif n >= 20 and o[:2] == b"\x02\x04" and o[4:8] == b"\x04\x02\x08\x0a" \
            and o[16:19] == b"\x01\x03\x03":
        at = 20
    while at + OPT_MIN_USEFUL <= n:
        kind = o[at]
        if kind == 0:
            break
        if kind == 1:
            at += 1
            continue
        ln = o[at + 1]
        if ln < 2 or at + ln > n:
            return Found(malformed=True)
        if kind == fuzz.MPTCP:
            sub = o[at + 2] >> 4
            if sub == 1 and ln == 12:
                f.token = int.from_bytes(o[at + 4 : at + 8], "big")
            elif sub == 0 and 20 <= ln <= 24:
                f.mpc_len = ln
            elif sub == 3 and not o[at + 2] & 1 and ln <= 32:
                f.addr_len = ln
        at += ln
    return f


@dataclass
class Expect:
    verdict: int
    counts: dict = field(default_factory=dict)   # counter -> exact increment
    ranges: dict = field(default_factory=dict)   # counter -> (least, most)
    backends: frozenset = frozenset()            # XDP_TX: the backends it may go to
    seg: Segment | None = None
    syn: bool = False
    entry: bool = False  # the flow has (or may have) an lb_conns entry afterwards
    got: int | None = None  # the verdict the program gave


class Model:
    """The LB of one family as the controller set it up, and what the model knows of its
    connection table (the backends each returning client's flow may be on)."""

    def __init__(self, fam: int, ring: list[int], blocked: set):
        self.fam = fam
        vip, src, backends, self.outer = SITES[fam]
        self.vip = ipaddress.ip_address(vip).packed
        self.src = ipaddress.ip_address(src).packed
        self.backends = [ipaddress.ip_address(b).packed for b in backends]
        self.ring = ring
        self.blocked = blocked
        self.flags = 0
        self.entries: dict[tuple, frozenset] = {}
        self._picks: dict[tuple, int] = {}

    def maglev(self, key: tuple[bytes, bytes]) -> int:
        """The Maglev table's backend for a flow (controller/maglev.py, the program's hash)."""
        be = self._picks.get(key)
        if be is None:
            h = maglev.flow_hash(str(ipaddress.ip_address(key[0])),
                                 int.from_bytes(key[1], "big"), VPORT)
            be = self._picks[key] = self.ring[maglev.slot(h, len(self.ring))]
            if len(self._picks) > 1 << 16:
                self._picks.clear()
        return be

    def expect(self, f: bytes) -> Expect:
        seg = parse_vip(f, self.fam, self.vip)
        if seg == "pass":
            return Expect(XDP_PASS, {"packets": 1})
        if seg == "not-handled":
            return Expect(XDP_PASS, {"packets": 1, "vip": 1, "not_handled": 1})
        counts = {"packets": 1, "vip": 1}
        if self.flags & Flags.LB_F_ENFORCE_HMAC and seg.key in self.blocked:
            return Expect(XDP_DROP, counts | {"blocked": 1}, seg=seg)
        found = scan(seg.opts)
        ranges = {"malformed": (int(found.malformed),) * 2, "keys": (0, 0)}
        syn = seg.tcp_flags & 0x12 == 0x02
        if syn:
            if found.token is not None and not self.flags & Flags.LB_F_NO_TOKEN_STEERING:
                if found.token in KNOWN_TOKENS:
                    backends, counts["join_hit"] = {KNOWN_TOKENS[found.token]}, 1
                elif self.flags & Flags.LB_F_UNKNOWN_JOIN_HASH:
                    backends, counts["join_hashed"] = {self.maglev(seg.key)}, 1
                else:
                    return Expect(XDP_DROP, counts | {"join_unknown": 1},
                                  {"malformed": ranges["malformed"]}, seg=seg)
            else:
                backends, counts["new_flow"] = {self.maglev(seg.key)}, 1
        else:
            backends = {self.maglev(seg.key)} | self.entries.get(seg.key, frozenset())
            counts["new_flow|conn_hit"] = 1
        # Step 5: keys once per flow (the model does not know whether they went already), every
        # ADD_ADDR; an option the event cannot decode counts as malformed.
        lo, hi = ranges["malformed"]
        if found.mpc_len is not None:
            if found.mpc_len in (20, 22, 24):
                ranges["keys"] = (0, 1)
            else:
                hi += 1
        if found.addr_len is not None:
            if found.addr_len >= 16 and found.addr_len - 8 in (8, 10, 20, 22):
                counts["add_addr"] = 1
            else:
                lo, hi = lo + 1, hi + 1
        ranges["malformed"] = (lo, hi)
        exp = Expect(XDP_TX, counts, ranges, frozenset(backends), seg, syn, entry=True)
        if seg.l3_len + self.outer > 0xFFFF:
            exp.verdict, counts["fib_fail"] = XDP_DROP, 1  # more than any MTU
        else:
            counts["forwarded"] = 1
        return exp

    def learn(self, exp: Expect, backend: int | None):
        """After the run: the flow's entry holds this backend (None: one of exp.backends)."""
        if exp.entry and exp.seg.key[0] in POOL_ADDRS[self.fam]:
            self.entries[exp.seg.key] = frozenset({backend}) if backend is not None \
                else exp.backends

    def encapsulated(self, f: bytes, exp: Expect, backend: int) -> bytes:
        """The frame mptcp_lb sends for f to `backend` (docs/lb.md, "Forwarding model")."""
        eth = BE_MAC[backend] + LB_MAC
        if self.fam == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, f[15], exp.seg.l3_len + 20, 0, 0, 64, 4, 0,
                             self.src, self.backends[backend])
            ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
            return eth + b"\x08\x00" + ip + f[14:]
        ip = f[14:18] + struct.pack("!HBB", exp.seg.l3_len, 41, 64) + self.src \
            + self.backends[backend]
        return eth + b"\x86\xdd" + ip + f[14:]


def decapsulated(f: bytes) -> bytes:
    """What mptcp_lb_decap makes of f (docs/lb.md, "Backends"): IPv4-in-IPv4 without options
    or fragments, or IPv6-in-IPv6 (the outer version nibble right), loses its outer header;
    anything else stays as it is."""
    if f[12:14] == b"\x08\x00" and len(f) >= 34:
        if f[14] == 0x45 and f[23] == 4 and not int.from_bytes(f[20:22], "big") & 0x3FFF:
            return f[:14] + f[34:]
    elif f[12:14] == b"\x86\xdd" and len(f) >= 54 and f[14] >> 4 == 6 and f[20] == 41:
        return f[:14] + f[54:]
    return f


# --- frames -------------------------------------------------------------------------------


def _pool_addr(fam: int, i: int) -> bytes:
    if fam == 4:
        return bytes([10, 100 + (i >> 8), i & 0xFF, 1]) + bytes(12)
    return bytes.fromhex("fd000001000000000000000000000000")[:14] + i.to_bytes(2, "big")


POOL_ADDRS = {fam: {_pool_addr(fam, i)[: 4 if fam == 4 else 16] for i in range(POOL)}
              for fam in (4, 6)}


def client(rng, fam: int) -> fuzz.Flow:
    """A returning client (3 in 4) or a new one; to VIP:port mostly."""
    vip = ipaddress.ip_address(SITES[fam][0]).packed.ljust(16, b"\0")
    if rng.random() < 0.75:
        i = rng.randrange(POOL)
        src, sport = _pool_addr(fam, i), 1024 + i
    else:
        src, sport = rng.randbytes(16), rng.getrandbits(16)
    dst = vip if rng.random() < 0.92 else rng.randbytes(16)
    return fuzz.Flow(src, dst, sport, VPORT if rng.random() < 0.92 else rng.getrandbits(16))


def m_token(rng, opts):
    """An MP_JOIN SYN's token swapped for one the controller knows, or for a random one."""
    idx = [i for i, o in enumerate(opts) if o[:2] == bytes([fuzz.MPTCP, 12])]
    if not idx:
        return "token:none"
    i = rng.choice(idx)
    known = rng.random() < 0.5
    tok = rng.choice(list(KNOWN_TOKENS)) if known else rng.getrandbits(32)
    opts[i] = opts[i][:4] + tok.to_bytes(4, "big") + opts[i][8:]
    return "token:known" if known else "token:random"


MUTATIONS = (*fuzz.MUTATIONS, m_token, m_token, m_token)
# Network layers per VIP family: mostly the VIP's, now and then the other family's or ones
# the LB does not handle.
NETS = {4: ("ipv4",) * 8 + ("vlan+ipv4", "ipv4-later-fragment", "ipv4-udp", "qinq", "ipv6"),
        6: ("ipv6",) * 8 + ("ipv6+ext", "vlan+ipv6", "ipv6-too-many-ext", "qinq", "ipv4")}


@dataclass
class LbSample(fuzz.Sample):
    family: int = 4


def random_tcp(rng, fam: int) -> fuzz.Sample:
    """A good IP header to VIP:port and a TCP header of random bytes (data offset, flags and
    options included)."""
    f = client(rng, fam)
    tcp = struct.pack("!HH", f.sport, VPORT) + rng.randbytes(8) \
        + bytes([rng.randrange(5, 16) << 4 | rng.getrandbits(4)]) + rng.randbytes(7)
    tcp += rng.randbytes((tcp[12] >> 4) * 4 - 20 if rng.random() < 0.9 else rng.randrange(40))
    h = fuzz.headers(rng, f, len(tcp), ("ipv4",) if fam == 4 else ("ipv6",))
    return fuzz.Sample(h.l2 + h.l3 + tcp, None, f"{h.net}:random-tcp")


def samples(seed: int, count: int):
    """`count` samples (60% for the IPv4 build, 40% IPv6), the same for the same seed: 88%
    mutated seeds (one in six an MP_JOIN SYN's), 5% random TCP headers to the VIP, 7% random
    frames."""
    rng = random.Random(seed)
    seeds = corpus(seed)
    joins = [s for s in seeds if s.tcp_flags & 0x12 == 0x02
             and any(o[:3] in (b"\x1e\x0c\x10", b"\x1e\x0c\x11") for o in s.opts)]
    flows = {fam: functools.partial(client, fam=fam) for fam in (4, 6)}
    for i in range(count):
        fam = 4 if rng.random() < 0.6 else 6
        r = rng.random()
        if r < 0.07:
            s = fuzz.random_frame(rng)
        elif r < 0.12:
            s = random_tcp(rng, fam)
        else:
            seed_ = rng.choice(joins) if rng.random() < 1 / 6 else seeds[i % len(seeds)]
            s = fuzz.structured(rng, seed_, flows[fam], NETS[fam], MUTATIONS)
        yield LbSample(s.frame[:TEST_RUN_MAX], None, s.kind, fam)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Report(fuzz.RunReport):
    runs: dict = field(default_factory=lambda: {"ipv4": 0, "ipv6": 0})
    verdicts: dict = field(default_factory=lambda: dict.fromkeys(VERDICTS.values(), 0))
    policies: dict = field(default_factory=lambda: dict.fromkeys(POLICIES, 0))  # batches
    counters: dict = field(default_factory=lambda: dict.fromkeys(CNT, 0))
    events: int = 0
    decap_runs: int = 0
    max_conns: int = 0
    tokens: int = 0
    blocked: int = 0

    def summary(self) -> list[str]:
        c = self.counters
        return [
            f"seed {self.seed}: {self.packets} packets in {self.seconds:.1f} s "
            f"({self.pps:.0f} pkt/s; ipv4 {self.runs['ipv4']}, ipv6 {self.runs['ipv6']}; "
            f"{self.decap_runs} also through the decapsulator)",
            "verdicts: " + ", ".join(f"{k} {v}" for k, v in self.verdicts.items())
            + "; batches by policy: " + ", ".join(f"{k} {v}" for k, v in self.policies.items()),
            "counters: " + ", ".join(f"{k} {v}" for k, v in c.items() if v)
            + f"; events read {self.events}",
            f"largest maps: lb_conns {self.max_conns}/{LB_CONN_ENTRIES} (per build), lb_tokens "
            f"{self.tokens}/{LB_TOKEN_ENTRIES}, lb_blocked {self.blocked}/{LB_BLOCK_ENTRIES} "
            "(as the controller wrote them)",
            self.mutation_line(),
        ]


class Build:
    """One family's loaded mptcp_lb, set up as `lb up` would (static next hops), with its
    model; the controller's own event handling replaced by a count."""

    def __init__(self, fam: int):
        from controller.lb import LbCore, LbOptions, LbProgram, make_flow

        vip, src, backends, _ = SITES[fam]
        self.fam = fam
        self.prog = LbProgram(cflags=CFLAGS, family=fam)
        try:
            self.core = LbCore(self.prog, LbOptions(vip, VPORT, list(backends), src=src,
                                                    smac=LB_MAC),
                               static_hops={b: (BE_MAC[i], 0) for i, b in enumerate(backends)})
            self.events, self.policy = 0, "drop"
            self.prog.on_events(self._on_event)
            for tok, be in KNOWN_TOKENS.items():
                self.prog.tokens.update(C.c_uint32(tok), C.c_uint32(be))
            blocked = set()
            for i in range(0, POOL, BLOCK_EVERY):
                a = _pool_addr(fam, i)[: 4 if fam == 4 else 16]
                self.prog.blocked.update(make_flow(str(ipaddress.ip_address(a)), vip, 1024 + i,
                                                   VPORT), C.c_uint32(1))
                blocked.add((a, (1024 + i).to_bytes(2, "big")))
            ring = list(self.prog._ring_cache)
            if LB_NO_BACKEND in ring:
                raise DatapathError("the Maglev table has empty slots")
            self.model = Model(fam, ring, blocked)
            self.decap = self.prog.bpf.load_func(b"mptcp_lb_decap", self.prog._BPF.XDP).fd
        except BaseException:
            self.prog.close()
            raise

    def _on_event(self, _ev):
        self.events += 1

    def set_policy(self, name: str):
        flags = int(POLICIES[name][0])
        cfg = self.prog.config.lookup(C.c_uint32(0))
        cfg.flags = (cfg.flags & Flags.LB_F_STATIC_NEXTHOP) | flags
        self.prog.config.update(C.c_uint32(0), cfg)
        self.model.flags, self.policy = flags, name

    def counters(self) -> list[int]:
        return fuzz.percpu_sum(self.prog.counters, C.c_uint32(0), N_CNT)

    def close(self):
        self.prog.close()


def _deltas(before: list[int], after: list[int]) -> dict[str, int]:
    return {k: after[i] - before[i] for k, i in CNT.items()}


def _mismatches(got: dict[str, int], counts: dict, ranges: dict, n_pass: int, n_tx: int,
                n_drop: int, events: int) -> list[str]:
    """What is off between the counters' moves (got) and the model's, and in how they add up."""
    off = []
    for k in CNT:
        if k in RANGED:
            lo, hi = ranges.get(k, (0, 0))
            if not lo <= got[k] <= hi:
                off.append(f"{k} moved by {got[k]}, want {lo}..{hi}")
        elif k not in ("new_flow", "conn_hit") and got[k] != counts.get(k, 0):
            off.append(f"{k} moved by {got[k]}, want {counts.get(k, 0)}")
    flows = counts.get("new_flow|conn_hit", 0) + counts.get("new_flow", 0)
    if got["new_flow"] + got["conn_hit"] != flows \
            or got["conn_hit"] > counts.get("new_flow|conn_hit", 0):
        off.append(f"new_flow {got['new_flow']} + conn_hit {got['conn_hit']}, want {flows}")
    # How they add up (docs/lb.md, "Per packet"): every packet passes, goes or is dropped.
    sums = {
        "pass = packets - vip + not_handled": (n_pass,
                                               got["packets"] - got["vip"] + got["not_handled"]),
        "tx = forwarded": (n_tx, got["forwarded"]),
        "drop = blocked + join_unknown + no_backend + fib_fail": (
            n_drop, got["blocked"] + got["join_unknown"] + got["no_backend"] + got["fib_fail"]),
        "handled = new_flow + conn_hit + join_hit + join_hashed + join_unknown + blocked": (
            got["vip"] - got["not_handled"],
            sum(got[k] for k in ("new_flow", "conn_hit", "join_hit", "join_hashed",
                                 "join_unknown", "blocked"))),
        "events read = keys + add_addr": (events, got["keys"] + got["add_addr"]),
    }
    off += [f"{name}: {a} != {b}" for name, (a, b) in sums.items() if a != b]
    return off


class Target(fuzz.Target):
    """Both builds; a batch runs through its family's build under a policy drawn at random."""

    def __init__(self, seed: int):
        self.builds = {}
        try:
            for fam in (4, 6):
                self.builds[fam] = Build(fam)
        except BaseException:
            self.close()
            raise
        self.rng = random.Random(seed ^ 0x4C42)
        self.n = 0

    def close(self):
        for b in self.builds.values():
            b.close()

    def batch_key(self, s: LbSample):
        return s.family

    def _run_one(self, b: Build, s: LbSample, rep: Report, replay: bool = False) -> Expect:
        """Run one sample and check what came out (a replay checks only the counters); the
        model's expectation, with the verdict the program gave."""
        exp = b.model.expect(s.frame)
        if replay:
            rep = Report(seed=rep.seed)  # output checks were recorded the first time
        rep.runs[f"ipv{b.fam}"] += 1
        try:
            verdict, _, out = b.prog.run(s.frame)
        except (DatapathError, BadInput, OSError) as e:
            fuzz.record(rep, f"test run failed: {e}", s, family=b.fam)
            b.model.learn(exp, None)
            return exp
        rep.verdicts[VERDICTS.get(verdict, str(verdict))] = \
            rep.verdicts.get(VERDICTS.get(verdict, str(verdict)), 0) + 1
        exp.got = verdict
        backend = None
        if verdict != exp.verdict:
            fuzz.record(rep, f"verdict {VERDICTS.get(verdict, verdict)}, want "
                        f"{VERDICTS[exp.verdict]} ({'+'.join(exp.counts)})", s, family=b.fam,
                        policy=b.policy)
        elif verdict == XDP_PASS and out != s.frame:
            fuzz.record(rep, "passed, but changed", s, family=b.fam, out=out.hex())
        elif verdict == XDP_TX:
            backend = self._check_sent(b, s, exp, out, rep)
        if verdict != XDP_TX and self.n % DECAP_EVERY == 0:
            self._check_decap(b, s, s.frame, decapsulated(s.frame), rep)
        self.n += 1
        b.model.learn(exp, backend)
        return exp

    def _check_sent(self, b: Build, s: LbSample, exp: Expect, out: bytes, rep: Report):
        """The encapsulated frame: to an allowed backend, byte for byte; decapsulated back."""
        m = b.model
        dst = out[14 + m.outer - (4 if b.fam == 4 else 16) : 14 + m.outer]
        backend = m.backends.index(dst) if dst in m.backends else None
        if backend not in exp.backends:
            fuzz.record(rep, f"sent to backend {backend}, want one of {sorted(exp.backends)}",
                        s, family=b.fam, out=out.hex())
            return None
        if out != m.encapsulated(s.frame, exp, backend):
            fuzz.record(rep, "encapsulated frame differs from the model's", s, family=b.fam,
                        out=out.hex(), want=m.encapsulated(s.frame, exp, backend).hex())
        self._check_decap(b, s, out, out[:14] + s.frame[14:], rep)
        return backend

    @staticmethod
    def _check_decap(b: Build, s: LbSample, frame: bytes, want: bytes, rep: Report):
        from controller.libbpf import test_run

        rep.decap_runs += 1
        try:
            verdict, _, out = test_run(b.decap, frame, 1, len(frame) + 256)
        except OSError as e:
            fuzz.record(rep, f"decapsulator test run failed: {e}", s, family=b.fam)
            return
        if (verdict, out) != (XDP_PASS, want):
            fuzz.record(rep, f"decapsulator: verdict {VERDICTS.get(verdict, verdict)}, "
                        f"output {'as' if out == want else 'not as'} documented", s,
                        family=b.fam, frame_in=frame.hex(), out=out.hex())

    def run_batch(self, batch: list[LbSample], rep: Report):
        b = self.builds[batch[0].family]
        names, weights = zip(*((k, w) for k, (_, w) in POLICIES.items()), strict=True)
        policy = self.rng.choices(names, weights)[0]
        b.set_policy(policy)
        rep.policies[policy] += 1
        before, ev0 = b.counters(), b.events
        exps = [self._run_one(b, s, rep) for s in batch]
        b.prog.consume()
        got = _deltas(before, b.counters())
        for k, v in got.items():
            rep.counters[k] += v
        rep.events += b.events - ev0
        counts, ranges, tally = {}, {}, dict.fromkeys(VERDICTS, 0)
        for e in exps:
            for k, v in e.counts.items():
                counts[k] = counts.get(k, 0) + v
            for k, (lo, hi) in e.ranges.items():
                a, z = ranges.get(k, (0, 0))
                ranges[k] = (a + lo, z + hi)
            if e.got in tally:
                tally[e.got] += 1
        off = _mismatches(got, counts, ranges, tally[XDP_PASS], tally[XDP_TX], tally[XDP_DROP],
                          b.events - ev0)
        if not off:
            return
        fuzz.record(rep, "batch counters: " + "; ".join(off), family=b.fam)
        # Replay packet by packet to name the culprits.
        for s in batch:
            before, ev0 = b.counters(), b.events
            e = self._run_one(b, s, rep, replay=True)
            b.prog.consume()
            t = {v: int(e.got == v) for v in VERDICTS}
            off = _mismatches(_deltas(before, b.counters()), e.counts, e.ranges, t[XDP_PASS],
                              t[XDP_TX], t[XDP_DROP], b.events - ev0)
            if off:
                fuzz.record(rep, "; ".join(off), s, family=b.fam, policy=b.policy)

    def check_maps(self, rep: Report):
        for fam, b in self.builds.items():
            n = b.prog.conn_count()
            rep.max_conns = max(rep.max_conns, n)
            fuzz.check_bounded(rep, {f"lb_conns (IPv{fam})": (n, LB_CONN_ENTRIES)})
            tokens = {k.value: v.value for k, v in b.prog.tokens.items()}
            rep.tokens = max(rep.tokens, len(tokens))
            if tokens != KNOWN_TOKENS:
                fuzz.record(rep, f"lb_tokens (IPv{fam}) holds {len(tokens)} entries, not the "
                            f"{len(KNOWN_TOKENS)} the controller wrote")
            n_blocked = len(b.prog.blocked.keys())
            rep.blocked = max(rep.blocked, n_blocked)
            if n_blocked != len(b.model.blocked):
                fuzz.record(rep, f"lb_blocked (IPv{fam}) holds {n_blocked} entries, not the "
                            f"{len(b.model.blocked)} the controller wrote")


def fuzz_program(packets: int, seed: int, progress=None) -> Report:
    """Run `packets` samples of `seed` through both builds of mptcp_lb (and mptcp_lb_decap)."""
    return fuzz.drive(Target(seed), Report(seed=seed), samples(seed, packets), progress)
