"""Regenerates the table of QSIGNER_ variables in docs/configuration.md from `Settings`.

The table sits between two marker comments; everything else in the file is written by hand.
`--check` changes nothing and exits 1 when the committed table is not what `Settings` gives
(tests/unit/test_configuration_docs.py checks the same on every test run).
Usage: .venv/bin/python scripts/configuration_table.py [--check]   (or: make docs)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.settings import configuration_table  # noqa: E402

DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN configuration table: generated from proxy/settings.py by make docs -->"
END = "<!-- END configuration table -->"


def committed_table(text: str) -> str:
    """The table between the markers, as committed."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{DOC.relative_to(ROOT)}: the table's marker comments are missing")
    return text[start + len(BEGIN) : end].strip("\n") + "\n"


def with_table(text: str, table: str) -> str:
    """`text` with the table between the markers replaced by `table`."""
    committed_table(text)  # the markers are there
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args()
    text = DOC.read_text()
    updated = with_table(text, configuration_table())
    if args.check:
        if updated != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run make docs", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        DOC.write_text(updated)
        print(f"{DOC.relative_to(ROOT)}: table regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
