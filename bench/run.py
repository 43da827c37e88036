"""`make bench`: every benchmark of bench/, one after the other, then one table of their figures
against the baselines each measured in the same run.

Each benchmark runs as its own process with short settings (a few minutes in all on two cores;
`--full` runs each with its own, longer, defaults), its output passed on to stderr as it comes.
A benchmark that fails gets a FAILED row, and the exit code is 1. The table goes to stdout.
Usage: .venv/bin/python bench/run.py [--full] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import summary

HERE = Path(__file__).resolve().parent

# Each benchmark with its smallest sensible settings: enough rounds for a median where the
# machine is noisy, short phases where a phase only needs to reach a steady state.
QUICK: dict[str, list[str]] = {
    "sign": ["--count", "2000", "--rounds", "3", "--sessions", "1", "2"],
    "audit": ["--seconds", "3"],
    "passthrough": ["--rounds", "3", "--seconds", "2"],
    "send": ["--transactions", "320", "--sequential", "100", "--rounds", "2", "--raw-seconds", "2"],
    "policy": ["--requests", "150", "--rounds", "3"],
    "unlock_burst": ["--rounds", "3"],
}


def run(name: str, flags: list[str], directory: Path) -> tuple[list[summary.Figure], float]:
    """One benchmark's figures (a FAILED row if it produced none) and its run time."""
    out = directory / f"{name}.json"
    command = [sys.executable, str(HERE / f"{name}.py"), *flags, "--summary", str(out)]
    shown = " ".join([f"bench/{name}.py", *command[2:]])
    print(f"== {name}: {shown}", file=sys.stderr, flush=True)
    started = time.monotonic()
    # stdout of the benchmark goes to our stderr: our stdout is the table alone.
    finished = subprocess.run(command, stdout=sys.stderr, check=False)
    elapsed = time.monotonic() - started
    if finished.returncode != 0:
        return [summary.failed(name, f"exit code {finished.returncode}")], elapsed
    if not out.exists():
        return [summary.failed(name, "no figures written")], elapsed
    return summary.read(out), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="each benchmark with its own, longer, defaults")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=list(QUICK), metavar="NAME",
                        help=f"only these benchmarks, among {', '.join(QUICK)}")  # fmt: skip
    args = parser.parse_args()
    names = args.only or list(QUICK)
    load_before = os.getloadavg()
    figures: list[summary.Figure] = []
    times: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qsigner-bench-") as directory:
        for name in names:
            got, elapsed = run(name, [] if args.full else QUICK[name], Path(directory))
            figures += got
            times.append(f"{name} {elapsed:.0f} s")
    total = time.monotonic() - started
    load_after = os.getloadavg()
    print()
    print(f"quorum-signer benchmarks: {os.cpu_count()} cores; load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; {total:.0f} s "
          f"({', '.join(times)}); {'full' if args.full else 'short'} settings")  # fmt: skip
    print()
    for line in summary.table(figures):
        print(line)
    print()
    print("Ratios are value / baseline, both measured in the same run: see bench/README.md.")
    failed = summary.failures(figures)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
