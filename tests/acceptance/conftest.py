"""The whole product started as a user starts it: `quorum-signer serve` in front of anvil, with
PostgreSQL and SoftHSM, in a Quorum-like zero-fee chain and in a normal fee market."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.anvil import free_port, run_anvil
from tests.support.serve import serve
from tests.support.stack import CHAIN_ID, Stack, build_stack, environment


@dataclass
class Running:
    url: str
    stack: Stack
    log: Path
    quorum_like: bool


@pytest.fixture(params=["quorum-like", "fee-market"])
def product(request: pytest.FixtureRequest, database_url: str, softhsm_conf: Path,
            softhsm_module: str, tmp_path: Path) -> Iterator[Running]:  # fmt: skip
    quorum_like = request.param == "quorum-like"
    with run_anvil(chain_id=CHAIN_ID, quorum_like=quorum_like) as anvil_url:
        stack = asyncio.run(build_stack(anvil_url, database_url, softhsm_module))
        log = tmp_path / "serve.log"
        env = environment(stack, softhsm_conf, f"127.0.0.1:{free_port()}")
        with serve(env, log) as url:
            yield Running(url, stack, log, quorum_like)
        # No secret used in the run may appear in the proxy's logs.
        text = log.read_text()
        assert '"message":"rpc"' in text.replace('": "', '":"'), "no request was logged"
        for secret in stack.secrets():
            assert secret not in text, "a secret reached the logs"
