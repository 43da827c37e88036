"""README's client snippets: each fenced block that follows a `<!-- snippet: NAME -->` marker."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

README = Path(__file__).resolve().parents[2] / "README.md"
_MARKED = re.compile(r"<!-- snippet: (\S+) -->\n```(\w*)\n(.*?)^```$", re.S | re.M)


class Block(NamedTuple):
    language: str
    code: str


def snippets(text: str | None = None) -> dict[str, Block]:
    """README's marked blocks by name, in README's order."""
    found: dict[str, Block] = {}
    for name, language, code in _MARKED.findall(README.read_text() if text is None else text):
        assert name not in found, f"two README snippets named {name!r}"
        found[name] = Block(language, code)
    return found
