"""The benchmarks' figures, and the one table `make bench` prints of them.

Each benchmark, given `--summary FILE`, writes its headline figures there as JSON: what was
measured, and the baseline measured in the same run that it is compared with. `table` is pure:
it turns the figures of every benchmark into the lines of one Markdown table (it is unit-tested
in tests/unit/test_bench_summary.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured figure and, when it has one, the in-run baseline it is compared with.

    `value / baseline_value` is the ratio shown; with `difference`, the table also shows
    `value - baseline_value` (for latencies, what the proxy adds is a difference)."""

    bench: str
    figure: str
    value: float | None
    unit: str = ""
    baseline: str = ""
    baseline_value: float | None = None
    difference: bool = False


FAILED = "FAILED: "


def failed(bench: str, reason: str) -> Figure:
    """The row of a benchmark that produced no figures."""
    return Figure(bench, FAILED + reason, None)


def failures(figures: list[Figure]) -> list[str]:
    """The benchmarks that failed, in order."""
    return [f.bench for f in figures if f.figure.startswith(FAILED)]


def write(path: str | Path | None, figures: list[Figure]) -> None:
    """Writes `figures` to `path` as JSON (nothing when no path was asked for)."""
    if path is not None:
        Path(path).write_text(json.dumps([asdict(f) for f in figures], indent=1) + "\n")


def read(path: str | Path) -> list[Figure]:
    return [Figure(**item) for item in json.loads(Path(path).read_text())]


def number(value: float | None, unit: str = "") -> str:
    """A figure with as many digits as it deserves: 7012/s, 12.3 ms, 0.42 ms."""
    if value is None:
        return "n/a"
    magnitude = abs(value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2
    return f"{value:.{digits}f}{' ' if unit and unit != '/s' else ''}{unit}"


def comparison(figure: Figure) -> str:
    """The ratio against the baseline (and the difference, when asked for), or "-"."""
    if figure.value is None or figure.baseline_value is None:
        return "-"
    if figure.baseline_value == 0:
        ratio = "n/a"
    else:
        ratio = f"{figure.value / figure.baseline_value:.2f}x"
    if not figure.difference:
        return ratio
    added = figure.value - figure.baseline_value
    sign = "+" if added >= 0 else "-"
    return f"{ratio} ({sign}{number(abs(added), figure.unit)})"


HEADER = ("bench", "figure", "value", "baseline", "baseline value", "vs baseline")


def table(figures: list[Figure]) -> list[str]:
    """One Markdown table of every figure, in the order given, its columns aligned."""
    rows = [HEADER]
    for f in figures:
        rows.append((
            f.bench,
            f.figure,
            number(f.value, f.unit),
            f.baseline or "-",
            number(f.baseline_value, f.unit) if f.baseline else "-",
            comparison(f),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    # Numbers right-aligned, words left-aligned.
    right = (False, False, True, False, True, True)

    def line(cells: tuple[str, ...]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w)
                  for c, w, r in zip(cells, widths, right, strict=True)]  # fmt: skip
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":" if r else "-" * (w + 2))
                          for w, r in zip(widths, right, strict=True)) + "|"  # fmt: skip
    return [line(rows[0]), rule, *(line(row) for row in rows[1:])]
