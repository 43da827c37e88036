"""`Idempotency-Key` on eth_sendTransaction (issue 14): repeats of one request, sent at once to two
replicas on one database, make one transaction and every answer carries its hash, also when the
caller gives its own nonce; the same key with another body is refused (-32602 naming the
header); the key belongs to its caller, expires after QSIGNER_IDEMPOTENCY_TTL, and is given up
when its request was refused."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.faults import RejectingForwarder, fronts_in_thread
from tests.support.ledger import (
    RECIPIENT,
    Chain,
    Team,
    call,
    ledger_rows,
    ledger_team,
    mined,
    row_hash,
    settled,
)
from tests.support.replicas import replicas
from tests.support.stack import CHAIN_ID

REPEATS, ROUNDS = 5, 3


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("ledger-idempotency"), users=2) as built:
        yield built


async def test_concurrent_repeats_across_two_replicas(team: Team, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(), 2, tmp_path) as group:
        async with aiohttp.ClientSession() as session:
            ours: list[str] = []
            for round_ in range(ROUNDS):
                key = f"order-{round_}-{os.urandom(6).hex()}"
                tx = {"from": address, "to": RECIPIENT, "value": hex(100 + round_)}
                headers = team.headers("user0", **{"Idempotency-Key": key})
                replies = await asyncio.gather(*(
                    call(session, group.urls[i % 2], headers, "eth_sendTransaction", [tx])
                    for i in range(REPEATS)))  # fmt: skip
                assert all(reply.ok for reply in replies), [r.describe() for r in replies]
                hashes = {str(reply.result).lower() for reply in replies}
                assert len(hashes) == 1, f"round {round_}: {len(hashes)} hashes for one key"
                ours.append(hashes.pop())
            assert len(set(ours)) == ROUNDS
            await mined(chain, set(ours), timeout=10)

            # Asked again once mined, on either replica: the same answer, nothing sent.
            again = await call(session, group.urls[1], headers, "eth_sendTransaction", [tx])
            assert again.ok and str(again.result).lower() == ours[-1], again.describe()

            # The same key with another body: refused, naming the header.
            other = await call(session, group.urls[0], headers, "eth_sendTransaction",
                               [{**tx, "value": hex(999)}])  # fmt: skip
            assert other.status == 200 and other.error is not None, other.describe()
            assert other.error["code"] == -32602, other.describe()
            assert "Idempotency-Key" in other.error["message"], other.describe()

            # Another caller's request under the same key is that caller's own.
            theirs = await call(session, group.urls[0],
                                team.headers("user1", **{"Idempotency-Key": key}),
                                "eth_sendTransaction", [tx])  # fmt: skip
            assert theirs.ok, theirs.describe()
            assert str(theirs.result).lower() not in ours
            await mined(chain, {str(theirs.result).lower()}, timeout=10)

        await settled(chain, team.database_url, timeout=10)
        history = chain.check()
        assert [tx.hash for tx in history] == [*ours, str(theirs.result).lower()]
        rows = await ledger_rows(team.database_url, address)
        assert sorted(str(row_hash(row)) for row in rows) == sorted(tx.hash for tx in history), rows


async def test_a_key_is_forgotten_after_its_ttl(team: Team, tmp_path: Path) -> None:
    """QSIGNER_IDEMPOTENCY_TTL=2: the same key two seconds later is a new request."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(IDEMPOTENCY_TTL="2"), 1, tmp_path) as group:
        url = group.urls[0]
        headers = team.headers("user0", **{"Idempotency-Key": f"ttl-{os.urandom(6).hex()}"})
        tx = {"from": address, "to": RECIPIENT, "value": hex(5)}
        async with aiohttp.ClientSession() as session:
            first = await call(session, url, headers, "eth_sendTransaction", [tx])
            again = await call(session, url, headers, "eth_sendTransaction", [tx])
            assert first.ok and again.ok, (first.describe(), again.describe())
            assert again.result == first.result
            await asyncio.sleep(2.5)
            later = await call(session, url, headers, "eth_sendTransaction", [tx])
            assert later.ok, later.describe()
            assert later.result != first.result, "the key was remembered beyond its TTL"
            hashes = [str(first.result).lower(), str(later.result).lower()]
            await mined(chain, set(hashes), timeout=10)
        await settled(chain, team.database_url, timeout=10)
        assert [tx.hash for tx in chain.check()] == hashes


async def test_a_caller_given_nonce_under_a_key(team: Team, tmp_path: Path) -> None:
    """A cast-style request (its own nonce) repeated under one key, at once on two replicas:
    every repeat answers the first transaction, none is refused as 'already used'."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(), 2, tmp_path) as group:
        headers = team.headers("user0", **{"Idempotency-Key": f"cast-{os.urandom(6).hex()}"})
        tx = {"from": address.lower(), "to": RECIPIENT.lower(), "value": hex(9),
              "gas": hex(21000), "gasPrice": "0x0", "nonce": "0x0", "chainId": hex(CHAIN_ID),
              "input": "0x", "data": "0x"}  # fmt: skip
        async with aiohttp.ClientSession() as session:
            replies = await asyncio.gather(*(
                call(session, group.urls[i % 2], headers, "eth_sendTransaction", [tx])
                for i in range(REPEATS)))  # fmt: skip
        assert all(reply.ok for reply in replies), [r.describe() for r in replies]
        hashes = {str(reply.result).lower() for reply in replies}
        assert len(hashes) == 1, hashes
        await mined(chain, hashes, timeout=10)
        await settled(chain, team.database_url, timeout=10)
        assert [tx.hash for tx in chain.check()] == list(hashes)


async def test_a_key_whose_request_was_refused_goes_ahead(team: Team, tmp_path: Path) -> None:
    """The node refused the first request for sure: a repeat under its key is sent, once."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    node = RejectingForwarder(team.node_url, every=1)  # refuses every send, until told not to
    with fronts_in_thread(node), replicas(team.env((node.url,)), 1, tmp_path) as group:
        url = group.urls[0]
        headers = team.headers("user1", **{"Idempotency-Key": f"retry-{os.urandom(6).hex()}"})
        tx = {"from": address, "to": RECIPIENT, "value": hex(21)}
        async with aiohttp.ClientSession() as session:
            first = await call(session, url, headers, "eth_sendTransaction", [tx])
            assert first.error is not None and first.error["code"] == -32000, first.describe()
            node.every = 0
            again = await call(session, url, headers, "eth_sendTransaction", [tx])
            assert again.ok, again.describe()
            twice = await call(session, url, headers, "eth_sendTransaction", [tx])
            assert twice.ok and twice.result == again.result, twice.describe()
            await mined(chain, {str(again.result).lower()}, timeout=10)
        await settled(chain, team.database_url, timeout=10)
        history = chain.check()
        assert [tx.hash for tx in history] == [str(again.result).lower()]
