"""The identity service in process, against real PostgreSQL and SoftHSM: envelopes, the unlock
cache, lockout, API keys, and what one replica's change does to another replica at once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from proxy import store
from proxy.errors import Forbidden, LockedOut, Unauthorized
from proxy.identity import Identity
from proxy.settings import Settings
from signer.pkcs11 import Hsm
from tests.conftest import SoftHsmToken
from tests.support.identity import refused_within_a_second

SETTINGS = Settings(pbkdf2_iterations=100_000, lockout_attempts=3, lockout_seconds=1)


@dataclass
class World:
    identity: Identity
    pool: asyncpg.Pool
    hsm: Hsm
    token: SoftHsmToken
    blocking_calls: list[str]
    address: bytes


def counting_executor(calls: list[str]) -> Callable[..., Any]:
    async def run(function: Callable[..., Any], *args: Any) -> Any:
        calls.append(getattr(function, "__name__", "?"))
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    return run


async def replica(database_url: str) -> tuple[Identity, asyncpg.Pool, list[str]]:
    pool = await store.connect(database_url, max_size=4)
    calls: list[str] = []
    return Identity(pool, SETTINGS, run_blocking=counting_executor(calls)), pool, calls


@pytest.fixture
async def world(database_url: str, hsm_token: SoftHsmToken) -> AsyncIterator[World]:
    identity, pool, calls = await replica(database_url)
    await store.upgrade(pool)
    await identity.create_organisation("acme")
    account = await identity.create_account(
        "acme", hsm_token.hsm, hsm_token.label, hsm_token.pin, name="treasury"
    )
    for user in ("alice", "bob"):
        await identity.add_user("acme", user, "signer", hsm_token.hsm, hsm_token.pin,
                                f"{user}-password")  # fmt: skip
    calls.clear()
    await identity.listen(database_url)
    try:
        yield World(identity, pool, hsm_token.hsm, hsm_token, calls, account.address)
    finally:
        await identity.close()
        await pool.close()


async def test_unlock_then_cached_unlock(world: World) -> None:
    started = time.perf_counter()
    principal, credentials = await world.identity.unlock_with_password("alice", "alice-password")
    first = time.perf_counter() - started
    assert principal.organisation == "acme" and principal.may_sign
    assert credentials.pin == world.token.pin and credentials.token_label == world.token.label
    assert "pin" not in repr(credentials) and world.token.pin not in repr(credentials)
    assert world.blocking_calls == ["envelope_key"]  # one PBKDF2

    started = time.perf_counter()
    for _ in range(1000):
        _, again = await world.identity.unlock_with_password("alice", "alice-password")
    cached = (time.perf_counter() - started) / 1000
    assert again == credentials
    assert world.blocking_calls == ["envelope_key"]  # no second PBKDF2
    print(f"first unlock {first * 1e3:.1f} ms, cached unlock {cached * 1e6:.1f} us")

    with pytest.raises(Unauthorized, match="wrong password"):
        await world.identity.unlock_with_password("alice", "alice-passwordX")


async def test_envelopes_swapped_between_users_do_not_open(world: World) -> None:
    await world.pool.execute(
        """UPDATE credential_envelopes a SET salt = b.salt, nonce = b.nonce,
                  ciphertext = b.ciphertext, iterations = b.iterations
           FROM credential_envelopes b
           WHERE a.user_id = 'alice' AND b.user_id = 'bob' AND a.kind = 'password'
             AND b.kind = 'password'"""
    )
    # Bob's envelope on Alice's row opens with neither password.
    for password in ("alice-password", "bob-password"):
        with pytest.raises(Unauthorized):
            await world.identity.unlock_with_password("alice", password)
    await world.identity.unlock_with_password("bob", "bob-password")


async def test_lockout_after_wrong_passwords_and_unlock_after_the_period(world: World) -> None:
    for _ in range(SETTINGS.lockout_attempts):
        with pytest.raises(Unauthorized):
            await world.identity.unlock_with_password("alice", "guess")
    with pytest.raises(LockedOut):
        await world.identity.unlock_with_password("alice", "alice-password")
    kinds = [r["kind"] for r in await world.pool.fetch(
        "SELECT content::jsonb->>'action' AS kind FROM audit_log WHERE chain = 'acme' "
        "AND content::jsonb->>'user' = 'alice' AND content::jsonb->>'kind' = 'security' "
        "ORDER BY seq")]  # fmt: skip
    assert kinds == ["user_added"] + ["wrong_password"] * 3 + ["lockout"]
    await asyncio.sleep(SETTINGS.lockout_seconds + 0.2)
    principal, _ = await world.identity.unlock_with_password("alice", "alice-password")
    assert principal.user_id == "alice"


async def test_a_right_password_resets_the_count(world: World) -> None:
    for _ in range(SETTINGS.lockout_attempts - 1):
        with pytest.raises(Unauthorized):
            await world.identity.unlock_with_password("alice", "guess")
    await world.identity.unlock_with_password("alice", "alice-password")
    for _ in range(SETTINGS.lockout_attempts - 1):
        with pytest.raises(Unauthorized):
            await world.identity.unlock_with_password("alice", "guess")
    await world.identity.unlock_with_password("alice", "alice-password")


async def test_revocation_reaches_a_listening_replica(world: World, database_url: str) -> None:
    new = await world.identity.create_api_key("alice", "alice-password")
    await world.identity.unlock_with_api_key(new.key)  # cached here
    other, pool, _ = await replica(database_url)
    try:
        await other.revoke_api_key(new.key_id)
    finally:
        await pool.close()
    await refused_within_a_second(lambda: world.identity.unlock_with_api_key(new.key))


async def test_api_key_alone_unlocks_until_revoked(world: World) -> None:
    new = await world.identity.create_api_key("alice", "alice-password")
    principal, credentials = await world.identity.unlock_with_api_key(new.key)
    assert principal.user_id == "alice" and credentials.pin == world.token.pin
    tampered = new.key[:-1] + ("A" if new.key[-1] != "A" else "B")
    for bad in (tampered, "qsk_nothing", new.key + "x", "qsk_" + "0" * 16 + "_" + "a" * 43):
        with pytest.raises(Unauthorized):
            await world.identity.unlock_with_api_key(bad)
    await world.identity.revoke_api_key(new.key_id)
    with pytest.raises(Unauthorized, match="revoked"):
        await world.identity.unlock_with_api_key(new.key)


async def test_disable_on_one_replica_holds_on_another_at_once(
    world: World, database_url: str
) -> None:
    key = await world.identity.create_api_key("alice", "alice-password")
    await world.identity.unlock_with_password("alice", "alice-password")  # cached here
    other, pool, _ = await replica(database_url)
    try:
        await other.disable_user("alice")
    finally:
        await pool.close()
    await refused_within_a_second(
        lambda: world.identity.unlock_with_password("alice", "alice-password")
    )
    await refused_within_a_second(lambda: world.identity.unlock_with_api_key(key.key))
    with pytest.raises(Unauthorized):
        await world.identity.principal("alice")


async def test_passwd_on_one_replica_retires_the_old_password_everywhere(
    world: World, database_url: str
) -> None:
    await world.identity.unlock_with_password("alice", "alice-password")  # cached here
    other, pool, _ = await replica(database_url)
    try:
        await other.change_password("alice", "alice-password", "new-secret")
    finally:
        await pool.close()
    await refused_within_a_second(
        lambda: world.identity.unlock_with_password("alice", "alice-password")
    )
    _, credentials = await world.identity.unlock_with_password("alice", "new-secret")
    assert credentials.pin == world.token.pin


async def test_accounts_of_another_organisation_are_refused(world: World) -> None:
    alice, _ = await world.identity.unlock_with_password("alice", "alice-password")
    assert (await world.identity.account_for(alice, world.address)).name == "treasury"
    with pytest.raises(Forbidden, match="not an account this caller may use"):
        await world.identity.account_for(alice, os.urandom(20))
    await world.identity.create_organisation("globex")
    await world.identity.add_user("globex", "mallory", "signer", world.hsm, world.token.pin,
                                  "mallory-password", token_label=world.token.label)  # fmt: skip
    mallory, _ = await world.identity.unlock_with_password("mallory", "mallory-password")
    with pytest.raises(Forbidden):
        await world.identity.account_for(mallory, world.address)


async def test_migrations_are_safe_to_run_at_once(database_url: str) -> None:
    pools = [await store.connect(database_url, max_size=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(store.upgrade(p) for p in pools))
        assert sorted(len(r) for r in results) == [0, 0, len(store.migrations())]
    finally:
        for pool in pools:
            await pool.close()
