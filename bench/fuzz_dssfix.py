"""Fuzz the DSS checksum fix (bpf/mptcp_dssfix.c, tc egress) through BPF_PROG_TEST_RUN:
segments with checksummed DSS mappings (right, ALG-changed or random checksums; TCP checksums
valid, partial or wrong), the seed corpus mutated as for the datapath, and random frames.
Checks: no test-run error, always TC_ACT_UNSPEC, the frame keeps its length, a changed frame
differs only in the DSS and TCP checksum fields with the DSS checksum of its payload and a TCP
checksum valid iff it was, every other frame comes out byte-identical, the counters move
exactly as a Python model of docs/dssfix.md predicts, the flow map stays bounded. Part of
`python -m bench.fuzz` (`--program dssfix`)."""

import ctypes as C
import random
import struct
from dataclasses import dataclass, field

from bench import fuzz
from bench.dsscsum import ones_sum
from bench.fuzz_seeds import corpus
from controller import abi
from controller.datapath import TEST_RUN_MAX
from controller.errors import BadInput, DatapathError

# A small flow table, so the LRU map overflows many times over (FLOW_POOL 4-tuples and more).
DSSFIX_FLOWS = 256
CFLAGS = [f"-DDSSFIX_FLOWS={DSSFIX_FLOWS}"]
TC_ACT_UNSPEC = 0xFFFFFFFF  # the only verdict (docs/dssfix.md), -1 as test-run reports it
COUNTERS = ("checked", "ok", "fixed", "fixed_partial", "corrupt", "spanning", "skipped")
TCP_CHECK_OFF = 16
IP6_EXT = (0, 43, 60)  # the extension headers parse.h walks
TIMESTAMPS = b"\x08\x0a" + bytes(range(1, 9))
# The network layers of fuzz.NETS that parse.h takes to TCP.
TCP_NETS = ("ipv4", "ipv4", "ipv6", "ipv6+ext", "vlan+ipv4", "vlan+ipv6")


# --- the model: what docs/dssfix.md says the fix does to a frame ----------------------------


@dataclass
class Segment:
    """A TCP segment as bpf/include/parse.h finds it (lengths from the IP header fields)."""

    saddr: bytes
    daddr: bytes
    tcp_off: int
    hlen: int      # TCP header bytes, options included
    payload: int   # TCP payload bytes by the IP length fields


def parse_to_tcp(f: bytes) -> Segment | None:
    """Ethernet (one VLAN tag), IPv4 or IPv6 (up to MAX_IPV6_EXT_HDRS extension headers),
    TCP; None for anything parse_to_tcp() does not hand on as a TCP segment."""
    n, at = len(f), 14
    if n < 14:
        return None
    proto = int.from_bytes(f[12:14], "big")
    if proto in (0x8100, 0x88A8):
        if at + 4 > n:
            return None
        proto, at = int.from_bytes(f[16:18], "big"), at + 4
    if proto == 0x0800:
        if at + 20 > n:
            return None
        hl = (f[at] & 0x0F) * 4
        if f[at] >> 4 != 4 or hl < 20 or at + hl > n:
            return None
        if int.from_bytes(f[at + 6 : at + 8], "big") & 0x1FFF:
            return None
        saddr, daddr = f[at + 12 : at + 16], f[at + 16 : at + 20]
        l3_len, l3_hdrs, nxt = int.from_bytes(f[at + 2 : at + 4], "big"), hl, f[at + 9]
        at += hl
    elif proto == 0x86DD:
        if at + 40 > n or f[at] >> 4 != 6:
            return None
        saddr, daddr = f[at + 8 : at + 24], f[at + 24 : at + 40]
        l3_len, l3_hdrs, nxt = int.from_bytes(f[at + 4 : at + 6], "big") + 40, 40, f[at + 6]
        at += 40
        for _ in range(abi.MAX_IPV6_EXT_HDRS):
            if nxt not in IP6_EXT:
                break
            if at + 2 > n or at + (f[at + 1] + 1) * 8 > n:
                return None
            ln = (f[at + 1] + 1) * 8
            nxt, at, l3_hdrs = f[at], at + ln, l3_hdrs + ln
    else:
        return None
    if nxt != 6 or at + 20 > n:
        return None
    hlen = (f[at + 12] >> 4) * 4
    if hlen < 20 or at + hlen > n:
        return None
    return Segment(saddr, daddr, at, hlen, max(0, l3_len - l3_hdrs - hlen))


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(seg: Segment) -> int:
    """The TCP pseudo-header's sum (not complemented)."""
    return ones_sum(seg.saddr + seg.daddr + struct.pack("!II", seg.hlen + seg.payload, 6))


