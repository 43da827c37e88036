"""Replicas of the identity service for tests: two pools on one database (two replicas), an
organisation with users to start from, and the bounded wait for a change to reach a replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from proxy import store
from proxy.errors import Unauthorized
from proxy.identity import Identity
from tests.conftest import SoftHsmToken


@contextlib.asynccontextmanager
async def two_pools(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """What two replicas have: each its own pool on the same (migrated) database."""
    pools = [await store.connect(database_url, max_size=4) for _ in range(2)]
    try:
        await store.upgrade(pools[0])
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()


async def acme(identity: Identity, token: SoftHsmToken, passwords: dict[str, str]) -> None:
    """Organisation acme with one account on `token` and a signer per user (with password)."""
    await identity.create_organisation("acme")
    await identity.create_account("acme", token.hsm, token.label, token.pin)
    for user, password in passwords.items():
        await identity.add_user("acme", user, "signer", token.hsm, token.pin, password)


async def refused_within_a_second(attempt: Callable[[], Awaitable[Any]]) -> None:
    """The change reaches this replica by NOTIFY: within a second, as CONTRACT promises."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            await attempt()
        except Unauthorized:
            return
        assert time.monotonic() < deadline, "still accepted a second after the change"
        await asyncio.sleep(0.01)


async def revoke_elsewhere(database_url: str, settings: Any, api_key: str) -> float:
    """`apikey revoke` as another replica (or the command line) runs it: its own pool and
    identity service. The moment it committed (monotonic)."""
    pool = await store.connect(database_url, max_size=2)
    try:
        await Identity(pool, settings).revoke_api_key(api_key.split("_")[1])
        return time.monotonic()
    finally:
        await pool.close()


async def disable_elsewhere(database_url: str, settings: Any, user_id: str) -> float:
    """`user disable` as another replica runs it; the moment it committed (monotonic)."""
    pool = await store.connect(database_url, max_size=2)
    try:
        await Identity(pool, settings).disable_user(user_id)
        return time.monotonic()
    finally:
        await pool.close()
