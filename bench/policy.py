"""Policy benchmark: what the checks and the policy add to `eth_sendTransaction`, in one run.

Two organisations on one `quorum-signer serve`, one token and one node: `acme` under a 20-rule,
4-limit policy (tests/support/policies.py TWENTY_RULES: every rule is tried, the request is
allowed by default, three of the limits count it), `globex` without a policy. Requests go one
at a time (concurrency 1), alternating between the two organisations so that drift on a shared
machine hits both alike; each is a plain 1-wei transfer, as viem sends it (from/to/value). The
figure is the difference of the p50 latencies (and p99), median over rounds. Both go through
the same checks before signing (balance); the difference is the policy: its cache lookup, the
evaluation, the counters reserved in one transaction with the decision's audit row.

Nothing is asserted: it prints figures. Every process it starts is stopped on the way out.

Usage: .venv/bin/python bench/policy.py [--requests 200] [--rounds 3] [--quick] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary
from _stack import Running, running_stack

from proxy import store
from proxy.audit import AuditLog
from proxy.guard import admin
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from signer.base import checksum
from signer.pkcs11 import Hsm
from tests.support import contracts
from tests.support.anvil import rpc
from tests.support.policies import twenty_rules

SINK = "0x000000000000000000000000000000000000dEaD"
PASSWORD = "globex-bench-pw"  # noqa: S105 (a throwaway user of the bench's own stack)


async def _prepare(running: Running) -> tuple[dict[str, str], dict[str, str], str]:
    """Headers for alice (acme, under the policy) and gus (globex, none), and globex's account."""
    stack = running.stack
    pool = await store.connect(stack.database_url, max_size=2)
    audit = AuditLog(pool)
    try:
        identity = Identity(pool, stack.settings)
        with Hsm(running.module, sessions_per_token=1) as hsm:
            await identity.add_user("globex", "gus", "signer", hsm, stack.pin, PASSWORD,
                                    token_label=stack.token_label)  # fmt: skip
        acme = contracts.token(running.anvil, mint_to={stack.address: 10**24})
        await admin.install(identity, audit, "acme", twenty_rules(acme=acme))
    finally:
        await audit.close()
        await pool.close()
    rpc(running.anvil, "anvil_setBalance", [stack.other_address, hex(10**22)])
    alice = {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}
    gus = {"Authorization": f"Bearer {issue_token(stack.settings, 'gus', 3600)}",
           "X-Signer-Password": PASSWORD}  # fmt: skip
    return alice, gus, checksum(bytes.fromhex(stack.other_address[2:]))


async def _round(running: Running, alice: dict[str, str], gus: dict[str, str], globex: str,
                 requests: int) -> tuple[list[float], list[float]]:  # fmt: skip
    governed: list[float] = []
    free: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(2 * requests):
            headers, sender, into = ((alice, running.stack.address, governed) if i % 2 == 0
                                     else (gus, globex, free))  # fmt: skip
            body = {"jsonrpc": "2.0", "id": i, "method": "eth_sendTransaction",
                    "params": [{"from": sender, "to": SINK, "value": "0x1"}]}  # fmt: skip
            started = time.perf_counter()
            async with session.post(running.proxy + "/", json=body, headers=headers) as reply:
                answer = await reply.json()
            elapsed = time.perf_counter() - started
            if "result" not in answer:
                raise SystemExit(f"request refused: {answer}")
            into.append(elapsed)
    return governed, free


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per organisation per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 30, 1
    results: list[tuple[list[float], list[float]]] = []
    with running_stack() as running:
        alice, gus, globex = asyncio.run(_prepare(running))
        asyncio.run(_round(running, alice, gus, globex, 20))  # warm-up: unlocks, caches
        for number in range(1, args.rounds + 1):
            results.append(asyncio.run(_round(running, alice, gus, globex, args.requests)))
            governed, free = results[-1]
            print(f"  round {number}: p50 with policy {_p(governed, 0.5):.2f} ms, without "
                  f"{_p(free, 0.5):.2f} ms", flush=True)  # fmt: skip

    def median(index: int, q: float) -> float:
        return statistics.median(_p(r[index], q) for r in results)

    print(f"{args.rounds} round(s) of {args.requests} requests per organisation, c=1, medians")
    print("                       p50 ms   p99 ms")
    print(f"  20 rules, 4 limits  {median(0, 0.5):>7.2f}  {median(0, 0.99):>7.2f}")
    print(f"  no policy           {median(1, 0.5):>7.2f}  {median(1, 0.99):>7.2f}")
    print(f"  added by the policy {median(0, 0.5) - median(1, 0.5):>+7.2f}  "
          f"{median(0, 0.99) - median(1, 0.99):>+7.2f}")  # fmt: skip
    summary.write(args.summary, [
        summary.Figure("policy", f"eth_sendTransaction {name}, 20 rules + 4 limits, c=1",
                       median(0, q), "ms", "no policy", median(1, q), difference=True)
        for name, q in (("p50", 0.5), ("p99", 0.99))
    ])  # fmt: skip


if __name__ == "__main__":
    main()
