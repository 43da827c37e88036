"""Callers that give their own nonce, as foundry's `cast send --unlocked` does: it reads
eth_getTransactionCount(pending) through the proxy a moment before, so two of them give the same
one (issue 14). With QSIGNER_CALLER_NONCES=respect one is sent and the other refused (-32602
"already used"), never a silent replacement; with `reassign` both are mined. Each caller goes
through its own replica, on one database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.ledger import (
    RECIPIENT,
    Chain,
    Reply,
    Team,
    call,
    ledger_team,
    mined,
    settled,
)
from tests.support.replicas import replicas
from tests.support.stack import CHAIN_ID


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("ledger-nonces"), users=3) as built:
        yield built


def cast_style(address: str, nonce: int, value: int) -> dict[str, Any]:
    """What `cast send --legacy --unlocked` sends (FIELD-NOTES): lowercase addresses, its own
    nonce, gas and price, the chain id, and both `input` and `data`."""
    return {"from": address.lower(), "to": RECIPIENT.lower(), "value": hex(value),
            "gas": hex(21000), "gasPrice": "0x0", "nonce": hex(nonce), "chainId": hex(CHAIN_ID),
            "input": "0x", "data": "0x"}  # fmt: skip


async def pending_count(session: aiohttp.ClientSession, url: str, team: Team, user: str,
                        address: str) -> int:  # fmt: skip
    reply = await call(session, url, team.headers(user), "eth_getTransactionCount",
                       [address, "pending"])  # fmt: skip
    assert reply.ok, reply.describe()
    return int(reply.result, 16)


async def proxy_nonced(session: aiohttp.ClientSession, url: str, team: Team,
                       address: str, value: int) -> str:  # fmt: skip
    reply = await call(session, url, team.headers("user0"), "eth_sendTransaction",
                       [{"from": address, "to": RECIPIENT, "value": hex(value)}])  # fmt: skip
    assert reply.ok, reply.describe()
    return str(reply.result).lower()


async def two_cast_users(session: aiohttp.ClientSession, urls: list[str], team: Team,
                         address: str) -> tuple[int, list[Reply]]:  # fmt: skip
    """Each reads the pending count through its replica, then both send with it at once."""
    counts = await asyncio.gather(
        pending_count(session, urls[0], team, "user1", address),
        pending_count(session, urls[1], team, "user2", address),
    )
    assert counts[0] == counts[1], counts
    nonce = counts[0]
    replies = await asyncio.gather(
        call(session, urls[0], team.headers("user1"), "eth_sendTransaction",
             [cast_style(address, nonce, 11)]),
        call(session, urls[1], team.headers("user2"), "eth_sendTransaction",
             [cast_style(address, nonce, 12)]),
    )  # fmt: skip
    return nonce, list(replies)


def refused(reply: Reply, text: str) -> None:
    assert reply.status == 200 and reply.error is not None, reply.describe()
    assert reply.error["code"] == -32602, reply.describe()
    assert text in reply.error["message"], reply.describe()


async def test_respect_sends_one_and_refuses_the_other(team: Team, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(CALLER_NONCES="respect"), 2, tmp_path) as group:
        urls = group.urls
        async with aiohttp.ClientSession() as session:
            first = await proxy_nonced(session, urls[0], team, address, 1)
            nonce, replies = await two_cast_users(session, urls, team, address)
            assert nonce == 1  # the ledger's next nonce, though the node may not have seen 0
            winners = [reply for reply in replies if reply.ok]
            assert len(winners) == 1, [reply.describe() for reply in replies]
            (loser,) = [reply for reply in replies if not reply.ok]
            refused(loser, "already used")
            winner = str(winners[0].result).lower()

            # A nonce read a moment ago, taken by a proxy-nonced transaction meanwhile.
            read = await pending_count(session, urls[1], team, "user1", address)
            taken = await proxy_nonced(session, urls[0], team, address, 2)
            late = await call(session, urls[1], team.headers("user1"), "eth_sendTransaction",
                              [cast_style(address, read, 13)])  # fmt: skip
            refused(late, "already used")

            # A nonce beyond the ledger's next one and the node's pending count.
            ahead = await call(session, urls[0], team.headers("user2"), "eth_sendTransaction",
                               [cast_style(address, read + 5, 14)])  # fmt: skip
            refused(ahead, "ahead")

            last = await proxy_nonced(session, urls[1], team, address, 3)
            await mined(chain, {first, winner, taken, last}, timeout=10)
        await settled(chain, team.database_url, timeout=10)
        history = chain.check()
        assert [tx.hash for tx in history] == [first, winner, taken, last]


async def test_reassign_mines_both(team: Team, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(CALLER_NONCES="reassign"), 2, tmp_path) as group:
        urls = group.urls
        async with aiohttp.ClientSession() as session:
            first = await proxy_nonced(session, urls[0], team, address, 1)
            _, replies = await two_cast_users(session, urls, team, address)
            assert all(reply.ok for reply in replies), [reply.describe() for reply in replies]
            both = {str(reply.result).lower() for reply in replies}
            assert len(both) == 2
            # a caller's nonce far ahead is not kept waiting in the pool: the ledger's is used
            ahead = await call(session, urls[0], team.headers("user2"), "eth_sendTransaction",
                               [cast_style(address, 40, 14)])  # fmt: skip
            assert ahead.ok, ahead.describe()
            await mined(chain, {first, *both, str(ahead.result).lower()}, timeout=10)
        await settled(chain, team.database_url, timeout=10)
        history = chain.check()
        assert len(history) == 4 and history[0].hash == first
        assert {tx.value for tx in history[1:3]} == {11, 12}
