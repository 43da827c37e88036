"""The `quorum-signer` command line run as a user runs it (a subprocess), with helpers that
assert the contract of its answers: a result alone on the last stdout line, or exit 2 / 1 with
exactly one line on stderr."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from signer.pkcs11 import Hsm
from tests.support.hsm import random_label

BIN = Path(sys.executable).parent / "quorum-signer"
JWT_SECRET = "test-secret-" + "x" * 40


@dataclass
class Cli:
    env: dict[str, str]
    tmp: Path

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), *args], env=self.env, cwd=self.tmp, input=stdin, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    def fails(self, code: int, *args: str, stdin: str | None = None, match: str = "") -> str:
        """Exit `code` with one line on stderr matching `match` (never a traceback)."""
        result = self.run(*args, stdin=stdin)
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert re.search(match, lines[0]), lines[0]
        return lines[0]

    def bad(self, *args: str, stdin: str | None = None, match: str = "") -> str:
        """Bad input: exit 2, one line."""
        return self.fails(2, *args, stdin=stdin, match=match)

    def broken(self, *args: str, stdin: str | None = None, match: str = "") -> str:
        """A failure of the system (database, HSM): exit 1, one line."""
        return self.fails(1, *args, stdin=stdin, match=match)

    def secret_file(self, name: str, value: str) -> str:
        path = self.tmp / name
        path.write_text(value + "\n")
        return str(path)


def make_cli(database_url: str, softhsm_conf: Path, tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
    env.update(
        QSIGNER_DATABASE_URL=database_url,
        SOFTHSM2_CONF=str(softhsm_conf),
        QSIGNER_JWT_SECRET=JWT_SECRET,
        QSIGNER_PBKDF2_ITERATIONS="100000",
    )
    return Cli(env, tmp_path)


def make_token(softhsm_module: str) -> tuple[str, str]:
    """A fresh token in the test's SoftHSM directory: (label, user PIN)."""
    label, pin = random_label("cli"), os.urandom(10).hex()
    with Hsm(softhsm_module) as hsm:
        hsm.initialise_token(label, os.urandom(10).hex(), pin)
    return label, pin


def query(database_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def count(database_url: str, table: str) -> int:
    return int(query(database_url, f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608
