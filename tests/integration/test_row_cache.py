"""The row cache of authentication (issue 13, item 5): a lost LISTEN connection comes back by
itself, nothing stale is served while it is down, and every cached row expires anyway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from proxy import store
from proxy.errors import Unauthorized
from proxy.identity import Identity
from proxy.identity.rowcache import CHANNEL, LISTENER_NAME
from proxy.settings import Settings
from tests.conftest import SoftHsmToken

SETTINGS = Settings(pbkdf2_iterations=100_000)


async def provision(database_url: str, hsm_token: SoftHsmToken) -> str:
    """Alice and Bob of acme; Bob's API key."""
    pool = await store.connect(database_url, max_size=2)
    try:
        await store.upgrade(pool)
        identity = Identity(pool, SETTINGS)
        await identity.create_organisation("acme")
        await identity.create_account("acme", hsm_token.hsm, hsm_token.label, hsm_token.pin)
        for user in ("alice", "bob"):
            await identity.add_user("acme", user, "signer", hsm_token.hsm, hsm_token.pin, user)
        return (await identity.create_api_key("bob", "bob")).key
    finally:
        await pool.close()


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    mine, other = [await store.connect(database_url, max_size=4) for _ in range(2)]
    try:
        yield mine, other
    finally:
        await mine.close()
        await other.close()


async def refused_within_a_second(attempt: Callable[[], Awaitable[Any]]) -> None:
    deadline = time.monotonic() + 1.0
    while True:
        try:
            await attempt()
        except Unauthorized:
            return
        assert time.monotonic() < deadline, "still accepted a second after the change"
        await asyncio.sleep(0.01)


async def silent_role(pool: asyncpg.Pool, user: str, role: str) -> None:
    """A change no replica is told of: only a cache that is not in use sees it."""
    await pool.execute("UPDATE users SET role = $2 WHERE id = $1", user, role)


async def test_a_terminated_listener_comes_back_and_nothing_stale_is_served_meanwhile(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    bob_key = await provision(database_url, hsm_token)
    mine, other = Identity(pools[0], SETTINGS), Identity(pools[1], SETTINGS)
    await mine.listen(database_url)
    try:
        await mine.principal("alice")  # both cached here
        await mine.unlock_with_api_key(bob_key)
        terminated = await pools[1].fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = $1 AND datname = current_database()""",
            LISTENER_NAME,
        )
        assert terminated == 1
        await other.disable_user("alice")
        await other.revoke_api_key(bob_key.split("_")[1])
        await refused_within_a_second(lambda: mine.principal("alice"))
        await refused_within_a_second(lambda: mine.unlock_with_api_key(bob_key))

        # The listener is back: rows are cached again (a silent change goes unseen) ...
        deadline = time.monotonic() + 10
        while True:
            await mine.principal("bob")
            await silent_role(pools[1], "bob", "viewer")
            if (await mine.principal("bob")).role == "signer":
                break
            await silent_role(pools[1], "bob", "signer")
            assert time.monotonic() < deadline, "the listener did not come back"
            await asyncio.sleep(0.1)
        # ... and announced changes reach this replica through it.
        await pools[1].execute("SELECT pg_notify($1, 'user:bob')", CHANNEL)
        deadline = time.monotonic() + 1.0
        while (await mine.principal("bob")).role != "viewer":
            assert time.monotonic() < deadline, "a NOTIFY did not arrive on the new listener"
            await asyncio.sleep(0.01)
    finally:
        await mine.close()


async def test_a_cached_row_expires_even_if_no_change_is_announced(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    await provision(database_url, hsm_token)
    mine = Identity(pools[0], replace(SETTINGS, row_cache_seconds=1))
    await mine.listen(database_url)
    try:
        await mine.principal("alice")
        await silent_role(pools[1], "alice", "viewer")
        assert (await mine.principal("alice")).role == "signer"  # served from the cache
        deadline = time.monotonic() + 2.0
        while (await mine.principal("alice")).role != "viewer":
            assert time.monotonic() < deadline, "a cached row outlived its TTL"
            await asyncio.sleep(0.05)
    finally:
        await mine.close()
