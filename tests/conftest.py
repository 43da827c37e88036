"""Shared fixtures. Tier markers come from the directory a test lives in."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from signer.pkcs11 import Hsm, Token, find_softhsm_module, open_module_users
from softhsm import write_config
from tests.support.database import fresh_database, postgres_server
from tests.support.hsm import random_label

TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def no_hsm_handle_leaks() -> Iterator[None]:
    """Every test closes the HSM handles it opens: a leaked one would keep the module
    initialised, and the next test would silently see this test's SOFTHSM2_CONF."""
    before = open_module_users()
    yield
    assert open_module_users() == before, "an Hsm handle was left open"


@pytest.fixture
def softhsm_module() -> str:
    module = find_softhsm_module()
    if module is None:
        pytest.fail("SoftHSM2 is not installed (apt-get install softhsm2; `make test` does it)")
    return module


@dataclass
class SoftHsmToken:
    hsm: Hsm
    token: Token
    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)
    conf: Path = field(default=Path())


@pytest.fixture
def softhsm_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SoftHSM token directory for this test, selected through SOFTHSM2_CONF."""
    conf = write_config(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    return conf


@pytest.fixture
def hsm_token(softhsm_conf: Path, softhsm_module: str) -> Iterator[SoftHsmToken]:
    """A fresh token (random label and PINs) with this process logged in; closed afterwards."""
    label, pin, so_pin = random_label(), os.urandom(12).hex(), os.urandom(12).hex()
    hsm = Hsm(softhsm_module)
    try:
        hsm.initialise_token(label, so_pin, pin)
        token = hsm.login(label, pin)
        yield SoftHsmToken(hsm, token, label, pin, so_pin, softhsm_conf)
    finally:
        hsm.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server for the session (the local one, else an embedded one)."""
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture
def database_url(postgres: str) -> Iterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    with fresh_database(postgres) as dsn:
        yield dsn
