"""Writes the fuzzers' seed corpus, tests/data/fuzz/seeds.txt (`make fuzz-corpus`, or
`python tests/fuzz_corpus.py [--check]`): the TCP options of every well-formed case of the
decoder table (tests/bpf/test_decode_table.py), then one seed per length variant the table
leaves out (every DSS flag combination, REMOVE_ADDR sizes, unknown subtypes 9-14). bench/fuzz.py
reads the file; tests/unit/test_fuzz_corpus.py checks it still matches what this produces."""

import argparse
import sys
from pathlib import Path

from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

sys.path.insert(0, str(Path(__file__).resolve().parent / "bpf"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_decode_table import (  # noqa: E402
    CASES,
    NOP,
    TIMESTAMPS,
    Opt,
    dss,
    remove_addr,
    unknown,
)

from bench.fuzz_seeds import SEEDS_FILE, Seed, render, split_options  # noqa: E402

SYN, FIN, ACK = 0x02, 0x01, 0x10


def table_seeds() -> list[Seed]:
    seeds = []
    for c in CASES:
        if c.expect["malformed"] or c.expect["sport"] is None:
            continue  # malformed cases are the fuzzer's job; unparsed ones carry no TCP
        tcp = Ether(c.frame)[TCP]
        raw = bytes(tcp)[20 : tcp.dataofs * 4]
        seeds.append(Seed(c.desc, tuple(split_options(raw)), int(tcp.flags)))
    return seeds


def _opts(*parts) -> tuple[bytes, ...]:
    return tuple(p.raw if isinstance(p, Opt) else bytes(p) for p in parts)


def variant_seeds() -> list[Seed]:
    """Length variants beyond the table's: every DSS layout (data ACK none/4/8 bytes x mapping
    none/4/8-byte DSN with and without checksum x DATA_FIN), after NOP NOP timestamps as Linux
    sends them; REMOVE_ADDR with 2-4 and 37 ids (the most that fit); unknown subtypes 9-14."""
    seeds = []
    for ack in (None, 4, 8):
        for dsn in (None, 4, 8):
            for csum in ((False, True) if dsn else (False,)):
                for fin in (False, True):
                    o = dss(ack=None if ack is None else 0x0102030405060708 >> (64 - 8 * ack),
                            ack64=ack == 8,
                            dsn=None if dsn is None else 0x1112131415161718 >> (64 - 8 * dsn),
                            dsn64=dsn == 8, ssn=1001, dlen=1400, csum=0x5A5A if csum else None,
                            fin=fin)
                    desc = (f"DSS variant: ack {ack or 0}, DSN {dsn or 0}"
                            f"{' + checksum' if csum else ''}{' + DATA_FIN' if fin else ''} "
                            f"({len(o.raw)} bytes)")
                    seeds.append(Seed(desc, _opts(NOP, NOP, TIMESTAMPS, o),
                                      ACK | (FIN if fin else 0)))
    for n in (2, 3, 4, 37):
        o = remove_addr(*range(1, n + 1))
        seeds.append(Seed(f"REMOVE_ADDR variant: {n} ids ({len(o.raw)} bytes)", _opts(o), ACK))
    for sub in range(9, 15):
        o = unknown(sub, bytes(range(sub - 9)))
        seeds.append(Seed(f"unknown subtype {sub} ({len(o.raw)} bytes)", _opts(o), ACK))
    return seeds


def seeds() -> list[Seed]:
    """The whole corpus, in file order."""
    return table_seeds() + variant_seeds()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/fuzz_corpus.py", description=__doc__)
    ap.add_argument("--check", action="store_true",
                    help="only say whether the stored file is up to date (exit 1 if not)")
    args = ap.parse_args(argv)
    text = render(seeds())
    if args.check:
        same = SEEDS_FILE.exists() and SEEDS_FILE.read_text() == text
        print(f"{SEEDS_FILE}: {'up to date' if same else 'differs: run make fuzz-corpus'}")
        return 0 if same else 1
    SEEDS_FILE.parent.mkdir(parents=True, exist_ok=True)
    SEEDS_FILE.write_text(text)
    print(f"wrote {len(seeds())} seeds to {SEEDS_FILE} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
