"""Fuzz our BPF programs through BPF_PROG_TEST_RUN: the stored seed corpus's options
(tests/data/fuzz/seeds.txt) mutated (lengths, subtype and flag nibbles, truncation, duplicates,
random bytes) in random IPv4/IPv6/VLAN headers, plus random frames. --program picks datapath
(this file: XDP and tc; checks no test-run error, XDP_PASS/TC_ACT_OK, the malformed counter
moves exactly as a Python model of RFC 8684 predicts, maps bounded), lb (bench/fuzz_lb.py),
dssfix (bench/fuzz_dssfix.py) or all; --packets counts per program. Run as root:
`python -m bench.fuzz --packets 1000000 --seed 1` (`make fuzz`: all three, 1M packets each)."""

import argparse
import ctypes as C
import json
import random
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.fuzz_seeds import Seed, corpus
from controller import abi
from controller.errors import BadInput, DatapathError, MissingFeature

XDP_PASS = 2
TC_ACT_OK = 0
ETH_HLEN = 14
# Small maps so a run fills them many times over and boundedness shows quickly.
SUBFLOW_ENTRIES = 1024
CONN_ENTRIES = 256
CFLAGS = [f"-DSUBFLOW_ENTRIES={SUBFLOW_ENTRIES}", f"-DCONN_ENTRIES={CONN_ENTRIES}"]
# Packets per malformed-counter read; a batch whose count is off is replayed packet by packet.
# Predicted and unpredicted samples go in separate batches, so a predicted batch's count must
# match exactly (unpredicted ones would otherwise hide errors in the slack they add).
BATCH = 256
# How often (packets) the map sizes are checked, besides once at the end.
MAP_CHECK_EVERY = 50_000
MAX_EXT_HDRS = abi.MAX_IPV6_EXT_HDRS
# Half the packets reuse one of this many 4-tuples (more than SUBFLOW_ENTRIES), so subflows
# see second packets (tokens, connections, DSN tracking) and the LRU maps still overflow.
FLOW_POOL = 4096
MPTCP = abi.TCPOPT_MPTCP
# The kernel's tc test run refuses an IPv4 (IPv6) frame shorter than Ethernet + 20 (+ 40)
# bytes with EINVAL, before the program runs; such frames go through XDP instead.
TC_MIN_LEN = {b"\x08\x00": ETH_HLEN + 20, b"\x86\xdd": ETH_HLEN + 40}


# --- what RFC 8684 allows: the Python model the datapath is checked against ----------------


def mptcp_len_ok(opt: bytes) -> bool:
    """Is this MPTCP option's length one its subtype (and flags) allow?"""
    n = len(opt)
    if n < 3:
        return False
    sub = opt[2] >> 4
    if sub == 0:  # MP_CAPABLE
        return n in (4, 12, 20, 22, 24)
    if sub == 1:  # MP_JOIN
        return n in (12, 16, 24)
    if sub == 2:  # DSS: the flags fix the length
        if n < 4:
            return False
        f = opt[3]
        need = 4
        if f & abi.DSS_FLAG_A:
            need += 8 if f & abi.DSS_FLAG_a else 4
        if f & abi.DSS_FLAG_M:
            need += (8 if f & abi.DSS_FLAG_m else 4) + 6
            return n in (need, need + 2)
        return n == need
    if sub == 3:  # ADD_ADDR: address (+ port) (+ HMAC unless echo)
        base = n - (0 if opt[2] & 1 else 8)
        return base in (8, 10, 20, 22)
    if sub == 4:  # REMOVE_ADDR
        return n >= 4
    if sub == 5:  # MP_PRIO
        return n in (3, 4)
    if sub in (6, 7):  # MP_FAIL, MP_FASTCLOSE
        return n == 12
    if sub == 8:  # MP_TCPRST
        return n == 4
    return True  # unknown subtypes: any length


