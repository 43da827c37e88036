"""Limits counted across replicas: two `quorum-signer serve` processes on one database, 100
requests at once from ten users against a limit of 10 transactions per account let exactly 10
through; the others are refused -32003 `limit_exceeded` without taking a nonce."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy import store
from proxy.audit import AuditLog
from proxy.guard import admin
from proxy.identity import Identity
from tests.support.ledger import (
    ORGANISATION,
    Chain,
    Router,
    Team,
    call,
    ledger_rows,
    ledger_team,
)
from tests.support.replicas import replicas

POLICY = """\
version: 1
limits:
  - {name: ten-a-day, per: account, window: 24h, max_transactions: 10}
  - {name: gas-cap, per: organisation, window: 1h, max_gas: 100000000}
"""


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("policy-limits")) as built:
        yield built


async def _install(team: Team, text: str) -> None:
    pool = await store.connect(team.database_url, max_size=2)
    audit = AuditLog(pool)
    try:
        await admin.install(Identity(pool, team.settings), audit, ORGANISATION, text)
    finally:
        await audit.close()
        await pool.close()


async def test_a_limit_of_ten_lets_exactly_ten_of_a_hundred_through_two_replicas(
    team: Team, tmp_path: Path
) -> None:
    address = await team.new_account()
    await _install(team, POLICY)
    with replicas(team.env(), 2, tmp_path) as group:
        router = Router(group.urls)
        async with aiohttp.ClientSession() as session:
            replies = await asyncio.gather(*(
                call(session, router.next(), team.headers(team.users[i % len(team.users)]),
                     "eth_sendTransaction", [{"from": address, "to": address, "value": hex(i)}])
                for i in range(100)))  # fmt: skip
    through = [r for r in replies if r.ok]
    refused = [r for r in replies if r.error is not None]
    assert len(through) == 10, [r.describe() for r in replies[:5]]
    assert len(refused) == 90
    for reply in refused:
        assert reply.error is not None and reply.error["code"] == -32003, reply.describe()
        data = reply.error["data"]
        assert (data["reason"], data["rule"]) == ("limit_exceeded", "ten-a-day"), data
    rows = await ledger_rows(team.database_url, address)
    assert len(rows) == 10, "a refused request took a nonce"
    chain = Chain(team.node_url, address)
    deadline = asyncio.get_running_loop().time() + 30
    while chain.count() < 10:
        assert asyncio.get_running_loop().time() < deadline, "the ten were not mined"
        await asyncio.sleep(0.3)


async def test_a_new_policy_is_in_force_on_every_replica_within_a_second(
    team: Team, tmp_path: Path
) -> None:
    address = await team.new_account()
    tx = {"from": address, "to": address, "value": "0x1"}
    with replicas(team.env(), 2, tmp_path) as group:
        async with aiohttp.ClientSession() as session:
            for url in group.urls:  # allowed, and the policy in force is cached on both
                reply = await call(session, url, team.headers(team.users[0]),
                                   "eth_sendTransaction", [tx])  # fmt: skip
                assert reply.ok, reply.describe()
            await _install(team, "version: 1\ndefault: deny\n")
            installed = time.monotonic()
            for url in group.urls:
                while True:
                    reply = await call(session, url, team.headers(team.users[0]),
                                       "eth_sendTransaction", [tx])  # fmt: skip
                    if reply.error is not None and reply.error.get("code") == -32003:
                        break
                    assert reply.ok, reply.describe()
                    assert time.monotonic() - installed < 1.0, f"{url} still allows after 1 s"
                    await asyncio.sleep(0.05)
                assert reply.error is not None and reply.error["data"]["reason"] == "denied"
