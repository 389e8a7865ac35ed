"""The fuzzers' stored seed corpus (tests/data/fuzz/seeds.txt) against its generator
(tests/fuzz_corpus.py): they cannot drift apart, and the corpus covers what the issue asks."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import fuzz_corpus  # noqa: E402
from test_decode_table import CASES  # noqa: E402

from bench import fuzz, fuzz_seeds  # noqa: E402


def test_the_stored_corpus_is_exactly_what_the_generator_writes():
    """If this fails after a decoder-table change: `make fuzz-corpus`, and commit the file."""
    assert fuzz_seeds.SEEDS_FILE.read_text() == fuzz_seeds.render(fuzz_corpus.seeds())


def test_the_stored_corpus_reads_back_as_the_generators_seeds():
    assert fuzz_seeds.load() == fuzz_corpus.seeds()


def test_the_corpus_covers_every_subtype_0_to_8_and_unknown_ones():
    subtypes = set().union(*(s.subtypes for s in fuzz_seeds.load()))
    assert set(range(9)) <= subtypes
    assert subtypes - set(range(9)), "no unknown subtype"


def test_every_well_formed_decoder_table_case_is_a_seed():
    descs = {s.desc for s in fuzz_seeds.load()}
    want = {c.desc for c in CASES if not c.expect["malformed"] and c.expect["sport"] is not None}
    assert want <= descs


def test_every_seed_is_well_formed_by_the_fuzzers_model():
    for s in fuzz_seeds.load():
        raw = b"".join(s.opts)
        assert not fuzz.options_malformed(raw + bytes(-len(raw) % 4)), s.desc
        assert all(fuzz.mptcp_len_ok(o) for o in s.opts if o[0] == fuzz_seeds.MPTCP), s.desc


def test_every_dss_layout_is_a_seed():
    """Data ACK none/4/8 bytes x mapping none/4/8-byte DSN, with and without checksum, x F."""
    lengths = set()
    for s in fuzz_seeds.load():
        for o in s.opts:
            if o[0] == fuzz_seeds.MPTCP and o[2] >> 4 == 2:
                lengths.add((o[3] & 0x1F, len(o)))
    assert len(lengths) >= 30


def test_the_corpus_file_stays_small_and_the_frames_parse():
    assert fuzz_seeds.SEEDS_FILE.stat().st_size < 200_000
    for s in fuzz_seeds.load():
        assert fuzz_seeds.seed_from_frame(s.desc, fuzz_seeds.seed_frame(s)) == s