def options_malformed(opts: bytes) -> bool:
    """Must the datapath count this TCP option area (a multiple of 4 bytes) as malformed?"""
    n = len(opts)
    if n < 4 or (n == 12 and opts[:4] == b"\x01\x01\x08\x0a"):
        return False  # no walk: no options, or the NOP NOP timestamps fast path
    at, spans = 0, []
    while at < n:
        kind = opts[at]
        if kind == 0:
            break
        if kind == 1:
            at += 1
            continue
        if at + 1 >= n:
            return True
        length = opts[at + 1]
        if length < 2 or at + length > n:
            return True
        if kind == MPTCP:
            spans.append(opts[at : at + length])
        at += length
    return len(spans) > abi.MAX_DECODED_OPTS or not all(mptcp_len_ok(s) for s in spans)


# --- frames --------------------------------------------------------------------------------


@dataclass
class Sample:
    frame: bytes
    malformed: bool | None  # what the malformed counter must do; None: not predicted
    kind: str               # the mutation, for the report


@dataclass
class Headers:
    net: str
    l2: bytes
    l3: bytes
    tcp_at: int  # offset of the TCP header in the frame
    stop: bool   # the parser must stop before TCP (not ours: never malformed)


@dataclass
class Flow:
    src: bytes  # 16 bytes; IPv4 uses the first 4
    dst: bytes
    sport: int
    dport: int


def flow(rng) -> Flow:
    if rng.random() < 0.5:
        return Flow(rng.randbytes(16), rng.randbytes(16), rng.getrandbits(16),
                    rng.getrandbits(16))
    i = rng.randrange(FLOW_POOL)
    return Flow(bytes([10, i >> 8, i & 0xFF, 1]) * 4, bytes([10, 0, 0, 2]) * 4, 1024 + i, 443)


def _ipv4(rng, f: Flow, proto, payload_len, frag=0) -> bytes:
    nopts = rng.choice((0, 0, 0, 1, 2, 10))
    opts = (b"\x01" * 3 + b"\x00") * nopts if rng.random() < 0.5 else rng.randbytes(4 * nopts)
    ihl = 5 + nopts
    tot = (ihl * 4 + payload_len) if rng.random() < 0.9 else rng.getrandbits(16)
    flags_frag = frag | rng.choice((0, 0x4000, 0x2000))
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, rng.getrandbits(8), tot, rng.getrandbits(16),
                       flags_frag, rng.getrandbits(8), proto, rng.getrandbits(16),
                       f.src[:4], f.dst[:4]) + opts


def _ipv6(rng, f: Flow, proto, payload_len, n_ext) -> bytes:
    exts = b""
    kinds = [rng.choice((0, 43, 60)) for _ in range(n_ext)]
    for i, _k in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < n_ext else proto
        hlen = rng.choice((0, 0, 1))
        exts += bytes([nxt, hlen, 1, 4 + 8 * hlen]) + bytes(4 + 8 * hlen)
    first = kinds[0] if kinds else proto
    plen = len(exts) + payload_len if rng.random() < 0.9 else rng.getrandbits(16)
    vtf = (6 << 28) | rng.getrandbits(28)
    return struct.pack("!IHBB16s16s", vtf, plen, first, rng.getrandbits(8), f.src,
                       f.dst) + exts


# The network layers headers() builds, ipv4 twice as often as the others.
NETS = ("ipv4", "ipv4", "ipv6", "ipv6+ext", "vlan+ipv4", "vlan+ipv6", "qinq",
        "ipv4-later-fragment", "ipv4-udp", "ipv6-too-many-ext")


