"""`quorum-signer serve` refuses to start on a configuration problem, with one clear line that
names the setting to fix (and never a credential from it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import SettingsError
from proxy.settings import Settings
from signer.pkcs11 import open_module_users
from tests.support.anvil import free_port, run_anvil
from tests.support.stack import in_process

BIN = Path(sys.executable).parent / "quorum-signer"


def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "serve"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.fixture
def base_env(database_url: str, softhsm_conf: Path, softhsm_module: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
    env.update(QSIGNER_LISTEN=f"127.0.0.1:{free_port()}", QSIGNER_DATABASE_URL=database_url,
               QSIGNER_JWT_SECRET="s" * 40, QSIGNER_PKCS11_MODULE=softhsm_module,
               QSIGNER_LOG_FORMAT="json", SOFTHSM2_CONF=str(softhsm_conf))  # fmt: skip
    return env


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("quorum-signer:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_startup_problems_name_the_setting(base_env: dict[str, str]) -> None:
    dead = f"http://user:hunter2@127.0.0.1:{free_port()}"
    line = error_line(start({**base_env, "QSIGNER_UPSTREAMS": dead}))
    assert "QSIGNER_UPSTREAMS" in line and "hunter2" not in line
    with run_anvil(chain_id=1337) as anvil:
        ok = {**base_env, "QSIGNER_UPSTREAMS": anvil}
        assert "QSIGNER_CHAIN_ID" in error_line(start({**ok, "QSIGNER_CHAIN_ID": "5"}))
        line = error_line(start({**ok, "QSIGNER_DATABASE_URL":
                                 "postgresql://u:hunter2@127.0.0.1:1/x"}))  # fmt: skip
        assert "QSIGNER_DATABASE_URL" in line and "hunter2" not in line
        assert "QSIGNER_PKCS11_MODULE" in error_line(
            start({**ok, "QSIGNER_PKCS11_MODULE": "/nonexistent/libpkcs11.so"})
        )
        no_jwt = {k: v for k, v in ok.items() if k != "QSIGNER_JWT_SECRET"}
        assert "QSIGNER_JWT_SECRET" in error_line(start(no_jwt))
        no_upstreams = {k: v for k, v in ok.items() if k != "QSIGNER_UPSTREAMS"}
        assert "QSIGNER_UPSTREAMS" in error_line(start(no_upstreams))


def test_chain_id_1_is_refused_at_start_up(base_env: dict[str, str]) -> None:
    """GoQuorum refuses chain id 1: its EIP-155 v (37/38) is that of private transactions."""
    with run_anvil(chain_id=1) as mainnet_like:
        line = error_line(start({**base_env, "QSIGNER_UPSTREAMS": mainnet_like}))
    assert "QSIGNER_UPSTREAMS" in line and "chain 1" in line and "private" in line, line


@pytest.mark.parametrize(
    "broken",
    [
        {"upstreams": ("ftp://127.0.0.1:1",)},  # refused by the node pool
        {"database_url": "postgresql://postgres@127.0.0.1:1/none"},  # no database there
        {"upstreams": (f"http://127.0.0.1:{free_port()}",)},  # no node answers
    ],
    ids=["bad-node-url", "no-database", "no-node"],
)
async def test_a_failed_start_closes_what_it_opened(
    broken: dict[str, Any], database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    """Whatever stops the start, what was opened before it is closed again: the HSM module
    (counted here) and the nodes' HTTP session (an unclosed one fails the test as a warning)."""
    before = open_module_users()
    settings = Settings(**{"database_url": database_url, "pkcs11_module": softhsm_module,
                           "jwt_secret": "s" * 40, "upstreams": ("http://127.0.0.1:1",),
                           **broken})  # fmt: skip
    with pytest.raises(SettingsError):
        async with in_process(settings):
            pass
    assert open_module_users() == before
