"""The fuzzers' stored seed corpus (tests/data/fuzz/seeds.txt): well-formed MPTCP option lists,
each kept as a small Ethernet/IPv4/TCP frame in hex with its description. This module reads and
writes that file; tests/fuzz_corpus.py decides what goes in it (`make fuzz-corpus`)."""

import random
import struct
from dataclasses import dataclass
from pathlib import Path

from bench.dsscsum import ones_sum

SEEDS_FILE = Path(__file__).resolve().parent.parent / "tests" / "data" / "fuzz" / "seeds.txt"
MPTCP = 30
EOL, NOP = 0, 1
# The frame each seed is stored in: addresses, ports and MACs of the decoder table.
SRC4, DST4 = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
SPORT, DPORT = 40000, 443
MACS = bytes.fromhex("020000000002" "020000000001")  # destination, source
TCP_FLAG_NAMES = "FSRPAUEC"  # bit 0 first, as scapy writes flags
HEADER = """\
# mptcpctl fuzz seed corpus: well-formed MPTCP options for bench/fuzz.py to mutate.
# Written by tests/fuzz_corpus.py (`make fuzz-corpus`), checked against it by
# tests/unit/test_fuzz_corpus.py. An entry: "## description", "# flags F; options: each option
# in hex", then the seed as an Ethernet/IPv4/TCP frame in hex (192.0.2.1:40000 ->
# 198.51.100.2:443, options EOL-padded). Lines starting with one "#" are comments.
"""


@dataclass(frozen=True)
class Seed:
    desc: str
    opts: tuple[bytes, ...]  # whole options in wire order (NOPs are one-byte options)
    tcp_flags: int

    @property
    def subtypes(self) -> set[int]:
        return {o[2] >> 4 for o in self.opts if o[0] == MPTCP and len(o) > 2}


def split_options(raw: bytes) -> list[bytes]:
    """Whole options of a well-formed option area, up to EOL (padding dropped)."""
    out, at = [], 0
    while at < len(raw):
        kind = raw[at]
        if kind == EOL:
            break
        if kind == NOP:
            out.append(raw[at : at + 1])
            at += 1
            continue
        length = raw[at + 1] if at + 1 < len(raw) else 0
        if length < 2 or at + length > len(raw):
            raise ValueError(f"not a well-formed option area: {raw.hex()}")
        out.append(raw[at : at + length])
        at += length
    return out


def flag_names(flags: int) -> str:
    return "".join(c for i, c in enumerate(TCP_FLAG_NAMES) if flags >> i & 1) or "-"


def seed_frame(s: Seed) -> bytes:
    """The seed as a frame: Ethernet, IPv4 (no options), TCP with the seed's options."""
    opts = b"".join(s.opts)
    opts += b"\x00" * (-len(opts) % 4)
    doff = 5 + len(opts) // 4
    ack = 1 if s.tcp_flags & 0x10 else 0
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, 1, ack, doff << 4, s.tcp_flags, 65535, 0,
                      0) + opts
    pseudo = SRC4 + DST4 + struct.pack("!HH", 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", ~ones_sum(pseudo + tcp) & 0xFFFF) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, SRC4, DST4)
    ip = ip[:10] + struct.pack("!H", ~ones_sum(ip) & 0xFFFF) + ip[12:]
    return MACS + b"\x08\x00" + ip + tcp


def seed_from_frame(desc: str, frame: bytes) -> Seed:
    """The seed a frame of seed_frame()'s shape holds."""
    if frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        raise ValueError(f"{desc!r}: not an Ethernet/IPv4 frame")
    tcp = 14 + (frame[14] & 0x0F) * 4
    doff = frame[tcp + 12] >> 4
    return Seed(desc, tuple(split_options(frame[tcp + 20 : tcp + doff * 4])), frame[tcp + 13])


def render(seeds: list[Seed]) -> str:
    """The corpus file's text for these seeds."""
    out = [HEADER]
    for s in seeds:
        if "\n" in s.desc:
            raise ValueError(f"a description is one line: {s.desc!r}")
        out.append(f"## {s.desc}\n")
        out.append(f"# flags {flag_names(s.tcp_flags)}; options: "
                   f"{' '.join(o.hex() for o in s.opts) or '(none)'}\n")
        out.append(seed_frame(s).hex() + "\n")
    return "".join(out)


def parse(text: str) -> list[Seed]:
    """The seeds of a corpus file's text, in file order."""
    seeds, desc = [], None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("## "):
            desc = line[3:]
        elif not line or line.startswith("#"):
            continue
        elif desc is None:
            raise ValueError(f"line {n}: a frame without a '## description' line before it")
        else:
            seeds.append(seed_from_frame(desc, bytes.fromhex(line)))
            desc = None
    return seeds


def load(path: Path = SEEDS_FILE) -> list[Seed]:
    return parse(path.read_text())


def corpus(seed: int, path: Path = SEEDS_FILE) -> list[Seed]:
    """Every stored seed, in an order fixed by `seed`."""
    out = load(path)
    random.Random(seed).shuffle(out)
    return out