def headers(rng, f: Flow, tcp_len, nets=NETS) -> Headers:
    """Ethernet (+ VLAN) and IP for a TCP segment of tcp_len bytes (one of `nets`, at random);
    which parse it gets."""
    net = rng.choice(nets)
    macs = rng.randbytes(12)
    stop = False
    if net in ("ipv4", "vlan+ipv4"):
        l3, etype = _ipv4(rng, f, 6, tcp_len), 0x0800
    elif net == "ipv4-later-fragment":
        l3, etype, stop = _ipv4(rng, f, 6, tcp_len, frag=1 + rng.getrandbits(12)), 0x0800, True
    elif net == "ipv4-udp":
        l3, etype, stop = _ipv4(rng, f, 17, tcp_len), 0x0800, True
    elif net in ("ipv6", "vlan+ipv6"):
        l3, etype = _ipv6(rng, f, 6, tcp_len, 0), 0x86DD
    elif net == "ipv6+ext":
        l3, etype = _ipv6(rng, f, 6, tcp_len, rng.randint(1, MAX_EXT_HDRS)), 0x86DD
    elif net == "ipv6-too-many-ext":
        # One more extension header than the parser walks: it stops, not ours.
        l3, etype, stop = _ipv6(rng, f, 6, tcp_len, MAX_EXT_HDRS + 1), 0x86DD, True
    else:  # qinq: only one tag is parsed, the inner 802.1Q tag is not an IP EtherType
        l3, etype, stop = _ipv4(rng, f, 6, tcp_len), 0x0800, True
    if net.startswith("vlan"):
        l2 = macs + struct.pack("!HHH", 0x8100, rng.getrandbits(16), etype)
    elif net == "qinq":
        l2 = macs + struct.pack("!HHHHH", 0x88A8, rng.getrandbits(16), 0x8100,
                                rng.getrandbits(16), etype)
    else:
        l2 = macs + struct.pack("!H", etype)
    return Headers(net, l2, l3, len(l2) + len(l3), stop)


def tcp_header(rng, f: Flow, opts: bytes, flags: int) -> bytes:
    doff = 5 + len(opts) // 4
    return struct.pack("!HHIIBBHHH", f.sport, f.dport,
                       rng.getrandbits(32), rng.getrandbits(32), doff << 4 | rng.getrandbits(4),
                       flags, rng.getrandbits(16), rng.getrandbits(16),
                       rng.getrandbits(16)) + opts


def pad_options(rng, raw: bytes) -> bytes:
    """At most 40 bytes, padded to a 4-byte multiple with EOL (or now and then NOP)."""
    raw = raw[: abi.TCP_OPT_SPACE]
    fill = b"\x00" if rng.random() < 0.8 else b"\x01"
    return raw + fill * (-len(raw) % 4)


# --- mutations of a seed's option list -------------------------------------------------------


def _mptcp_indexes(opts):
    return [i for i, o in enumerate(opts) if o[0] == MPTCP and len(o) > 1]


def _pick_mptcp(rng, opts):
    idx = _mptcp_indexes(opts)
    return rng.choice(idx) if idx else None


def m_length(rng, opts):
    """An MPTCP option's length set to a value its subtype does not allow; the body resized to
    match (the walk stays aligned), or only the length byte changed."""
    i = _pick_mptcp(rng, opts)
    if i is None:
        return "length:none"
    o = opts[i]
    for _ in range(20):
        new = rng.choice((0, 1, 2, 3, rng.randint(0, 40), len(o) + rng.choice((-2, -1, 1, 2))))
        new = max(new, 0)
        trial = bytes([o[0], new]) + o[2:new] + rng.randbytes(max(0, new - len(o)))
        if not mptcp_len_ok(trial[:new] if new >= 2 else trial):
            break
    else:
        return "length:none"
    if rng.random() < 0.6 and new >= 3:
        opts[i] = trial[:new]
        return "length:resized"
    opts[i] = bytes([o[0], new]) + o[2:]
    return "length:byte"


def m_subtype(rng, opts):
    i = _pick_mptcp(rng, opts)
    if i is None or len(opts[i]) < 3:
        return "subtype:none"
    o = bytearray(opts[i])
    o[2] = rng.getrandbits(4) << 4 | (o[2] & 0x0F)
    opts[i] = bytes(o)
    return "subtype"


def m_flags(rng, opts):
    """The low nibble of the subtype byte, or the byte after it (DSS/MP_CAPABLE flags)."""
    i = _pick_mptcp(rng, opts)
    if i is None or len(opts[i]) < 3:
        return "flags:none"
    o = bytearray(opts[i])
    if len(o) > 3 and rng.random() < 0.5:
        o[3] = rng.getrandbits(8)
    else:
        o[2] = (o[2] & 0xF0) | rng.getrandbits(4)
    opts[i] = bytes(o)
    return "flags"


