"""Fixtures for the command-line tests: a fresh token and the `quorum-signer` runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import Cli, make_cli, make_token


@pytest.fixture
def token(softhsm_conf: Path, softhsm_module: str) -> tuple[str, str]:
    """A fresh SoftHSM token in this test's directory: (label, user PIN)."""
    return make_token(softhsm_module)


@pytest.fixture
def cli(database_url: str, softhsm_conf: Path, tmp_path: Path) -> Cli:
    """`quorum-signer` as a subprocess, on this test's database and SoftHSM directory."""
    return make_cli(database_url, softhsm_conf, tmp_path)
