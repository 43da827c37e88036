"""What authentication costs (issue 13, item 10): a made-up API key does not cost a query each
time, failed authentications are limited per client address before the database is touched,
and an API key is opened once, not on every request, until it is revoked or its user changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy.errors import Unauthorized
from proxy.identity import Identity
from proxy.settings import Settings
from tests.conftest import SoftHsmToken
from tests.support.anvil import run_anvil
from tests.support.identity import acme, refused_within_a_second, two_pools
from tests.support.stack import CHAIN_ID, build_stack, in_process

SETTINGS = Settings(pbkdf2_iterations=100_000)
MADE_UP_KEY = "qsk_0123456789abcdef_" + "A" * 43


class CountingPool:
    """The real pool, counting the reads the identity service sends to PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.reads = 0

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        self.reads += 1
        return await self._pool.fetchrow(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@pytest.fixture
async def pools(database_url: str, hsm_token: SoftHsmToken
                ) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:  # fmt: skip
    async with two_pools(database_url) as pools:
        await acme(Identity(pools[0], SETTINGS), hsm_token, {"alice": "pw"})
        yield pools


async def test_a_made_up_api_key_is_looked_up_once_and_a_new_user_is_found_at_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], database_url: str, hsm_token: SoftHsmToken
) -> None:
    counting = CountingPool(pools[0])
    identity = Identity(counting, SETTINGS)  # type: ignore[arg-type]
    await identity.listen(database_url)
    try:
        for _ in range(20):
            with pytest.raises(Unauthorized):
                await identity.unlock_with_api_key(MADE_UP_KEY)
        assert counting.reads == 1
        # A remembered miss never hides what is created afterwards, on any replica.
        with pytest.raises(Unauthorized):
            await identity.principal("bob")
        other = Identity(pools[1], SETTINGS)
        await other.add_user("acme", "bob", "signer", hsm_token.hsm, hsm_token.pin, "pw")
        deadline = time.monotonic() + 1.0
        while True:
            try:
                assert (await identity.principal("bob")).user_id == "bob"
                break
            except Unauthorized:
                assert time.monotonic() < deadline, "a new user stayed unknown"
                await asyncio.sleep(0.01)
    finally:
        await identity.close()


async def test_an_api_key_is_opened_once_until_revoked_or_its_user_disabled(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], database_url: str
) -> None:
    mine, other = Identity(pools[0], SETTINGS), Identity(pools[1], SETTINGS)
    first = await other.create_api_key("alice", "pw")
    second = await other.create_api_key("alice", "pw")
    await mine.listen(database_url)
    try:
        _, opened = await mine.unlock_with_api_key(first.key)
        for _ in range(100):
            _, again = await mine.unlock_with_api_key(first.key)
            assert again is opened  # the envelope was not opened (and decoded) again
        await mine.unlock_with_api_key(second.key)

        await other.revoke_api_key(first.key_id)
        await refused_within_a_second(lambda: mine.unlock_with_api_key(first.key))
        await mine.unlock_with_api_key(second.key)
        await other.disable_user("alice")
        await refused_within_a_second(lambda: mine.unlock_with_api_key(second.key))
    finally:
        await mine.close()


async def test_failed_authentications_are_limited_per_client_address(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    with run_anvil(chain_id=CHAIN_ID) as anvil:
        stack = await build_stack(anvil, database_url, softhsm_module,
                                  auth_failure_rate=1, auth_failure_burst=3)  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}

        async def call(session: aiohttp.ClientSession, url: str,
                       credential: str) -> tuple[int, Any]:  # fmt: skip
            headers = {"Authorization": f"Bearer {credential}"}
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, await response.json()

        async with in_process(stack.settings) as (url, session):
            for _ in range(3):
                status, answer = await call(session, url, MADE_UP_KEY)
                assert status == 401 and answer["error"]["code"] == 4100
            for credential in (MADE_UP_KEY, stack.jwt):  # refused before any check
                status, answer = await call(session, url, credential)
                assert status == 429 and answer["error"]["code"] == -32005
            # Another address is not held back by this one's failures.
            other_address = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=other_address) as elsewhere:
                status, _ = await call(elsewhere, url, stack.jwt)
                assert status == 200
                status, _ = await call(elsewhere, url, MADE_UP_KEY)
                assert status == 401
            await asyncio.sleep(1.1)  # the bucket refills at one failure a second
            status, _ = await call(session, url, stack.jwt)
            assert status == 200


async def test_behind_a_trusted_proxy_failures_count_against_its_clients(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    """Behind an ingress (QSIGNER_TRUSTED_PROXIES), one client's bad tokens hold back that client
    alone, not every caller the ingress forwards; a header the caller wrote itself changes
    nothing."""
    with run_anvil(chain_id=CHAIN_ID) as anvil:
        stack = await build_stack(anvil, database_url, softhsm_module, auth_failure_rate=1,
                                  auth_failure_burst=3, trusted_proxies=("127.0.0.1",))  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}

        async def call(session: aiohttp.ClientSession, url: str, credential: str,
                       forwarded_for: str) -> int:  # fmt: skip
            headers = {"Authorization": f"Bearer {credential}", "X-Forwarded-For": forwarded_for}
            async with session.post(url, json=body, headers=headers) as response:
                return response.status

        async with in_process(stack.settings) as (url, session):
            for _ in range(3):
                assert await call(session, url, MADE_UP_KEY, "198.51.100.1") == 401
            assert await call(session, url, stack.jwt, "198.51.100.1") == 429
            # The attacker's own left-most entry does not make it someone else.
            assert await call(session, url, stack.jwt, "203.0.113.7, 198.51.100.1") == 429
            # Another client behind the same ingress is served.
            assert await call(session, url, stack.jwt, "198.51.100.2") == 200
