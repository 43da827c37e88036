"""docs/configuration.md's table of QSIGNER_ variables is the one `Settings` gives: a variable
added, removed or with another default fails here until `make docs` regenerates the table."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

import pytest

from proxy.settings import PREFIX, Settings, configuration_table, setting

ROOT = Path(__file__).resolve().parents[2]

# The variables the product promises its users (the configuration section of its contract); all
# of them must be documented. QSIGNER_UPSTREAMS_WS belongs to WebSocket, which is not served.
PROMISED = (
    "LISTEN", "UPSTREAMS", "DATABASE_URL", "PKCS11_MODULE", "JWT_SECRET", "JWT_PUBLIC_KEY",
    "JWT_JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "CHAIN_ID", "PBKDF2_ITERATIONS",
    "LOCKOUT_ATTEMPTS", "LOCKOUT_SECONDS", "PASSTHROUGH", "TESSERA_URL", "LOG_FORMAT",
    "MAX_IN_FLIGHT", "CALLER_NONCES", "SIGNED_TX_TIMEOUT", "IDEMPOTENCY_TTL", "CORS_ORIGINS",
)  # fmt: skip


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "configuration_table", ROOT / "scripts" / "configuration_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _committed() -> str:
    script = _script()
    return str(script.committed_table((ROOT / "docs" / "configuration.md").read_text()))


def _rows(table: str) -> dict[str, list[str]]:
    """Variable name -> its row's cells (meaning, default)."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_committed_table_is_the_one_settings_gives() -> None:
    assert _committed() == configuration_table(), "docs/configuration.md is stale: make docs"


def test_every_setting_and_every_promised_variable_is_documented_with_its_default() -> None:
    rows = _rows(_committed())
    assert list(rows) == [PREFIX + spec.name.upper() for spec in fields(Settings)]
    for name in PROMISED:
        assert PREFIX + name in rows, name
    assert rows["QSIGNER_LISTEN"][1] == "`127.0.0.1:8545`"
    assert rows["QSIGNER_PBKDF2_ITERATIONS"][1] == "`600000`"
    assert rows["QSIGNER_READ_TIMEOUT"][1] == "`10`"
    assert rows["QSIGNER_CALLER_NONCES"][1] == "`respect`"
    assert rows["QSIGNER_DATABASE_URL"][1] == "unset: required for `serve`"
    assert rows["QSIGNER_RATE_BURST"][1] == "`0`: twice `QSIGNER_RATE_LIMIT`"


def test_a_changed_default_or_a_new_variable_shows_in_the_table() -> None:
    @dataclass(frozen=True)
    class Changed(Settings):
        lockout_attempts: int = setting(7, "wrong passwords in a row that lock a user")
        new_thing: int = setting(3, "something new")

    rows, committed = _rows(configuration_table(Changed)), _rows(_committed())
    assert rows["QSIGNER_LOCKOUT_ATTEMPTS"][1] == "`7`" != committed["QSIGNER_LOCKOUT_ATTEMPTS"][1]
    assert "QSIGNER_NEW_THING" in rows and "QSIGNER_NEW_THING" not in committed


def test_a_setting_without_meaning_or_with_a_stray_unset_text_is_refused() -> None:
    @dataclass(frozen=True)
    class Undocumented(Settings):
        forgotten: int = 1

    with pytest.raises(ValueError, match="forgotten has no meaning"):
        configuration_table(Undocumented)

    @dataclass(frozen=True)
    class Misleading(Settings):
        limit: int = setting(5, "a limit", unset="no limit")  # 5 is not empty

    with pytest.raises(ValueError, match="limit: `unset` explains an empty default only"):
        configuration_table(Misleading)


def test_the_script_rewrites_only_the_table() -> None:
    script = _script()
    text = f"intro\n\n{script.BEGIN}\n| old |\n{script.END}\n\noutro\n"
    assert script.with_table(text, "| new |\n") == (
        f"intro\n\n{script.BEGIN}\n| new |\n{script.END}\n\noutro\n"
    )
    assert script.committed_table(script.with_table(text, "| new |\n")) == "| new |\n"


def test_the_docs_name_only_variables_that_exist() -> None:
    known = {PREFIX + spec.name.upper() for spec in fields(Settings)}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench/README.md"]
    for page in pages:
        # `QSIGNER_JWT_*` names a family, not a variable
        named = set(re.findall(r"QSIGNER_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)", page.read_text()))
        assert named <= known, f"{page.relative_to(ROOT)} names {sorted(named - known)}"
