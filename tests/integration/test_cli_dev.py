"""`quorum-signer` as a user runs it: --help, and `dev` creating then reusing its token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "quorum-signer"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return subprocess.run(
        [str(BIN), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_help(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "dev" in result.stdout
    result = run("dev", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--state-dir" in result.stdout


def test_dev_creates_then_reuses_its_token(tmp_path: Path) -> None:
    first = run("dev", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    address = first.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
    assert "creating the SoftHSM token" in first.stderr
    state = tmp_path / ".quorum-signer"
    assert (state / "softhsm" / "softhsm2.conf").exists()
    assert oct((state / "dev.json").stat().st_mode & 0o777) == "0o600"

    second = run("dev", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().splitlines()[-1] == address
    assert "reusing the demo key" in second.stderr


def test_unknown_command_exits_2(tmp_path: Path) -> None:
    result = run("frobnicate", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr
