"""Passthrough benchmark: `eth_blockNumber` through the proxy vs. the node directly vs. a minimal
aiohttp forwarder (written below), all in the same run, rounds alternating, medians reported.

Everything real: anvil, PostgreSQL (local, else embedded), SoftHSM, `quorum-signer serve` as a
separate process authenticated with a JWT. Usage: .venv/bin/python bench/passthrough.py
[--requests 4000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import running_stack

from tests.support.anvil import free_port

BODY = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'


def forwarder(port: int, upstream: str) -> None:
    """The baseline: the smallest sensible aiohttp forwarding proxy (one shared session)."""

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream, data=await request.read(), headers=headers) as answer:
            return web.Response(body=await answer.read(), content_type="application/json")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(url: str, headers: dict[str, str], requests: int, concurrency: int
               ) -> tuple[float, float, float]:  # fmt: skip
    """(requests/s, p50 ms, p99 ms) for `requests` calls, `concurrency` at a time."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return (len(latencies) / elapsed, latencies[len(latencies) // 2] * 1e3,
            latencies[int(len(latencies) * 0.99)] * 1e3)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--forwarder", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.forwarder:
        forwarder(int(args.forwarder[0]), args.forwarder[1])
        return
    with running_stack() as running:
        fwd_port = free_port()
        fwd = subprocess.Popen([sys.executable, __file__, "--forwarder", str(fwd_port),
                                running.anvil])  # fmt: skip
        try:
            time.sleep(1.0)  # the forwarder's start
            json_headers = {"Content-Type": "application/json"}
            targets = {
                "direct": (running.anvil, json_headers),
                "forwarder": (f"http://127.0.0.1:{fwd_port}/", json_headers),
                "proxy": (running.proxy + "/",
                          {**json_headers, "Authorization": f"Bearer {running.stack.jwt}"}),
            }  # fmt: skip
            results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in targets}
            unloaded: dict[str, list[float]] = {k: [] for k in targets}
            for url, headers in targets.values():  # warm-up
                asyncio.run(load(url, headers, 500, args.concurrency))
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    results[name].append(
                        asyncio.run(load(url, headers, args.requests, args.concurrency))
                    )
                    unloaded[name].append(asyncio.run(load(url, headers, 300, 1))[1])
        finally:
            fwd.terminate()
            fwd.wait()
    print(f"cores: {os.cpu_count()}; eth_blockNumber, {args.rounds} rounds, medians")
    print(f"{'target':>10} {'req/s c=' + str(args.concurrency):>12} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'p50 ms c=1':>11}")  # fmt: skip
    medians = {}
    for name in targets:
        rate = statistics.median(r[0] for r in results[name])
        p50 = statistics.median(r[1] for r in results[name])
        p99 = statistics.median(r[2] for r in results[name])
        idle = statistics.median(unloaded[name])
        medians[name] = (rate, idle)
        print(f"{name:>10} {rate:>12.0f} {p50:>8.2f} {p99:>8.2f} {idle:>11.3f}")
    print(f"proxy / forwarder throughput: {medians['proxy'][0] / medians['forwarder'][0]:.2f}x "
          f"(goal >= 1.0x)")  # fmt: skip
    print(f"proxy - direct p50, unloaded: {medians['proxy'][1] - medians['direct'][1]:+.3f} ms "
          f"(goal <= +0.3 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
