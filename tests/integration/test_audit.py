"""The audit log on a real PostgreSQL (and SoftHSM for checkpoints): concurrent appends through
one and two replicas keep one gap-free chain; tampering done with the append-only trigger
bypassed is named by `audit verify`; a chain rewritten consistently is caught against an earlier
export's signed checkpoint; identity's security events land in the log."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy import store
from proxy.audit import AuditEvent, AuditLog
from proxy.audit.records import GENESIS


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on one migrated database: what two replicas have."""
    pools = [await store.connect(database_url, max_size=4) for _ in range(2)]
    try:
        await store.upgrade(pools[0])
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()


def decision(n: int, organisation: str | None = "acme") -> AuditEvent:
    return AuditEvent("decision", organisation, f"user-{n % 7}", "allow", request_id=f"r{n}",
                      method="eth_sendTransaction", nonce=n, detail={"n": n})  # fmt: skip


async def chain_rows(pool: asyncpg.Pool, chain: str) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT seq, at, content, prev_hash, hash FROM audit_log WHERE chain = $1 ORDER BY seq",
        chain))  # fmt: skip


def assert_linked(rows: list[asyncpg.Record]) -> None:
    """Seq 1, 2, ... with no gap, each row's hash SHA-256(prev_hash || content) and its
    prev_hash the hash of the row before (recomputed here, independently of the product)."""
    prev = GENESIS
    for expected_seq, row in enumerate(rows, 1):
        assert row["seq"] == expected_seq
        assert row["prev_hash"] == prev
        assert row["hash"] == hashlib.sha256(prev + row["content"].encode()).digest()
        prev = row["hash"]


async def test_concurrent_appends_from_two_replicas_keep_one_gap_free_chain(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    first, second = AuditLog(pools[0]), AuditLog(pools[1])
    try:
        # 400 events from 400 tasks at once, alternating replicas, on one chain; and a few on
        # another chain and on the chain of no organisation, interleaved.
        await asyncio.gather(*(
            (first if n % 2 else second).append(decision(n)) for n in range(400)
        ), *(first.append(decision(n, "other")) for n in range(20)),
            *(second.append(decision(n, None)) for n in range(5)))  # fmt: skip

        # append_in, in transactions of the callers, meanwhile appends go on
        async def in_transaction(n: int) -> None:
            async with pools[n % 2].acquire() as conn, conn.transaction():
                await (first if n % 2 else second).append_in(
                    conn, [decision(1000 + n), decision(2000 + n)]
                )

        await asyncio.gather(*(in_transaction(n) for n in range(20)),
                             *(first.append(decision(3000 + n)) for n in range(50)))  # fmt: skip
    finally:
        await first.close()
        await second.close()

    rows = await chain_rows(pools[0], "acme")
    assert len(rows) == 400 + 40 + 50
    assert_linked(rows)
    contents = [json.loads(r["content"]) for r in rows]
    assert sorted(c["nonce"] for c in contents) == sorted(
        [*range(400), *range(1000, 1020), *range(2000, 2020), *range(3000, 3050)]
    )
    # The two events of one append_in are adjacent: one transaction, one statement.
    for n in range(20):
        seq = next(i for i, c in enumerate(contents) if c["nonce"] == 1000 + n)
        assert contents[seq + 1]["nonce"] == 2000 + n
    assert_linked(await chain_rows(pools[0], "other"))
    assert len(await chain_rows(pools[0], "-")) == 5
    assert_linked(await chain_rows(pools[0], "-"))
    first_content = contents[0]
    assert first_content["kind"] == "decision" and first_content["time"].endswith("Z")
    assert rows[0]["content"] == json.dumps(first_content, sort_keys=True, separators=(",", ":"))


async def test_append_in_rolls_back_with_the_callers_transaction(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    audit = AuditLog(pools[0])
    async with pools[0].acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await audit.append_in(conn, [decision(1)])
                raise RuntimeError("the decision failed")
    await audit.append(decision(2))
    rows = await chain_rows(pools[0], "acme")
    assert [json.loads(r["content"])["nonce"] for r in rows] == [2]
    assert_linked(rows)


async def test_a_bad_event_fails_alone(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    audit = AuditLog(pools[0])
    bad = AuditEvent("decision", "acme", "u", "allow", detail={"x": object()})
    results = await asyncio.gather(audit.append(bad), audit.append(decision(1)),
                                   audit.append(AuditEvent("nonsense", "acme", "u", "x")),
                                   return_exceptions=True)  # fmt: skip
    assert isinstance(results[0], TypeError) and results[1] is None
    assert isinstance(results[2], ValueError)
    assert len(await chain_rows(pools[0], "acme")) == 1
    await audit.close()


async def test_the_log_refuses_updates_and_deletes(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    audit = AuditLog(pools[0])
    await audit.append(decision(1))
    for sql in ("UPDATE audit_log SET content = '{}'", "DELETE FROM audit_log",
                "TRUNCATE audit_log"):  # fmt: skip
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pools[0].execute(sql)
    assert len(await chain_rows(pools[0], "acme")) == 1