def tcp_valid(f: bytes, seg: Segment) -> bool | None:
    """Does the segment's TCP checksum verify? None if its bytes are not all in the frame."""
    end = seg.tcp_off + seg.hlen + seg.payload
    if end > len(f):
        return None
    return fold(ones_sum(f[seg.tcp_off : end]) + pseudo_sum(seg)) == 0xFFFF


def set_tcp_checksum(f: bytes, seg: Segment, value: int) -> bytes:
    at = seg.tcp_off + TCP_CHECK_OFF
    return f[:at] + struct.pack("!H", value) + f[at + 2 :]


def fix_tcp_checksum(f: bytes, seg: Segment) -> bytes:
    """The frame with a valid TCP checksum (over the segment as the IP lengths give it)."""
    end = seg.tcp_off + seg.hlen + seg.payload
    f = set_tcp_checksum(f, seg, 0)
    body = f[seg.tcp_off : end].ljust(end - seg.tcp_off, b"\x00")
    return set_tcp_checksum(f, seg, ~fold(ones_sum(body) + pseudo_sum(seg)) & 0xFFFF)


@dataclass
class Mapping:
    """A DSS option's mapping (RFC 8684 §3.3): where its checksum field sits in the frame."""

    dsn: int
    dsn64: bool
    ssn: int
    data_len: int
    fin: bool
    checksum: int | None
    field_at: int  # frame offset of the checksum field


def find_dss(opts: bytes, opts_at: int):
    """The first DSS option of the option list decoded: a Mapping, None (no DSS, or no mapping)
    or "malformed" (the walk or the DSS's length broke the rules before or at it)."""
    at, n = 0, len(opts)
    while at < n:
        kind = opts[at]
        if kind == 0:
            return None
        if kind == 1:
            at += 1
            continue
        if at + 1 >= n:
            return "malformed"
        ln = opts[at + 1]
        if ln < 2 or at + ln > n:
            return "malformed"
        if kind == abi.TCPOPT_MPTCP and ln >= 4 and opts[at + 2] >> 4 == abi.Subtype.DSS:
            if not fuzz.mptcp_len_ok(opts[at : at + ln]):
                return "malformed"
            return _mapping(opts[at : at + ln], opts_at + at)
        at += ln
    return None


def _mapping(o: bytes, at: int) -> Mapping | None:
    f = o[3] & 0x1F
    if not f & abi.DSS_FLAG_M:
        return None
    i = 4 + ((8 if f & abi.DSS_FLAG_a else 4) if f & abi.DSS_FLAG_A else 0)
    dsn64 = bool(f & abi.DSS_FLAG_m)
    w = 8 if dsn64 else 4
    dsn = int.from_bytes(o[i : i + w], "big")
    ssn, data_len = struct.unpack("!IH", o[i + w : i + w + 6])
    end = i + w + 6
    csum = int.from_bytes(o[end : end + 2], "big") if len(o) == end + 2 else None
    return Mapping(dsn, dsn64, ssn, data_len, bool(f & abi.DSS_FLAG_F), csum, at + end)


def dss_checksum(m: Mapping, data: bytes) -> int:
    """RFC 8684 §3.3.1: the payload and the pseudo-header (DSN, SSN, length, zero)."""
    return ~fold(ones_sum(data) + ones_sum(struct.pack("!QIHH", m.dsn, m.ssn, m.data_len, 0))) \
        & 0xFFFF


