"""Signing-path benchmark: raw PKCS#11 ECDSA vs. our full transaction signing, same run.

Baseline: python-pkcs11 `C_Sign` (Mechanism.ECDSA) on a digest, one thread per session.
Ours: `sign_transaction` on an EIP-1559 transaction (serialise, keccak, HSM through the session
pool, low-s normalisation, recovery id) with the same sessions, two ways: plain threads (one per
session, as the CLI would), and the proxy's way (`sign_transaction_async` from an event loop
with 8 requests in flight per session, `C_Sign` in the token's bounded executor, the rest on
the loop). Rounds alternate between the ways and the medians are compared: the ratio is what
matters on a shared, noisy machine. The CPU columns are this process's CPU time (every thread,
user + system) per signature: steadier than rates when other work shares the cores, and what
bounds the ratio once the sessions outnumber the cores (raw CPU / ours).
Usage: .venv/bin/python bench/sign.py [--count 2000] [--rounds 5] [--sessions 1 2 4]
       [--summary FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import summary
from pkcs11 import Mechanism

from signer.pkcs11 import Hsm, HsmKey, find_softhsm_module
from signer.transactions import Transaction, sign_transaction, sign_transaction_async
from softhsm import write_config

TX = Transaction(
    type=2,
    chain_id=1337,
    nonce=7,
    gas=21000,
    to=bytes.fromhex("000000000000000000000000000000000000dead"),
    value=10**15,
    data=b"",
    max_fee_per_gas=2 * 10**9,
    max_priority_fee_per_gas=10**9,
)


def run_threads(threads: int, count: int, work: Callable[[int, int], None]) -> float:
    """Run `work(thread_index, n)` `count` times in total over `threads` threads; return ops/s."""
    per_thread = count // threads
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        barrier.wait()
        try:
            for n in range(per_thread):
                work(index, n)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return per_thread * threads / elapsed


def run_async(key: HsmKey, in_flight: int, count: int) -> float:
    """Signed transactions per second from an event loop with `in_flight` requests at once."""

    async def client(share: int) -> None:
        for _ in range(share):
            await sign_transaction_async(TX, key)

    async def all_clients() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(count // in_flight) for _ in range(in_flight)))
        return (count // in_flight) * in_flight / (time.perf_counter() - start)

    return asyncio.run(all_clients())


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(done: int, run: Callable[[], float]) -> tuple[float, float]:
    """(ops/s, CPU µs per op) of one round that makes `done` operations."""
    before = cpu_seconds()
    rate = run()
    return rate, (cpu_seconds() - before) / done * 1e6


Figures = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def measure(key: HsmKey, sessions: int, count: int, rounds: int) -> Figures:
    token = key.token
    digests = [os.urandom(32) for _ in range(256)]
    # Each baseline thread owns one session of the token's pool, as in our path.
    owned = [token._all[i] for i in range(sessions)]
    raw_keys = [s.private_key(key.key_id) for s in owned]

    def raw(index: int, n: int) -> None:
        raw_keys[index].sign(digests[n % 256], mechanism=Mechanism.ECDSA)

    def ours(index: int, n: int) -> None:
        sign_transaction(TX, key)

    in_flight = 8 * sessions
    # (a round, how many operations it makes: each thread or client does an equal share)
    ways: list[tuple[Callable[[], float], int]] = [
        (lambda: run_threads(sessions, count, raw), count // sessions * sessions),
        (lambda: run_threads(sessions, count, ours), count // sessions * sessions),
        (lambda: run_async(key, in_flight, count), count // in_flight * in_flight),
    ]
    run_threads(sessions, count // 4, raw)  # warm-up
    run_threads(sessions, count // 4, ours)
    run_async(key, in_flight, count // 4)
    results: list[list[tuple[float, float]]] = [[], [], []]
    for _ in range(rounds):
        for (way, done), figures in zip(ways, results, strict=True):
            figures.append(timed(done, way))
    medians = [
        (statistics.median(r for r, _ in figures), statistics.median(c for _, c in figures))
        for figures in results
    ]
    return medians[0], medians[1], medians[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="signatures per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--summary", metavar="FILE", help="write the figures there (JSON)")
    args = parser.parse_args()
    figures: list[summary.Figure] = []
    module = find_softhsm_module()
    if module is None:
        raise SystemExit("SoftHSM2 is not installed (make deps)")
    print(f"cores: {os.cpu_count()}, {args.rounds} rounds of {args.count} signatures, medians")
    print(
        f"{'sessions':>8} {'raw sign/s':>10} {'threads tx/s':>12} {'ratio':>6} "
        f"{'proxy tx/s':>10} {'ratio':>6} | CPU µs/op: {'raw':>5} {'threads':>7} {'proxy':>5}"
    )
    with tempfile.TemporaryDirectory() as directory:
        os.environ["SOFTHSM2_CONF"] = str(write_config(directory))
        pin = os.urandom(8).hex()
        for sessions in args.sessions:
            with Hsm(module, sessions_per_token=sessions) as hsm:
                label = f"bench-{sessions}"
                hsm.initialise_token(label, os.urandom(8).hex(), pin)
                key = hsm.login(label, pin).generate_key(os.urandom(16), "bench")
                (raw_rate, raw_cpu), (threads_rate, threads_cpu), (proxy_rate, proxy_cpu) = measure(
                    key, sessions, args.count, args.rounds
                )
                print(
                    f"{sessions:>8} {raw_rate:>10.0f} {threads_rate:>12.0f} "
                    f"{threads_rate / raw_rate:>6.2f} {proxy_rate:>10.0f} "
                    f"{proxy_rate / raw_rate:>6.2f} | {'':>10} {raw_cpu:>5.0f} {threads_cpu:>7.0f} "
                    f"{proxy_cpu:>5.0f}",
                    flush=True,
                )
                figures += [
                    summary.Figure("sign", f"tx signed/s, threads, {sessions} session(s)",
                                   threads_rate, "/s", "raw C_Sign", raw_rate),
                    summary.Figure("sign", f"tx signed/s, proxy's path, {sessions} session(s)",
                                   proxy_rate, "/s", "raw C_Sign", raw_rate),
                ]  # fmt: skip
    summary.write(args.summary, figures)


if __name__ == "__main__":
    main()
