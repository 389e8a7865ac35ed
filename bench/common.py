"""What the test-run benchmarks share: the command line (repeat, samples, quick, out)."""

import argparse
import datetime
import os
import platform
from pathlib import Path


def run_args(prog: str, doc: str | None, repeat: int, samples: int, quick_repeat: int,
             quick_samples: int, results: Path, argv=None,
             breakdown: str | None = None) -> argparse.Namespace:
    """The command line as .repeat (runs per sample), .samples, .out (results file or None) and,
    when `breakdown` (its help text) is given, .breakdown. --quick is a smoke test that writes
    no results unless --out is given."""
    ap = argparse.ArgumentParser(prog=prog, description=doc)
    ap.add_argument("--repeat", type=int, help=f"runs per sample (default {repeat:,})")
    ap.add_argument("--samples", type=int, help=f"samples per program (default {samples})")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test: {quick_repeat:,} runs x {quick_samples} samples, "
                         "writes no results unless --out is given")
    ap.add_argument("--out", type=Path, help=f"results file (default {results})")
    if breakdown:
        ap.add_argument("--breakdown", action="store_true", help=breakdown)
    args = ap.parse_args(argv)
    args.repeat = args.repeat or (quick_repeat if args.quick else repeat)
    args.samples = args.samples or (quick_samples if args.quick else samples)
    if args.repeat < 1 or args.samples < 1:
        ap.error("--repeat and --samples must be positive")
    args.out = args.out or (None if args.quick else results)
    return args


def run_options(prog: str, doc: str | None, repeat: int, samples: int, quick_repeat: int,
                quick_samples: int, results: Path, argv=None) -> tuple[int, int, Path | None]:
    """(runs per sample, samples, results file or None) from the command line (run_args)."""
    a = run_args(prog, doc, repeat, samples, quick_repeat, quick_samples, results, argv)
    return a.repeat, a.samples, a.out


def finally_on_sigterm() -> None:
    """A SIGTERM (a killed `make bench`, a CI timeout) raises SystemExit, so the benchmark's
    finally blocks still delete its namespaces and stop its daemons."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def machine_facts() -> dict:
    """What every results JSON starts with: when, on which kernel and machine."""
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count()}
