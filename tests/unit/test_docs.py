"""The documentation holds together: every relative link of README.md, docs/ and bench/README.md
reaches a file of the project (and a heading there, for an anchor), every command of the command
line has its section in docs/commands.md and every section there is a command, and nothing points
outside the project."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from proxy.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\]\n]|\][^(])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(markdown: str) -> str:
    """The text without code blocks and code spans, where a link is only text."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation, dashed."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(prose(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_slugs_follow_github() -> None:
    assert slug("`quorum-signer org set-psi`") == "quorum-signer-org-set-psi"
    assert slug("Private states (GoQuorum tenancy)") == "private-states-goquorum-tenancy"
    assert slug("`/readyz`") == "readyz"
    assert slug("Trying a draft: `policy set --dry-run`") == "trying-a-draft-policy-set---dry-run"


def test_the_link_finder_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('See [a](a.md), [b](../b.md#x "title") and ![c](img/c.png).\n'
                    "`[not](code.md)` and\n```\n[nor](fenced.md)\n```\n"
                    "[web](https://example.com) [mail](mailto:x@example.com)\n")  # fmt: skip
    assert relative_links(page) == ["a.md", "../b.md#x", "img/c.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading_of_the_project(page: Path) -> None:
    assert page.is_file(), page
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        reached = (page.parent / path).resolve() if path else page
        assert reached.is_relative_to(ROOT), f"{target} leaves the project"
        assert reached.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"
        if anchor:
            assert reached.suffix == ".md", f"{target}: an anchor into a file that is not Markdown"
            assert anchor in anchors(reached), f"{page.relative_to(ROOT)}: no heading #{anchor}"


def commands(parser: argparse.ArgumentParser, prefix: str = "quorum-signer") -> list[str]:
    """Every command of the command line that does something, as a user types it."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [prefix]
    return [found for group in groups for name, sub in group.choices.items()
            for found in commands(sub, f"{prefix} {name}")]  # fmt: skip


def test_every_command_has_its_section_in_commands_md_and_every_section_is_a_command() -> None:
    page = (ROOT / "docs" / "commands.md").read_text()
    sections = set(re.findall(r"^#{2,4} `(quorum-signer [a-z -]+)`$", page, re.M))
    every = set(commands(build_parser()))
    assert "quorum-signer audit key create" in every and "quorum-signer serve" in every
    assert every - sections == set(), "commands without a section in docs/commands.md"
    assert sections - every == set(), "sections of docs/commands.md for no command"


def test_nothing_points_outside_the_project() -> None:
    outside = re.compile(r"\.\./shared\b|/work/(?:shared|main|wt)\b")
    roots = ["README.md", "Makefile", "Dockerfile", "docker-compose.yml", "pyproject.toml", ".ci",
             "docs", "bench", "deploy", "scripts", "proxy", "signer", "policy", "softhsm",
             "tests"]  # fmt: skip
    files = [path for name in roots for path in ([ROOT / name] if (ROOT / name).is_file()
             else (ROOT / name).rglob("*")) if path.is_file()]  # fmt: skip
    assert len(files) > 100
    for path in files:
        if path.suffix in (".pyc", ".so") or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="replace")
        assert not outside.search(text), f"{path.relative_to(ROOT)} points outside the project"
