"""Sending benchmark (the nonce ledger's numbers), all in one run, every figure a ratio or a
difference against a baseline measured in the same run; medians over rounds:

1. `eth_sendTransaction` tx/s from one account, `--concurrency` (32) in flight, through one
   `quorum-signer serve`, against raw PKCS#11 signs/s on the same SoftHSM token (4 sessions).
2. The same load split over two `serve` replicas on the same database, token and node (half
   the in-flight requests to each), against one replica.
3. The ledger's database round trips per transaction: `qsigner_ledger_db_round_trips_total`
   summed over every replica's GET /metrics, after a phase less before, over the transactions
   it sent (n/a when no replica exports the counter).
   Also the replicas' CPU per transaction, and the part of it spent outside the HSM: that CPU
   less the CPU one raw C_Sign costs (measured in this process, same sessions and calls), so
   that the figure for a network HSM (where a signature costs the proxy no CPU) can be stated.
4. p50 / p99 latency of `eth_sendTransaction` through the proxy at concurrency 1 and 32,
   against a client that signs locally (eth-account, a software key funded on anvil, nonce from
   its own counter, gas 21000, the node's gas price, chain id) and sends
   `eth_sendRawTransaction` straight to anvil; the differences are what the proxy adds.

Proxy requests carry from/to/value only, as viem sends them (the proxy estimates gas and picks
the nonce). anvil mines every second (`--block-time 1`: automine stalls under a backlog,
FIELD-NOTES); before each phase the bench waits until both accounts' transactions are mined, so
no phase starts behind another's backlog. The replicas run with the product's defaults
(`--max-in-flight N` sets QSIGNER_MAX_IN_FLIGHT).
Nothing is asserted: it prints figures. Every process it starts is stopped on the way out.

Usage: .venv/bin/python bench/send.py [--quick] [--transactions 320] [--sequential 200]
       [--concurrency 32] [--rounds 3] [--max-in-flight N] [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account

sys.path.insert(0, str(Path(__file__).resolve().parent))

import summary
from _stack import Running, running_stack
from pkcs11 import Mechanism

from signer.pkcs11 import Hsm
from tests.support.anvil import rpc

ROUND_TRIPS = "qsigner_ledger_db_round_trips_total"


def raw_signs_per_second(running: Running, seconds: float = 3.0, threads: int = 4
                         ) -> tuple[float, float]:  # fmt: skip
    """python-pkcs11 C_Sign on the account's key, one session per thread (bench/sign.py's
    baseline), in this process while the proxies are idle: signs per second, and CPU seconds
    per sign (this process's user and system time over the signs made)."""
    with Hsm(running.module, sessions_per_token=threads) as hsm:
        token = hsm.login(running.stack.token_label, running.stack.pin)
        key_id = token.key(label="treasury").key_id
        keys = [session.private_key(key_id) for session in token._all]
        counts = [0] * threads
        stop = time.monotonic() + seconds

        def sign(index: int) -> None:
            digest = os.urandom(32)
            while time.monotonic() < stop:
                keys[index].sign(digest, mechanism=Mechanism.ECDSA)
                counts[index] += 1

        workers = [threading.Thread(target=sign, args=(i,)) for i in range(threads)]
        started, cpu = time.monotonic(), time.process_time()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        signs = sum(counts)
        return signs / (time.monotonic() - started), (time.process_time() - cpu) / signs


@dataclass
class Phase:
    """One phase's outcome: transactions accepted, per second, their latencies (s), and the
    ledger's database round trips made meanwhile (None when not exported)."""

    sent: int
    rate: float
    latencies: list[float]
    failures: list[object] = field(default_factory=list)
    round_trips: float | None = None
    cpu_ms: float | None = None  # CPU time of the replicas per accepted transaction


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of all values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def drive(targets: list[tuple[Callable[[], Awaitable[object]], int]], transactions: int
                ) -> Phase:  # fmt: skip
    """`transactions` calls spread evenly over the workers, `count` workers per target, each
    worker calling its target in turn; an answer that is not a result counts as a failure."""
    workers = sum(count for _, count in targets)
    per_worker = transactions // workers
    latencies: list[float] = []
    failures: list[object] = []

    async def worker(send: Callable[[], Awaitable[object]]) -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            failure = await send()
            if failure is None:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(failure)

    started = time.perf_counter()
    await asyncio.gather(*(worker(send) for send, count in targets for _ in range(count)))
    elapsed = time.perf_counter() - started
    return Phase(len(latencies), len(latencies) / elapsed, latencies, failures)


class Bench:
    """The clients of one run: the stack's HSM account through the replicas, and a software
    key straight to anvil."""

    def __init__(self, running: Running, session: aiohttp.ClientSession) -> None:
        self.running = running
        self.session = session
        self.auth = {"Authorization": f"Bearer {running.stack.jwt}",
                     "X-Signer-Password": running.stack.password}  # fmt: skip
        tx = {"from": running.stack.address, "to": running.stack.address, "value": "0x1"}
        self.body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [tx]}
        self.local = Account.create()
        rpc(running.anvil, "anvil_setBalance", [self.local.address, hex(10**21)])
        self.gas_price = int(rpc(running.anvil, "eth_gasPrice"), 16)
        self.chain_id = int(rpc(running.anvil, "eth_chainId"), 16)
        self.nonces = itertools.count(
            int(rpc(running.anvil, "eth_getTransactionCount", [self.local.address, "pending"]),
                16)
        )  # fmt: skip

    def proxy_send(self, url: str) -> Callable[[], Awaitable[object]]:
        async def send() -> object:
            async with self.session.post(url, json=self.body, headers=self.auth) as response:
                answer = await response.json(content_type=None)
            return None if "result" in answer else answer

        return send

    async def local_send(self) -> object:
        signed = self.local.sign_transaction({
            "nonce": next(self.nonces), "gas": 21000, "gasPrice": self.gas_price,
            "to": self.local.address, "value": 1, "data": b"", "chainId": self.chain_id,
        })  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
                "params": ["0x" + signed.raw_transaction.hex()]}  # fmt: skip
        async with self.session.post(self.running.anvil, json=body) as response:
            answer = await response.json(content_type=None)
        return None if "result" in answer else answer

    async def round_trips(self) -> float | None:
        """The ledger's database round trips so far, summed over the replicas."""
        total, seen = 0.0, False
        for url in self.running.replicas:
            async with self.session.get(url + "/metrics", headers=self.auth) as response:
                text = await response.text()
            for line in text.splitlines():
                name, _, rest = line.partition(" ")
                if name.split("{", 1)[0] == ROUND_TRIPS:
                    total += float(rest.split()[0])
                    seen = True
        return total if seen else None

    def cpu_seconds(self, replicas: list[int]) -> float:
        """User and system CPU time so far of the replicas (by index) a phase loads."""
        return sum(sum(self.running.processes[i].cpu_times()[:2]) for i in replicas)

    async def settle(self, timeout: float = 60) -> None:
        """Wait until every transaction of both accounts is mined (pending == latest)."""
        deadline = time.monotonic() + timeout
        for address in (self.running.stack.address, self.local.address):
            while True:
                counts = [await self._anvil("eth_getTransactionCount", [address, tag])
                          for tag in ("pending", "latest")]  # fmt: skip
                if counts[0] == counts[1]:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{address}: transactions still pending after {timeout} s")
                await asyncio.sleep(0.2)

    async def _anvil(self, method: str, params: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.session.post(self.running.anvil, json=body) as response:
            return (await response.json(content_type=None))["result"]

    async def phase(self, targets: list[tuple[Callable[[], Awaitable[object]], int]],
                    transactions: int, ledger: bool = True,
                    replicas: tuple[int, ...] = (0,)) -> Phase:  # fmt: skip
        await self.settle()
        before = await self.round_trips() if ledger else None
        cpu = self.cpu_seconds(list(replicas))
        result = await drive(targets, transactions)
        cpu = self.cpu_seconds(list(replicas)) - cpu
        after = await self.round_trips() if ledger else None
        if before is not None and after is not None and result.sent:
            result.round_trips = (after - before) / result.sent
        if ledger and result.sent:
            result.cpu_ms = cpu / result.sent * 1e3
        return result


async def one_round(running: Running, args: argparse.Namespace, warm_up: bool = False
                    ) -> dict[str, Phase]:  # fmt: skip
    c = args.concurrency
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        bench = Bench(running, session)
        first, second = (bench.proxy_send(url) for url in running.replicas)
        if warm_up:  # unlock and log in on both replicas, connections open
            await bench.phase([(first, c // 2), (second, c // 2)], c)
            await bench.phase([(bench.local_send, c)], c, ledger=False)
            await bench.settle()
            return {}
        local = bench.local_send
        phases = {
            "one": await bench.phase([(first, c)], args.transactions),
            "two": await bench.phase(
                [(first, c // 2), (second, c // 2)], args.transactions, replicas=(0, 1)
            ),
            "proxy1": await bench.phase([(first, 1)], args.sequential),
            "local1": await bench.phase([(local, 1)], args.sequential, ledger=False),
            "localc": await bench.phase([(local, c)], args.transactions, ledger=False),
        }
        await bench.settle()
    for name, result in phases.items():
        if result.failures:
            print(f"  {name}: {len(result.failures)} requests failed, first: "
                  f"{result.failures[0]}", flush=True)  # fmt: skip
    return phases


def figure(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=320, help="per throughput phase")
    parser.add_argument("--sequential", type=int, default=200, help="per concurrency-1 phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--max-in-flight", type=int,
                        help="QSIGNER_MAX_IN_FLIGHT of the replicas (default: theirs)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    args = parser.parse_args()
    if args.quick:
        args.transactions, args.sequential, args.rounds, args.raw_seconds = 64, 30, 1, 1.0
    if args.concurrency % 2:
        parser.error("--concurrency must be even (half of it goes to each replica)")
    serve_env = {}
    if args.max_in_flight is not None:
        serve_env["QSIGNER_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    raw: list[float] = []
    raw_cpu: list[float] = []  # CPU seconds per raw sign
    rounds: list[dict[str, Phase]] = []
    with running_stack(anvil_extra=("--block-time", "1"), replicas=2,
                       serve_env=serve_env) as running:  # fmt: skip
        asyncio.run(one_round(running, args, warm_up=True))
        for number in range(1, args.rounds + 1):
            rate, cpu_per_sign = raw_signs_per_second(running, args.raw_seconds)
            raw.append(rate)
            raw_cpu.append(cpu_per_sign)
            rounds.append(asyncio.run(one_round(running, args)))
            one, two = rounds[-1]["one"].rate, rounds[-1]["two"].rate
            print(f"  round {number}: raw {raw[-1]:.0f} signs/s, one replica {one:.1f} tx/s "
                  f"({one / raw[-1]:.3f}x), two {two:.1f} tx/s ({two / one:.2f}x)",
                  flush=True)  # fmt: skip

    def median(pick: Callable[[Phase], float | None], name: str) -> float | None:
        values = [pick(r[name]) for r in rounds]
        known = [v for v in values if v is not None]
        return statistics.median(known) if len(known) == len(values) else None

    def rate(name: str) -> float:
        return statistics.median(r[name].rate for r in rounds)

    def p(name: str, q: float) -> float:
        return statistics.median(percentile(r[name].latencies, q) for r in rounds) * 1e3

    c = args.concurrency
    raw_rate, one, two = statistics.median(raw), rate("one"), rate("two")
    print(f"cores: {os.cpu_count()}; {args.rounds} round(s), medians; {args.transactions} "
          f"transactions per throughput phase, {args.sequential} at c=1; anvil --block-time 1; "
          f"QSIGNER_MAX_IN_FLIGHT={args.max_in_flight or 'default'}")  # fmt: skip
    print(f"1. raw PKCS#11 signs/s (4 sessions):               {raw_rate:.0f}")
    print(f"   eth_sendTransaction tx/s, one replica, c={c}:    {one:.1f}")
    print(f"   ratio: {one / raw_rate:.3f}x (bar >= 0.3x, goal >= 0.6x)")
    print("   replicas' CPU ms per transaction: "
          f"one replica c={c}: {figure(median(lambda r: r.cpu_ms, 'one'))}; "
          f"two replicas: {figure(median(lambda r: r.cpu_ms, 'two'))}; "
          f"c=1: {figure(median(lambda r: r.cpu_ms, 'proxy1'))}")  # fmt: skip
    sign_us = statistics.median(raw_cpu) * 1e6

    def outside(name: str) -> str:
        # Per round: the replica's CPU per transaction less that round's raw C_Sign CPU.
        values = [r[name].cpu_ms * 1e3 - cpu * 1e6 for r, cpu in zip(rounds, raw_cpu, strict=True)
                  if r[name].cpu_ms is not None]  # fmt: skip
        return f"{statistics.median(values):.0f}" if len(values) == len(rounds) else "n/a"

    print(f"   CPU us per transaction outside the HSM (the replica's CPU less one raw C_Sign's, "
          f"{sign_us:.0f} us): c={c}: {outside('one')}; c=1: {outside('proxy1')}")  # fmt: skip
    print(f"2. eth_sendTransaction tx/s, two replicas, c={c // 2} each: {two:.1f}")
    for name, result in (("one replica", "one"), ("two replicas", "two"), ("c=1", "proxy1")):
        failed = sum(len(r[result].failures) for r in rounds)
        if failed:
            print(f"   ({name}: {failed} requests failed over the rounds, not counted in tx/s)")
    print(f"   ratio two / one: {two / one:.2f}x (bar >= 0.9x)")
    print("3. ledger database round trips per transaction: "
          f"one replica c={c}: {figure(median(lambda r: r.round_trips, 'one'))}; "
          f"two replicas: {figure(median(lambda r: r.round_trips, 'two'))}; "
          f"c=1: {figure(median(lambda r: r.round_trips, 'proxy1'))}")  # fmt: skip
    print("4. latency, ms         p50      p99     tx/s")
    for label, proxy, local in (("c=1", "proxy1", "local1"), (f"c={c}", "one", "localc")):
        print(f"   proxy  {label:>5} {p(proxy, 0.5):>8.2f} {p(proxy, 0.99):>8.2f} "
              f"{rate(proxy):>8.1f}")  # fmt: skip
        print(f"   local  {label:>5} {p(local, 0.5):>8.2f} {p(local, 0.99):>8.2f} "
              f"{rate(local):>8.1f}")  # fmt: skip
        print(f"   added  {label:>5} {p(proxy, 0.5) - p(local, 0.5):>+8.2f} "
              f"{p(proxy, 0.99) - p(local, 0.99):>+8.2f}")  # fmt: skip
    local = "local signer, straight to the node"
    summary.write(args.summary, [
        summary.Figure("send", f"eth_sendTransaction tx/s, 1 replica, c={c}", one, "/s",
                       "raw HSM signs/s, 4 sessions", raw_rate),
        summary.Figure("send", f"eth_sendTransaction tx/s, 2 replicas, c={c // 2} each", two,
                       "/s", "1 replica", one),
        summary.Figure("send", "eth_sendTransaction p50, c=1", p("proxy1", 0.5), "ms", local,
                       p("local1", 0.5), difference=True),
        summary.Figure("send", f"eth_sendTransaction p50, c={c}", p("one", 0.5), "ms", local,
                       p("localc", 0.5), difference=True),
        summary.Figure("send", f"ledger DB round trips per tx, c={c}",
                       median(lambda r: r.round_trips, "one")),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
