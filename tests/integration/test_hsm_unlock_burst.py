"""Blocking work on executors of its own (issue 13, items 4 and 10): a burst of first unlocks
(PBKDF2) delays neither an already-unlocked signing request nor /readyz; once unlocked, a
signing request makes no executor hop but the signature; over the PBKDF2 queue's bound, -32005.

Ordering is asserted by counts (how many unlocks had finished), never by timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import store
from proxy.app import SERVICES, create_app
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.messages import personal_message_digest
from signer.pkcs11 import Hsm
from tests.support.anvil import run_anvil
from tests.support.checks import check_message_signature
from tests.support.stack import CHAIN_ID, Stack, build_stack

BURST = 20
MESSAGE = b"burst"


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID) as url:
        yield url


async def _add_users(stack: Stack, module: str, count: int, iterations: int
                     ) -> list[dict[str, str]]:  # fmt: skip
    """`count` new signers of the stack's organisation, never unlocked yet: their headers."""
    pool = await store.connect(stack.database_url, max_size=4)
    try:
        identity = Identity(pool, replace(stack.settings, pbkdf2_iterations=iterations))
        # Closed before the app opens its own handle: login state belongs to the process.
        with Hsm(module, sessions_per_token=1) as hsm:
            users = [(f"burst-{i}", "pw-" + os.urandom(6).hex()) for i in range(count)]
            await asyncio.gather(
                *(identity.add_user("acme", user, "signer", hsm, stack.pin, password)
                  for user, password in users)
            )  # fmt: skip
    finally:
        await pool.close()
    return [{"Authorization": f"Bearer {issue_token(stack.settings, user, 3600)}",
             "X-Signer-Password": password} for user, password in users]  # fmt: skip


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings,
) -> AsyncIterator[tuple[str, aiohttp.ClientSession, web.Application]]:
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        connector = aiohttp.TCPConnector(limit=0)  # every request of the burst at once
        async with aiohttp.ClientSession(connector=connector) as session:
            yield str(server.make_url("")).rstrip("/"), session, app
    finally:
        await server.close()


async def _personal_sign(session: aiohttp.ClientSession, url: str, stack: Stack,
                         headers: dict[str, str]) -> tuple[int, Any]:  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 1, "method": "personal_sign",
            "params": ["0x" + MESSAGE.hex(), stack.address]}  # fmt: skip
    async with session.post(url + "/", json=body, headers=headers) as response:
        return response.status, await response.json()


def _check_signed(stack: Stack, answer: Any) -> None:
    assert "result" in answer, answer
    signature = bytes.fromhex(answer["result"][2:])
    check_message_signature(personal_message_digest(MESSAGE), signature,
                            bytes.fromhex(stack.address[2:]))  # fmt: skip


def _alice(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}


async def test_a_burst_of_first_unlocks_delays_neither_signing_nor_readyz(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await build_stack(anvil, database_url, softhsm_module)
    # Production's iteration count: each unlock of the burst is a real ~0.1 s of PBKDF2.
    burst_users = await _add_users(stack, softhsm_module, BURST, 600_000)
    async with _serving(stack.settings) as (url, session, _app):
        _check_signed(stack, (await _personal_sign(session, url, stack, _alice(stack)))[1])
        finished: list[Any] = []

        async def first_unlock(headers: dict[str, str]) -> None:
            finished.append(await _personal_sign(session, url, stack, headers))

        burst = [asyncio.ensure_future(first_unlock(headers)) for headers in burst_users]
        # Once one unlock has finished, every other one is queued or deriving.
        await asyncio.wait(burst, return_when=asyncio.FIRST_COMPLETED)

        async def sign_now() -> tuple[int, Any]:
            answer = await _personal_sign(session, url, stack, _alice(stack))
            return len(finished), answer

        async def readyz_now() -> tuple[int, Any]:
            async with session.get(url + "/readyz") as response:
                return len(finished), (response.status, await response.json())

        both = await asyncio.gather(sign_now(), readyz_now())
        (signed_after, signed), (ready_after, ready) = both
        await asyncio.gather(*burst)
    _check_signed(stack, signed[1])
    assert ready[0] == 200 and ready[1]["hsm"]["ok"], ready
    assert len(finished) == BURST
    for status, answer in finished:
        assert status == 200, answer
        _check_signed(stack, answer)
    # Behind the burst (a shared executor), both would finish after most of the unlocks.
    assert signed_after <= BURST // 2, f"signing waited for {signed_after} unlocks"
    assert ready_after <= BURST // 2, f"/readyz waited for {ready_after} unlocks"


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting what is given to it."""

    submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kwargs)


async def test_an_unlocked_signing_request_hops_only_for_its_signature(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    default = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(default)
    stack = await build_stack(anvil, database_url, softhsm_module)
    async with _serving(stack.settings) as (url, session, app):
        _check_signed(stack, (await _personal_sign(session, url, stack, _alice(stack)))[1])
        hsm = app[SERVICES].hsm
        token = hsm.token(stack.token_label)
        before = default.submitted, hsm.executor.submitted, token.executor.submitted
        for _ in range(5):
            _check_signed(stack, (await _personal_sign(session, url, stack, _alice(stack)))[1])
        after = default.submitted, hsm.executor.submitted, token.executor.submitted
    # Nothing on the shared executor, no login, one job on the token's executor per signature.
    assert [b - a for a, b in zip(before, after, strict=True)] == [0, 0, 5]


async def test_a_burst_over_the_unlock_queue_is_refused_with_32005(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await build_stack(anvil, database_url, softhsm_module)
    burst_users = await _add_users(stack, softhsm_module, 8, 600_000)
    # One PBKDF2 thread and one waiting place: at most two of the eight are taken at once.
    settings = replace(stack.settings, unlock_threads=1, unlock_queue_limit=1)
    async with _serving(settings) as (url, session, _app):
        answers = await asyncio.gather(*(_personal_sign(session, url, stack, headers)
                                         for headers in burst_users))  # fmt: skip
        refused = [answer for status, answer in answers if status == 429]
        assert refused and all(answer["error"]["code"] == -32005 for answer in refused)
        for status, answer in answers:
            if status != 429:
                _check_signed(stack, answer)
        # A refusal is not a wrong password: every user unlocks once the queue has room.
        for headers in burst_users:
            _check_signed(stack, (await _personal_sign(session, url, stack, headers))[1])