def m_truncate_option(rng, opts):
    """Bytes cut off the end of an option; its length byte kept (or fixed to the new size)."""
    i = _pick_mptcp(rng, opts)
    if i is None:
        return "truncate-option:none"
    o = opts[i]
    cut = rng.randint(1, max(1, len(o) - 1))
    new = o[:cut]
    if len(new) >= 2 and rng.random() < 0.5:
        new = bytes([new[0], len(new)]) + new[2:]
    opts[i] = new
    return "truncate-option"


def m_duplicate(rng, opts):
    i = rng.randrange(len(opts))
    opts.insert(rng.randrange(len(opts) + 1), opts[i])
    return "duplicate"


def m_random_option(rng, opts):
    """A random MPTCP option (random length byte and body), or random bytes anywhere."""
    if rng.random() < 0.6:
        body = rng.randbytes(rng.randint(0, 12))
        ln = rng.choice((len(body) + 2, rng.getrandbits(8)))
        opts.insert(rng.randrange(len(opts) + 1), bytes([MPTCP, ln]) + body)
        return "random-option"
    opts.insert(rng.randrange(len(opts) + 1), rng.randbytes(rng.randint(1, 8)))
    return "random-bytes"


def m_bitflip(rng, opts):
    i = rng.randrange(len(opts))
    o = bytearray(opts[i])
    o[rng.randrange(len(o))] ^= 1 << rng.randrange(8)
    opts[i] = bytes(o)
    return "bitflip"


def m_other_options(rng, opts):
    """Linux's other options around the MPTCP ones."""
    extra = rng.choice((b"\x01", b"\x02\x04\x05\xb4", b"\x04\x02", b"\x03\x03\x07",
                        b"\x08\x0a" + rng.randbytes(8)))
    opts.insert(rng.randrange(len(opts) + 1), extra)
    return "other-options"


MUTATIONS = (m_length, m_length, m_subtype, m_flags, m_truncate_option, m_duplicate,
             m_random_option, m_bitflip, m_other_options)


# --- samples ---------------------------------------------------------------------------------


def mutated_options(rng, seed_opts, mutations=MUTATIONS) -> tuple[bytes, str]:
    """A seed's options after 0-3 mutations, padded; and the mutations' names."""
    opts = list(seed_opts)
    kinds = []
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
        kinds.append(rng.choice(mutations)(rng, opts) if opts else "empty")
    return pad_options(rng, b"".join(opts)), "+".join(kinds) or "valid"


def damage(rng, frame: bytes, h: Headers, tcp_end: int, expect):
    """Now and then a built frame cut short or a header byte changed: (frame, what the
    malformed counter must do, the damage's name for the report)."""
    r = rng.random()
    if r < 0.08:
        # The packet cut short: inside the headers, every parser that finds its header cut
        # short says malformed (unless it stopped before, or the cut is only in the payload).
        cut = rng.randint(ETH_HLEN, len(frame))
        frame = frame[:cut]
        if cut < tcp_end and not h.stop:
            expect = True
        elif cut < tcp_end:
            expect = None  # where the stop happens vs. the cut: not predicted
        return frame, expect, "+truncate-packet"
    if r < 0.14:
        # Structural header fields (IP version/IHL/protocol, TCP data offset, EtherType) or
        # a random header byte: the parse changes in ways the model does not follow.
        b = bytearray(frame)
        b[rng.randrange(ETH_HLEN - 2, tcp_end)] = rng.getrandbits(8)
        return bytes(b), None, "+header-byte"
    return frame, expect, ""