@dataclass
class Expect:
    counts: tuple[str, ...]    # the counters this frame moves (by one each)
    seg: Segment | None = None
    mapping: Mapping | None = None
    want: int | None = None    # the DSS checksum the fix writes, when it fixes

    @property
    def fixes(self) -> bool:
        return self.want is not None


def expect(f: bytes) -> Expect:
    """What the fix must do with frame f (docs/dssfix.md, "Design" 1-5)."""
    seg = parse_to_tcp(f)
    if seg is None or seg.payload == 0 or seg.hlen - 20 < 4:
        return Expect(())
    opts_at = seg.tcp_off + 20
    m = find_dss(f[opts_at : seg.tcp_off + seg.hlen], opts_at)
    if not isinstance(m, Mapping) or m.checksum is None:
        return Expect((), seg)  # no mapping with a checksum (or malformed): untouched
    if not m.dsn64 or m.fin or m.data_len == 0:
        return Expect(("skipped",), seg, m)
    if m.data_len != seg.payload:
        return Expect(("spanning",), seg, m)
    start = seg.tcp_off + seg.hlen
    if start + seg.payload > len(f):
        return Expect(("checked", "skipped"), seg, m)  # the payload is not all there
    want = dss_checksum(m, f[start : start + seg.payload])
    if want == m.checksum:
        return Expect(("checked", "ok"), seg, m)
    if not tcp_valid(f, seg):
        check = int.from_bytes(f[seg.tcp_off + 16 : seg.tcp_off + 18], "big")
        if check != pseudo_sum(seg):
            return Expect(("checked", "corrupt"), seg, m)
        return Expect(("checked", "fixed_partial"), seg, m, want)
    return Expect(("checked", "fixed"), seg, m, want)


# --- frames -------------------------------------------------------------------------------


def dss_option(rng, payload: bytes) -> tuple[bytes, str]:
    """A DSS option with a mapping for this payload, mostly as Linux sends it with checksums
    on (8-byte DSN, data ACK, checksum); its checksum right, right for bytes an ALG changed
    since, or random; the length now and then not the payload's."""
    ack = rng.choice((None, 4, 8, 8))
    dsn64 = rng.random() < 0.85
    fin = rng.random() < 0.05
    with_csum = rng.random() < 0.9
    flags = (abi.DSS_FLAG_M | (abi.DSS_FLAG_m if dsn64 else 0) | (abi.DSS_FLAG_F if fin else 0)
             | (abi.DSS_FLAG_A if ack else 0) | (abi.DSS_FLAG_a if ack == 8 else 0))
    body = bytes([0x20, flags])
    if ack:
        body += rng.randbytes(ack)
    dsn = rng.getrandbits(64 if dsn64 else 32)
    data_len = len(payload) if rng.random() < 0.85 else rng.choice(
        (0, len(payload) + 1, max(0, len(payload) - 1), rng.getrandbits(16)))
    m = Mapping(dsn, dsn64, rng.getrandbits(32), data_len, fin, None, 0)
    body += dsn.to_bytes(8 if dsn64 else 4, "big") + struct.pack("!IH", m.ssn, data_len)
    r = rng.random()
    if r < 0.35:
        csum, kind = dss_checksum(m, payload), "dss-right"
    elif r < 0.8 and payload:
        before = bytearray(payload)  # what the sender summed, before the ALG changed a byte
        before[rng.randrange(len(before))] ^= rng.randrange(1, 256)
        csum, kind = dss_checksum(m, bytes(before)), "dss-alg"
    else:
        csum, kind = rng.getrandbits(16), "dss-random"
    if with_csum:
        body += struct.pack("!H", csum)
    else:
        kind = "dss-no-checksum"
    return bytes([abi.TCPOPT_MPTCP, 2 + len(body)]) + body, kind


def with_tcp_checksum(rng, frame: bytes) -> tuple[bytes, str]:
    """The frame with its TCP checksum mostly valid, now and then the pseudo-header's sum only
    (CHECKSUM_PARTIAL), else as random as tcp_header() left it."""
    seg = parse_to_tcp(frame)
    r = rng.random()
    if seg is None or r >= 0.85:
        return frame, "tcp-random"
    if r < 0.65:
        return fix_tcp_checksum(frame, seg), "tcp-valid"
    return set_tcp_checksum(frame, seg, pseudo_sum(seg)), "tcp-partial"


