"""The fuzzer's seed corpus: the TCP options of every well-formed case of the decoder table
(tests/bpf/test_decode_table.py), cut out of its frames as lists of whole options, to be wrapped
in fresh headers and mutated by bench/fuzz.py. Fixed by the table; a seed only orders it."""

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parent / "bpf"))
from test_decode_table import CASES  # noqa: E402

MPTCP = 30
EOL, NOP = 0, 1


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
        length = raw[at + 1]
        if length < 2 or at + length > len(raw):
            raise ValueError(f"not a well-formed option area: {raw.hex()}")
        out.append(raw[at : at + length])
        at += length
    return out


def _seeds() -> list[Seed]:
    seeds = []
    for c in CASES:
        if c.expect["malformed"] or c.expect["sport"] is None:
            continue  # malformed cases are the fuzzer's job; unparsed ones carry no TCP
        tcp = Ether(c.frame)[TCP]
        raw = bytes(tcp)[20 : tcp.dataofs * 4]
        seeds.append(Seed(c.desc, tuple(split_options(raw)), int(tcp.flags)))
    return seeds


SEEDS: list[Seed] = _seeds()


def corpus(seed: int) -> list[Seed]:
    """Every seed, in an order fixed by `seed`."""
    out = list(SEEDS)
    random.Random(seed).shuffle(out)
    return out
