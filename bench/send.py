"""Sending benchmark: `eth_sendTransaction` from one account at concurrency 32 through the running
proxy vs. raw PKCS#11 signs/s on the same SoftHSM token, in the same run (medians of rounds).

anvil mines every second (`--block-time 1`: automine stalls under a backlog, FIELD-NOTES).
Usage: .venv/bin/python bench/send.py [--transactions 300] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stack import Running, running_stack
from pkcs11 import Mechanism

from signer.pkcs11 import Hsm


def raw_signs_per_second(running: Running, seconds: float = 3.0, threads: int = 4) -> float:
    """python-pkcs11 C_Sign on the account's key, one session per thread (bench/sign.py's
    baseline), in this process while the proxy is idle."""
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
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.monotonic() - started)


async def sends_per_second(running: Running, transactions: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {running.stack.jwt}",
               "X-Signer-Password": running.stack.password}  # fmt: skip
    tx = {"from": running.stack.address, "to": running.stack.address, "value": "0x1"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction", "params": [tx]}
    failures: list[object] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker(count: int) -> None:
            for _ in range(count):
                async with session.post(running.proxy, json=body) as response:
                    answer = await response.json()
                    if "result" not in answer:
                        failures.append(answer)

        started = time.perf_counter()
        await asyncio.gather(*(worker(transactions // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} sends failed, first: {failures[0]}")
    return (transactions // concurrency) * concurrency / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=320)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running_stack(anvil_extra=("--block-time", "1")) as running:
        raw, sends = [], []
        asyncio.run(sends_per_second(running, args.concurrency, args.concurrency))  # warm-up
        for _ in range(args.rounds):
            raw.append(raw_signs_per_second(running))
            sends.append(asyncio.run(sends_per_second(running, args.transactions,
                                                      args.concurrency)))  # fmt: skip
    raw_rate, send_rate = statistics.median(raw), statistics.median(sends)
    print(f"cores: {os.cpu_count()}; {args.rounds} rounds, medians")
    print(f"raw PKCS#11 signs/s (4 sessions): {raw_rate:.0f}")
    print(f"eth_sendTransaction tx/s (one account, c={args.concurrency}): {send_rate:.1f}")
    print(f"ratio: {send_rate / raw_rate:.3f}x (goal >= 0.6x)")


if __name__ == "__main__":
    main()
