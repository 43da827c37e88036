"""Lockout under concurrency (issue 13, item 3): guesses racing through two replicas on one
database are counted atomically, so the limit holds however many arrive at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from proxy.errors import LockedOut, RateLimited, Unauthorized
from proxy.identity import Identity
from proxy.settings import Settings
from signer.errors import Overloaded
from signer.executors import BoundedExecutor
from tests.conftest import SoftHsmToken
from tests.support.identity import acme, two_pools

LIMIT = 5
SETTINGS = Settings(pbkdf2_iterations=100_000, lockout_attempts=LIMIT, lockout_seconds=3)


@pytest.fixture
async def replicas(database_url: str, hsm_token: SoftHsmToken
                   ) -> AsyncIterator[tuple[Identity, Identity]]:  # fmt: skip
    async with two_pools(database_url) as pools:
        first, second = (Identity(pool, SETTINGS) for pool in pools)
        await acme(first, hsm_token, {"alice": "right"})
        for replica in (first, second):
            await replica.listen(database_url)
        try:
            yield first, second
        finally:
            for replica in (first, second):
                await replica.close()


async def test_concurrent_guesses_through_two_replicas_count_at_most_the_limit(
    replicas: tuple[Identity, Identity],
) -> None:
    first, second = replicas

    async def guess(replica: Identity, n: int) -> type[Exception]:
        try:
            await replica.unlock_with_password("alice", f"guess-{n}")
        except Unauthorized as exc:  # LockedOut included
            return type(exc)
        raise AssertionError("a wrong password unlocked")

    outcomes = await asyncio.gather(*(guess(replicas[n % 2], n) for n in range(50)))
    events = [r["kind"] for r in await first.pool.fetch(
        "SELECT content::jsonb->>'action' AS kind FROM audit_log WHERE chain = 'acme' "
        "AND content::jsonb->>'user' = 'alice' AND content::jsonb->>'kind' = 'security' "
        "ORDER BY seq")]  # fmt: skip
    assert events.count("wrong_password") <= LIMIT
    assert events.count("lockout") == 1
    assert outcomes.count(LockedOut) >= 50 - LIMIT

    # The right password is refused on both replicas until the lock expires, then accepted.
    locked_at = time.monotonic()
    for replica in (first, second):
        with pytest.raises(LockedOut):
            await replica.unlock_with_password("alice", "right")
    deadline = locked_at + SETTINGS.lockout_seconds + 2
    while True:
        try:
            principal, _ = await second.unlock_with_password("alice", "right")
            break
        except LockedOut:
            assert time.monotonic() < deadline, "still locked well after the lock expired"
            await asyncio.sleep(0.1)
    assert principal.user_id == "alice"
    assert time.monotonic() - locked_at > 1  # it was the lock's expiry that let it through
    await first.unlock_with_password("alice", "right")


class OneUnlockThread:
    """PBKDF2's executor cut down to one thread (and `queued` places), which `take()` keeps busy
    until `free()`: what a burst of first unlocks does to the real one."""

    def __init__(self, queued: int) -> None:
        self.executor = BoundedExecutor(1, queued, thread_name_prefix="pbkdf2-test")
        self._gate = threading.Event()
        self._busy: Future[bool] | None = None

    def take(self) -> None:
        self._busy = self.executor.submit(self._gate.wait)

    def free(self) -> None:
        self._gate.set()
        if self._busy is not None:
            self._busy.result()

    async def identity(self, pool: asyncpg.Pool, hsm_token: SoftHsmToken,
                       settings: Settings = SETTINGS) -> Identity:  # fmt: skip
        """A replica on this thread, with acme and alice (password "right")."""
        identity = Identity(pool, settings, run_blocking=self.executor.run)
        await acme(identity, hsm_token, {"alice": "right"})
        return identity

    async def stuck_unlock(self, identity: Identity) -> asyncio.Future[Any]:
        """Alice's first unlock, its attempt counted and its PBKDF2 queued behind the busy
        thread until `free()`."""
        self.take()
        unlock = asyncio.ensure_future(identity.unlock_with_password("alice", "right"))
        while self.executor.outstanding < 2:
            await asyncio.sleep(0.01)
        return unlock

    def __enter__(self) -> OneUnlockThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()
        self.executor.shutdown()


async def test_an_attempt_never_judged_is_given_back(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """A right password refused before PBKDF2 could judge it (every unlock thread busy: 429) does
    not count toward the lockout: a client retrying through a burst is not locked out for good."""
    with OneUnlockThread(queued=0) as unlock_thread:
        async with two_pools(database_url) as (pool, _):
            identity = await unlock_thread.identity(pool, hsm_token)
            unlock_thread.take()
            for _ in range(2 * LIMIT):
                with pytest.raises(Overloaded):
                    await identity.unlock_with_password("alice", "right")
            unlock_thread.free()
            principal, _ = await identity.unlock_with_password("alice", "right")
            assert principal.user_id == "alice"
            assert await pool.fetchval("SELECT failed_attempts FROM users WHERE id = 'alice'") == 0


async def test_a_count_left_at_the_limit_without_a_lock_ends(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """Attempts counted by a replica that died before judging them leave the count at the limit
    with no lock: they stop counting once QSIGNER_LOCKOUT_SECONDS have passed, as a lock would."""
    settings = replace(SETTINGS, lockout_seconds=1)
    async with two_pools(database_url) as (pool, _):
        identity = Identity(pool, settings)
        await acme(identity, hsm_token, {"alice": "right"})
        await pool.execute("UPDATE users SET failed_attempts = $1, attempt_at = now() "
                           "WHERE id = 'alice'", LIMIT)  # fmt: skip
        with pytest.raises(LockedOut):
            await identity.unlock_with_password("alice", "right")
        await asyncio.sleep(settings.lockout_seconds + 0.2)
        principal, _ = await identity.unlock_with_password("alice", "right")
        assert principal.user_id == "alice"


async def test_a_count_from_before_attempt_times_ends_too(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """A user counted at the limit before attempts had times (or under a higher limit since
    lowered) is not locked for good either."""
    async with two_pools(database_url) as (pool, _):
        identity = Identity(pool, SETTINGS)
        await acme(identity, hsm_token, {"alice": "right"})
        await pool.execute("UPDATE users SET failed_attempts = $1, attempt_at = NULL "
                           "WHERE id = 'alice'", LIMIT + 2)  # fmt: skip
        principal, _ = await identity.unlock_with_password("alice", "right")
        assert principal.user_id == "alice"


async def test_a_user_disabled_while_their_password_is_judged_is_refused(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """`user disable` (or `passwd`) committed while PBKDF2 judges a first unlock wins: the
    unlock is refused, and nothing is cached for it."""
    with OneUnlockThread(queued=1) as unlock_thread:
        async with two_pools(database_url) as (pool, other_pool):
            identity = await unlock_thread.identity(pool, hsm_token)
            unlock = await unlock_thread.stuck_unlock(identity)
            await Identity(other_pool, SETTINGS).disable_user("alice")
            unlock_thread.free()
            with pytest.raises(Unauthorized):
                await unlock
            assert len(identity.unlocker.unlock_cache) == 0


async def test_a_password_that_is_not_text_is_refused_quietly(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """Undecodable bytes in X-Signer-Password (surrogates once aiohttp decoded them) are a wrong
    password, not an encoding error whose traceback would quote the password in the log."""
    async with two_pools(database_url) as (pool, _):
        identity = Identity(pool, SETTINGS)
        await acme(identity, hsm_token, {"alice": "right"})
        with pytest.raises(Unauthorized):
            await identity.unlock_with_password("alice", "right\udcff")
        assert await pool.fetchval("SELECT failed_attempts FROM users WHERE id = 'alice'") == 0


async def test_waiting_for_a_users_first_unlock_is_bounded(
    database_url: str, hsm_token: SoftHsmToken
) -> None:
    """A user's cold unlocks in one replica go one at a time; one waiting behind another that is
    stuck (PBKDF2 queued behind busy threads) gives up after QSIGNER_DATABASE_TIMEOUT with
    -32005, uncounted, instead of waiting without end."""
    settings = replace(SETTINGS, database_timeout=1)
    with OneUnlockThread(queued=1) as unlock_thread:
        async with two_pools(database_url) as (pool, _):
            identity = await unlock_thread.identity(pool, hsm_token, settings)
            first = await unlock_thread.stuck_unlock(identity)  # holds alice's turn
            with pytest.raises(RateLimited):
                await asyncio.wait_for(identity.unlock_with_password("alice", "right"), 5)
            unlock_thread.free()
            principal, _ = await first
            assert principal.user_id == "alice"