def dss_segment(rng) -> fuzz.Sample:
    """A data segment with a checksummed mapping, its options mutated now and then."""
    payload = rng.randbytes(rng.choice((1, 2, 3, 100, 777, 1000, 1448, rng.randint(1, 2900))))
    dss, kind = dss_option(rng, payload)
    opts = rng.choice(([dss], [b"\x01", b"\x01", TIMESTAMPS, dss], [b"\x01", dss],
                       [b"\x01", b"\x01", b"\x01", dss], [dss, b"\x01", b"\x01", b"\x04\x02"]))
    if rng.random() < 0.35:
        raw, how = fuzz.mutated_options(rng, opts)
        kind += "+" + how
    else:
        raw = fuzz.pad_options(rng, b"".join(opts))
    f = fuzz.flow(rng)
    tcp = fuzz.tcp_header(rng, f, raw, rng.choice((0x18, 0x10, 0x19, 0x11)))
    h = fuzz.headers(rng, f, len(tcp) + len(payload),
                     TCP_NETS if rng.random() < 0.7 else fuzz.NETS)
    frame, how = with_tcp_checksum(rng, h.l2 + h.l3 + tcp + payload)
    frame, _, dmg = fuzz.damage(rng, frame, h, h.tcp_at + len(tcp), None)
    return fuzz.Sample(frame[:TEST_RUN_MAX], None, f"{h.net}:{kind}+{how}{dmg}")


def samples(seed: int, count: int):
    """`count` samples, the same for the same seed: 55% checksummed data segments, 35% the
    datapath's mutated seeds (TCP checksum mostly made valid), 10% random frames."""
    rng = random.Random(seed)
    seeds = corpus(seed)
    for i in range(count):
        r = rng.random()
        if r < 0.1:
            yield fuzz.random_frame(rng)
        elif r < 0.45:
            s = fuzz.structured(rng, seeds[i % len(seeds)])
            frame, how = with_tcp_checksum(rng, s.frame[:TEST_RUN_MAX])
            yield fuzz.Sample(frame, None, f"{s.kind}+{how}")
        else:
            yield dss_segment(rng)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Report(fuzz.RunReport):
    runs: int = 0
    tc_refused: int = 0  # frames the kernel's tc test run refuses (fuzz.TC_MIN_LEN): not run
    changed: int = 0
    changed_tcp_valid: int = 0  # ... of which the TCP checksum verified before (and after)
    max_flows: int = 0
    predicted: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    counted: dict = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def summary(self) -> list[str]:
        return [
            f"seed {self.seed}: {self.packets} packets in {self.seconds:.1f} s "
            f"({self.pps:.0f} pkt/s; tc {self.runs}; {self.tc_refused} too short for tc's "
            "test run)",
            "counters (model = program): " + ", ".join(
                f"{k} {self.counted[k]}" + ("" if self.counted[k] == self.predicted[k]
                                            else f" (model {self.predicted[k]})")
                for k in COUNTERS),
            f"frames changed: {self.changed} ({self.changed_tcp_valid} with a valid TCP "
            f"checksum, still valid); largest flow map {self.max_flows}/{DSSFIX_FLOWS}",
            self.mutation_line(),
        ]


