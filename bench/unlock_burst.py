"""Unlock-burst benchmark: p50 latency of already-unlocked `personal_sign` requests through the
running proxy, quiet vs. while 20 users unlock for the first time (PBKDF2 at 600k iterations).

Signing requests start at a steady pace (every `--interval` ms, whether earlier ones have
finished or not, so that a stalled stretch counts as many slow requests). Each round measures
both, quiet first; the burst's users are new every round (a user's first unlock is cached
afterwards). The ratio of the p50s is what matters on a shared, noisy machine: close to 1 when
unlocking never delays signing (the PBKDF2 threads still take CPU). Medians over rounds.
Usage: .venv/bin/python bench/unlock_burst.py [--rounds 5] [--burst 20] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary
from _stack import Running, running_stack

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from signer.pkcs11 import Hsm

ITERATIONS = 600_000  # the default of QSIGNER_PBKDF2_ITERATIONS


async def add_users(running: Running, count: int) -> list[dict[str, str]]:
    """`count` new signers of the stack's organisation, never unlocked: their request headers."""
    stack = running.stack
    pool = await store.connect(stack.database_url, max_size=4)
    try:
        identity = Identity(pool, replace(stack.settings, pbkdf2_iterations=ITERATIONS))
        with Hsm(running.module, sessions_per_token=1) as hsm:
            users = [(f"burst-{os.urandom(6).hex()}", os.urandom(8).hex()) for _ in range(count)]
            for user, password in users:
                await identity.add_user("acme", user, "signer", hsm, stack.pin, password)
    finally:
        await pool.close()
    return [{"Authorization": f"Bearer {issue_token(stack.settings, user, 3600)}",
             "X-Signer-Password": password} for user, password in users]  # fmt: skip


async def one_round(running: Running, burst_users: list[dict[str, str]], signs: int,
                    interval: float) -> tuple[float, float]:  # fmt: skip
    """(p50 quiet, p50 during the burst) of one signer's sequential signing requests, in ms."""
    stack = running.stack
    alice = {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}
    body = {"jsonrpc": "2.0", "id": 1, "method": "personal_sign",
            "params": ["0x68656c6c6f", stack.address]}  # fmt: skip
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def sign(headers: dict[str, str]) -> float:
            started = time.perf_counter()
            async with session.post(running.proxy, json=body, headers=headers) as response:
                answer = await response.json()
            if "result" not in answer:
                raise SystemExit(f"a signing request failed: {answer}")
            return (time.perf_counter() - started) * 1000

        async def paced(until: Callable[[int], bool]) -> list[float]:
            started: list[asyncio.Future[float]] = []
            while not until(len(started)):
                started.append(asyncio.ensure_future(sign(alice)))
                await asyncio.sleep(interval)
            return list(await asyncio.gather(*started))

        await sign(alice)  # unlocked, logged in and key found before anything is measured
        quiet = await paced(lambda n: n >= signs)
        burst = [asyncio.ensure_future(sign(headers)) for headers in burst_users]
        during = await paced(lambda n: all(task.done() for task in burst))
        await asyncio.gather(*burst)
    return statistics.median(quiet), statistics.median(during)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--signs", type=int, default=100, help="quiet signs per round")
    parser.add_argument("--interval", type=float, default=10, help="ms between signs")
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    args = parser.parse_args()
    with running_stack() as running:
        users = [asyncio.run(add_users(running, args.burst)) for _ in range(args.rounds)]
        quiet, during = [], []
        for round_users in users:
            q, d = asyncio.run(one_round(running, round_users, args.signs, args.interval / 1000))
            quiet.append(q)
            during.append(d)
            print(f"  round: p50 quiet {q:.2f} ms, during the burst {d:.2f} ms", flush=True)
    p50_quiet, p50_during = statistics.median(quiet), statistics.median(during)
    print(f"cores: {os.cpu_count()}; {args.rounds} rounds, burst of {args.burst} first unlocks "
          f"(PBKDF2 {ITERATIONS}), medians")  # fmt: skip
    print(f"p50 of an unlocked personal_sign, quiet:            {p50_quiet:.2f} ms")
    print(f"p50 of an unlocked personal_sign, during the burst: {p50_during:.2f} ms")
    print(f"ratio: {p50_during / p50_quiet:.2f}x")
    summary.write(args.summary, [summary.Figure(
        "unlock_burst", f"personal_sign p50 during {args.burst} first unlocks", p50_during, "ms",
        "quiet", p50_quiet, difference=True)])  # fmt: skip


if __name__ == "__main__":
    main()