def structured(rng, seed: Seed, make_flow=flow, nets=NETS, mutations=MUTATIONS) -> Sample:
    """A seed's options, mutated, in fresh random headers (flows from make_flow, network
    layers from nets), now and then damaged."""
    raw, kind = mutated_options(rng, seed.opts, mutations)
    flags = seed.tcp_flags if rng.random() < 0.8 else rng.getrandbits(8)
    payload = rng.randbytes(rng.choice((0, 0, 1, 100, 1400)))
    if rng.random() < 0.01:
        payload = bytes(4000)  # past the test-run cut (controller.datapath.TEST_RUN_MAX)
    f = make_flow(rng)
    tcp = tcp_header(rng, f, raw, flags)
    h = headers(rng, f, len(tcp) + len(payload), nets)
    frame = h.l2 + h.l3 + tcp + payload
    expect = False if h.stop else options_malformed(raw)
    frame, expect, how = damage(rng, frame, h, h.tcp_at + len(tcp), expect)
    return Sample(frame, expect, f"{h.net}:{kind}{how}")


def random_frame(rng) -> Sample:
    n = rng.choice((ETH_HLEN, rng.randint(ETH_HLEN, 80), rng.randint(ETH_HLEN, 1600)))
    b = bytearray(rng.randbytes(n))
    if rng.random() < 0.7:
        b[12:14] = rng.choice((b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8"))
        if len(b) > 14 and b[12:14] == b"\x08\x00" and rng.random() < 0.7:
            b[14] = 0x45
        elif len(b) > 14 and b[12:14] == b"\x86\xdd" and rng.random() < 0.7:
            b[14] = 0x60 | (b[14] & 0x0F)
    return Sample(bytes(b), None, "random")


def samples(seed: int, count: int):
    """`count` samples, the same for the same seed: 90% mutated seeds, 10% random frames."""
    rng = random.Random(seed)
    seeds = corpus(seed)
    for i in range(count):
        if rng.random() < 0.1:
            yield random_frame(rng)
        else:
            yield structured(rng, seeds[i % len(seeds)])


# --- the run: what every program's fuzzer shares ----------------------------------------------


@dataclass
class RunReport:
    """What one program's fuzz run saw; each program's report adds its own counts."""

    seed: int
    packets: int = 0
    seconds: float = 0.0
    pps: float = 0.0
    kinds: dict = field(default_factory=dict)
    violations: list = field(default_factory=list)

    def ok(self) -> bool:
        return not self.violations

    def mutation_line(self) -> str:
        return "mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))


def record(rep: RunReport, what: str, s: Sample | None = None, **details):
    """Note one invariant violation (the first 50 in full, with the frame; then only what)."""
    if len(rep.violations) >= 50:
        rep.violations.append({"what": what})
        return
    v = {"what": what, **details}
    if s is not None:
        v.update(kind=s.kind, frame=s.frame.hex())
    rep.violations.append(v)


class Target:
    """One loaded program under fuzz: runs batches of samples and checks its maps."""

    def batch_key(self, s: Sample):
        """Samples with the same key share a batch (a counter check covers one batch)."""
        return 0

    def note(self, s: Sample, rep: RunReport):
        """Count a sample into the report before it runs."""

    def run_batch(self, batch: list, rep: RunReport):
        raise NotImplementedError

    def check_maps(self, rep: RunReport):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


def drive(target: Target, rep: RunReport, stream, progress=None) -> RunReport:
    """Run every sample of `stream` through `target` in batches of BATCH, its maps checked
    every MAP_CHECK_EVERY packets and at the end; the target is closed afterwards."""
    try:
        t0 = time.perf_counter()
        batches: dict = {}
        for s in stream:
            rep.packets += 1
            base = s.kind.split(":", 1)[-1].split("+")[0]
            rep.kinds[base] = rep.kinds.get(base, 0) + 1
            target.note(s, rep)
            batch = batches.setdefault(target.batch_key(s), [])
            batch.append(s)
            if len(batch) == BATCH:
                target.run_batch(batch, rep)
                batch.clear()
            if rep.packets % MAP_CHECK_EVERY == 0:
                target.check_maps(rep)
                if progress:
                    progress(rep, time.perf_counter() - t0)
        for batch in batches.values():
            if batch:
                target.run_batch(batch, rep)
        target.check_maps(rep)
        rep.seconds = time.perf_counter() - t0
        rep.pps = rep.packets / rep.seconds if rep.seconds else 0.0
    finally:
        target.close()
    return rep


def check_bounded(rep: RunReport, sizes: dict[str, tuple[int, int]]):
    """sizes: map name -> (entries now, max_entries)."""
    for name, (n, cap) in sizes.items():
        if n > cap:
            record(rep, f"map {name} holds {n} entries > {cap}")


def percpu_sum(m, key, n: int | None = None) -> list[int] | int:
    """A per-CPU array value summed over the CPUs: an int, or a list for an n-slot value."""
    vals = m.lookup(key) or []
    if n is None:
        return sum(int(getattr(v, "value", v)) for v in vals)
    return [sum(int(v[i]) for v in vals) for i in range(n)]


# --- the datapath: XDP and tc ------------------------------------------------------------------


@dataclass
class Report(RunReport):
    xdp_runs: int = 0
    tc_runs: int = 0
    tc_refused_to_xdp: int = 0  # frames the kernel's tc test run refuses (see TC_MIN_LEN)
    predicted_malformed: int = 0
    predicted_clean: int = 0
    not_predicted: int = 0
    malformed_counted: int = 0
    max_subflows: int = 0
    max_subflow_tokens: int = 0
    max_conns: int = 0

    def summary(self) -> list[str]:
        return [
            f"seed {self.seed}: {self.packets} packets in {self.seconds:.1f} s "
            f"({self.pps:.0f} pkt/s; xdp {self.xdp_runs}, tc {self.tc_runs}; "
            f"{self.tc_refused_to_xdp} too short for tc's test run went to XDP)",
            f"malformed: predicted {self.predicted_malformed}, clean {self.predicted_clean}, "
            f"not predicted {self.not_predicted}; counted {self.malformed_counted}",
            f"largest maps: subflows {self.max_subflows}/{SUBFLOW_ENTRIES}, subflow_token "
            f"{self.max_subflow_tokens}/{SUBFLOW_ENTRIES}, conns {self.max_conns}/{CONN_ENTRIES}",
            self.mutation_line(),
        ]


class Fuzzer(Target):
    """One compiled datapath (small maps); runs samples alternately through XDP and tc."""

    def __init__(self):
        from controller.datapath import Program

        self.prog = Program(cflags=CFLAGS)
        self.counters = self.prog.map("counters", C.c_uint32, C.c_uint64, percpu=True)
        self.subflows = self.prog.map("subflows", abi.FlowKey, abi.SubflowStats)
        self.tokens = self.prog.map("subflow_token", abi.FlowKey, C.c_uint32)
        self.conns = self.prog.map("conns", C.c_uint32, abi.ConnStats)
        self.n = 0

    def close(self):
        self.prog.close()

    def batch_key(self, s: Sample):
        # Predicted and unpredicted samples in separate batches (see BATCH).
        return s.malformed is not None

    def note(self, s: Sample, rep: Report):
        if s.malformed is None:
            rep.not_predicted += 1
        elif s.malformed:
            rep.predicted_malformed += 1
        else:
            rep.predicted_clean += 1

    def malformed(self) -> int:
        return percpu_sum(self.counters, C.c_uint32(abi.Counter.CNT_MALFORMED))

    def _run_one(self, s: Sample, rep: Report):
        """Run one sample; a violation (error, wrong verdict) is recorded, not raised."""
        xdp = self.n % 2 == 0
        self.n += 1
        if not xdp and len(s.frame) < TC_MIN_LEN.get(s.frame[12:14], ETH_HLEN):
            xdp = True
            rep.tc_refused_to_xdp += 1
        try:
            if xdp:
                rep.xdp_runs += 1
                verdict, _ = self.prog.run_xdp(s.frame)
                want = XDP_PASS
            else:
                rep.tc_runs += 1
                verdict, _ = self.prog.run_tc(s.frame)
                want = TC_ACT_OK
        except (DatapathError, BadInput, OSError) as e:
            self._violation(rep, s, "xdp" if xdp else "tc", f"test run failed: {e}")
            return
        if verdict != want:
            self._violation(rep, s, "xdp" if xdp else "tc", f"verdict {verdict}, want {want}")

    @staticmethod
    def _violation(rep: Report, s: Sample, prog: str, what: str):
        record(rep, what, s, program=prog, expected_malformed=s.malformed)

    def run_batch(self, batch: list[Sample], rep: Report):
        """Run a batch of samples that are all predicted, or all not predicted."""
        before = self.malformed()
        for s in batch:
            self._run_one(s, rep)
        delta = self.malformed() - before
        rep.malformed_counted += delta
        if batch[0].malformed is None or delta == sum(1 for s in batch if s.malformed):
            return
        # Off: replay packet by packet (same program order) to name the culprits.
        for s in batch:
            if s.malformed is None:
                continue
            b = self.malformed()
            prog = "xdp" if self.n % 2 == 0 else "tc"
            self._run_one(s, rep)
            d = self.malformed() - b
            if d != int(s.malformed):
                self._violation(rep, s, prog, f"malformed counter moved by {d}, "
                                f"want {int(s.malformed)}")

    def check_maps(self, rep: Report):
        n_sf, n_tok, n_conn = (len(self.subflows.keys()), len(self.tokens.keys()),
                               len(self.conns.keys()))
        rep.max_subflows = max(rep.max_subflows, n_sf)
        rep.max_subflow_tokens = max(rep.max_subflow_tokens, n_tok)
        rep.max_conns = max(rep.max_conns, n_conn)
        check_bounded(rep, {"subflows": (n_sf, SUBFLOW_ENTRIES),
                            "subflow_token": (n_tok, SUBFLOW_ENTRIES),
                            "conns": (n_conn, CONN_ENTRIES)})


def fuzz(packets: int, seed: int, progress=None) -> Report:
    """Run `packets` samples of `seed` through the datapath's XDP and tc programs."""
    return drive(Fuzzer(), Report(seed=seed), samples(seed, packets), progress)


# --- the command line --------------------------------------------------------------------------

PROGRAMS = ("datapath", "lb", "dssfix")


def run_program(name: str, packets: int, seed: int, progress=None) -> RunReport:
    if name == "lb":
        from bench import fuzz_lb

        return fuzz_lb.fuzz_program(packets, seed, progress)
    if name == "dssfix":
        from bench import fuzz_dssfix

        return fuzz_dssfix.fuzz_program(packets, seed, progress)
    return fuzz(packets, seed, progress)


def _progress_of(name: str):
    def progress(rep: RunReport, elapsed: float):
        print(f"  {name:>8} {rep.packets:>9} packets  {rep.packets / elapsed:>8.0f} pkt/s  "
              f"violations {len(rep.violations)}", file=sys.stderr, flush=True)
    return progress


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    ap.add_argument("--packets", type=int, default=1_000_000, help="per program")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--program", choices=(*PROGRAMS, "all"), default="all")
    ap.add_argument("--json", dest="json_out",
                    help="also write the reports to this file (an object keyed by program)")
    args = ap.parse_args(argv)
    names = PROGRAMS if args.program == "all" else (args.program,)
    reports, t0 = {}, time.perf_counter()
    for name in names:
        print(f"== {name}", flush=True)
        try:
            rep = run_program(name, args.packets, args.seed, _progress_of(name))
        except (MissingFeature, DatapathError) as e:
            print(f"fuzz: {e}", file=sys.stderr)
            return 3 if isinstance(e, MissingFeature) else 1
        reports[name] = rep
        for line in rep.summary():
            print(line)
        print(f"invariant violations: {len(rep.violations)}")
        for v in rep.violations[:20]:
            print(f"  {v}")
    if len(names) > 1:
        print("== total: " + ", ".join(f"{n} {r.packets} packets, {len(r.violations)} violations"
                                       for n, r in reports.items())
              + f"; {time.perf_counter() - t0:.1f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({n: asdict(r) for n, r in reports.items()},
                                                  indent=1))
    return 0 if all(r.ok() for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
