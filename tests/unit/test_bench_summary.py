"""`make bench`'s table (bench/summary.py), pure: ratios and differences against the in-run
baselines, figures without a baseline, failed benchmarks, aligned columns, and the JSON the
benchmarks hand over."""

from __future__ import annotations

from pathlib import Path

from bench.summary import Figure, comparison, failed, failures, number, read, table, write

RATE = Figure("passthrough", "req/s c=64, JWT", 7012.4, "/s", "aiohttp forwarder", 6500.0)
LATENCY = Figure("send", "p50, c=1", 3.5, "ms", "local signer", 1.25, difference=True)
FASTER = Figure("policy", "p50", 1.0, "ms", "no policy", 1.5, difference=True)
ALONE = Figure("send", "ledger DB round trips per tx", 0.734)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_numbers_keep_the_digits_they_deserve() -> None:
    assert number(7012.4, "/s") == "7012/s"
    assert number(12.345, "ms") == "12.3 ms"
    assert number(0.4251, "ms") == "0.43 ms"
    assert number(0.734) == "0.73"
    assert number(None, "ms") == "n/a"


def test_ratio_against_the_baseline_and_the_difference_for_latencies() -> None:
    assert comparison(RATE) == "1.08x"
    assert comparison(LATENCY) == "2.80x (+2.25 ms)"
    assert comparison(FASTER) == "0.67x (-0.50 ms)"
    assert comparison(ALONE) == "-"
    assert comparison(Figure("x", "y", 1.0, "/s", "zero", 0.0)) == "n/a"
    assert comparison(Figure("x", "y", None, "/s", "b", 2.0)) == "-"


def test_one_table_in_the_order_given_with_aligned_columns() -> None:
    lines = table([RATE, LATENCY, ALONE, failed("audit", "exit code 1")])
    assert cells(lines[0]) == ["bench", "figure", "value", "baseline", "baseline value",
                               "vs baseline"]  # fmt: skip
    assert set(lines[1]) <= {"|", "-", ":"}
    body = [cells(line) for line in lines[2:]]
    assert body == [
        ["passthrough", "req/s c=64, JWT", "7012/s", "aiohttp forwarder", "6500/s", "1.08x"],
        ["send", "p50, c=1", "3.50 ms", "local signer", "1.25 ms", "2.80x (+2.25 ms)"],
        ["send", "ledger DB round trips per tx", "0.73", "-", "-", "-"],
        ["audit", "FAILED: exit code 1", "n/a", "-", "-", "-"],
    ]
    assert len({len(line) for line in lines}) == 1, "columns are aligned"
    assert lines[2].index("7012/s") + len("7012/s") == lines[3].index("3.50 ms") + len("3.50 ms")


def test_failures_are_named() -> None:
    figures = [RATE, failed("send", "exit code 1"), failed("audit", "no figures")]
    assert failures(figures) == ["send", "audit"]
    assert failures([RATE, LATENCY]) == []


def test_figures_round_trip_through_the_summary_file(tmp_path: Path) -> None:
    path = tmp_path / "send.json"
    write(path, [LATENCY, ALONE])
    assert read(path) == [LATENCY, ALONE]
    write(None, [LATENCY])  # no --summary: nothing written, no failure
