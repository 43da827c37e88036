"""Audit-log append benchmark: appends/s from `--tasks` concurrent appenders on one chain (what
the signing path does, one row per eth_sendTransaction at least), through `AuditLog.append`
(group commit, durable on return) and, as a baseline, one statement per event.

Runs on a fresh database of the PostgreSQL at 127.0.0.1:5432 (else an embedded one), dropped
afterwards. Prints appends/s, p50 and p99 latency of an append, and rows per statement.
Usage: .venv/bin/python bench/audit.py [--tasks 32] [--seconds 5] [--replicas 1] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import summary

from proxy import store
from proxy.audit import AuditEvent, AuditLog
from proxy.audit.log import _APPEND
from tests.support.database import fresh_database, postgres_server


def event(n: int) -> AuditEvent:
    return AuditEvent("decision", "acme", f"user-{n % 16}", "allow", request_id=f"{n:016x}",
                      account="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
                      method="eth_sendTransaction", policy_version=3, nonce=n,
                      tx_hash="0x" + f"{n:064x}", detail={"gas": 21000})  # fmt: skip


async def run(append: object, tasks: int, seconds: float) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def appender() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await append(event(next(counter)))  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(appender() for _ in range(tasks)))
    return len(latencies), latencies


def show(name: str, count: int, latencies: list[float], seconds: float, rows: int,
         statements: int) -> float:  # fmt: skip
    """Prints one way's figures; returns its appends per second."""
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<28} {count / seconds:8.0f} appends/s   p50 {cuts[49] * 1000:6.2f} ms   "
        f"p99 {cuts[98] * 1000:6.2f} ms   {rows / max(statements, 1):5.1f} rows/statement"
    )
    return count / seconds


class CountingPool(store.BoundedPool):
    """The server's pool, counting the statements AuditLog sends."""

    statements = 0

    async def fetch(self, query: str, *args: Any) -> Any:
        CountingPool.statements += 1
        return await super().fetch(query, *args)


async def measure(dsn: str, tasks: int, seconds: float, replicas: int) -> list[summary.Figure]:
    pools = [await store.connect(dsn, max_size=10) for _ in range(replicas)]
    await store.upgrade(pools[0])
    try:
        # Baseline: one autocommitted audit_append per event, as without group commit.
        pool = pools[0]

        async def single(e: AuditEvent) -> None:
            at, content = AuditLog._prepare(e)
            await pool.fetch(_APPEND, e.chain, [at], [content])

        count, latencies = await run(single, min(tasks, 10), seconds)
        single_rate = show("one statement per event", count, latencies, seconds, count, count)

        logs = [AuditLog(CountingPool(p, 5)) for p in pools]
        rows_before = await pools[0].fetchval("SELECT count(*) FROM audit_log")
        turn = iter(range(10**9))

        async def grouped(e: AuditEvent) -> None:
            await logs[next(turn) % len(logs)].append(e)

        count, latencies = await run(grouped, tasks, seconds)
        done = CountingPool.statements
        rows = await pools[0].fetchval("SELECT count(*) FROM audit_log") - rows_before
        grouped_rate = show(f"AuditLog.append x{replicas} pools", count, latencies, seconds, rows,
                            done)  # fmt: skip
        for audit_log in logs:
            await audit_log.close()
        broken = await pools[0].fetchval(
            """SELECT count(*) FROM audit_log a JOIN audit_log b
                 ON b.chain = a.chain AND b.seq = a.seq + 1 WHERE b.prev_hash <> a.hash"""
        )
        print(f"chain of {rows_before + rows} rows, {broken} links broken")
        return [summary.Figure("audit", f"appends/s, group commit, {tasks} appenders",
                               grouped_rate, "/s", "one statement per append",
                               single_rate)]  # fmt: skip
    finally:
        for p in pools:
            await p.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=1, help="AuditLog instances (pools)")
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    args = parser.parse_args()
    with postgres_server() as server, fresh_database(server) as dsn:
        summary.write(args.summary, asyncio.run(measure(dsn, args.tasks, args.seconds,
                                                        args.replicas)))  # fmt: skip