class Target(fuzz.Target):
    """One compiled mptcp_dssfix with a small flow map."""

    def __init__(self):
        from controller.dssfix import Program

        self.prog = Program(cflags=CFLAGS)
        self.counter_map = self.prog._counter_map()
        self.flow_map = self.prog._flow_map()

    def close(self):
        self.prog.close()

    def counters(self) -> dict[str, int]:
        return {k: fuzz.percpu_sum(self.counter_map, C.c_uint32(i))
                for i, k in enumerate(COUNTERS)}

    def _run_one(self, s: fuzz.Sample, rep: Report, replay: bool = False):
        """Run one sample and check its output (a replay checks only the counters); the
        counters it must move, None if it was not run."""
        if replay:
            rep = Report(seed=rep.seed)  # output checks were recorded the first time
        if len(s.frame) < fuzz.TC_MIN_LEN.get(s.frame[12:14], fuzz.ETH_HLEN):
            rep.tc_refused += 1
            return None
        exp = expect(s.frame)
        rep.runs += 1
        try:
            verdict, out = self.prog.run(s.frame)
        except (DatapathError, BadInput, OSError) as e:
            fuzz.record(rep, f"test run failed: {e}", s)
            return exp.counts
        if verdict != TC_ACT_UNSPEC:
            fuzz.record(rep, f"verdict {verdict}, want TC_ACT_UNSPEC", s)
        if len(out) != len(s.frame):
            fuzz.record(rep, f"output {len(out)} bytes, input {len(s.frame)}", s)
            return exp.counts
        if out != s.frame:
            self._check_change(s, out, exp, rep)
        elif exp.fixes:
            fuzz.record(rep, f"frame untouched, want its DSS checksum {exp.want:#06x} "
                        f"({'+'.join(exp.counts)})", s)
        return exp.counts

    @staticmethod
    def _check_change(s: fuzz.Sample, out: bytes, exp: Expect, rep: Report):
        rep.changed += 1
        if not exp.fixes:
            fuzz.record(rep, f"frame changed, want it byte-identical ({'+'.join(exp.counts)})",
                        s, out=out.hex())
            return
        seg, m = exp.seg, exp.mapping
        allowed = {m.field_at, m.field_at + 1, seg.tcp_off + 16, seg.tcp_off + 17}
        moved = {i for i, (a, b) in enumerate(zip(s.frame, out, strict=True)) if a != b}
        if moved - allowed:
            fuzz.record(rep, f"bytes {sorted(moved - allowed)} changed besides the DSS and "
                        "TCP checksums", s, out=out.hex())
        got = int.from_bytes(out[m.field_at : m.field_at + 2], "big")
        if got != exp.want:
            fuzz.record(rep, f"DSS checksum {got:#06x}, want {exp.want:#06x}", s)
        valid_in, valid_out = tcp_valid(s.frame, seg), tcp_valid(out, seg)
        rep.changed_tcp_valid += bool(valid_in)
        if valid_in != valid_out:
            fuzz.record(rep, f"TCP checksum valid before: {valid_in}, after: {valid_out}", s,
                        out=out.hex())

    def run_batch(self, batch: list[fuzz.Sample], rep: Report):
        before = self.counters()
        want = dict.fromkeys(COUNTERS, 0)
        for s in batch:
            for k in self._run_one(s, rep) or ():
                want[k] += 1
        after = self.counters()
        got = {k: after[k] - before[k] for k in COUNTERS}
        for k in COUNTERS:
            rep.predicted[k] += want[k]
            rep.counted[k] += got[k]
        if got == want:
            return
        # Off: replay packet by packet to name the culprits.
        for s in batch:
            b = self.counters()
            counts = self._run_one(s, rep, replay=True)
            if counts is None:
                continue
            a = self.counters()
            moved = tuple(k for k in COUNTERS for _ in range(a[k] - b[k]))
            if sorted(moved) != sorted(counts):
                fuzz.record(rep, f"counters moved {moved}, want {counts}", s)

    def check_maps(self, rep: Report):
        flows = list(self.flow_map.items())
        rep.max_flows = max(rep.max_flows, len(flows))
        fuzz.check_bounded(rep, {"dssfix_flows": (len(flows), DSSFIX_FLOWS)})
        for _, v in flows:
            if v.fixed + v.corrupt > v.checked:
                fuzz.record(rep, f"a flow has fixed {v.fixed} + corrupt {v.corrupt} > checked "
                            f"{v.checked}")
                break


def fuzz_program(packets: int, seed: int, progress=None) -> Report:
    """Run `packets` samples of `seed` through mptcp_dssfix; the report of what was seen."""
    return fuzz.drive(Target(), Report(seed=seed), samples(seed, packets), progress)
