"""The bounded executor: the event loop's hop (results back in batches), its bound, cancellation
and shutdown, with real threads."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from signer.errors import Overloaded
from signer.executors import BoundedExecutor


@pytest.fixture
def executor() -> Any:
    pool = BoundedExecutor(4, 10_000, thread_name_prefix="test-pool")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


def _fail(message: str) -> None:
    raise ValueError(message)


def _stop() -> None:
    raise StopIteration


async def test_each_caller_gets_its_own_result(executor: BoundedExecutor) -> None:
    async def caller(base: int) -> list[int]:
        return [await executor.run(lambda x: x * 3, base + n) for n in range(50)]

    results = await asyncio.gather(*(caller(1000 * c) for c in range(40)))
    assert results == [[(1000 * c + n) * 3 for n in range(50)] for c in range(40)]
    assert executor.outstanding == 0 and executor.submitted == 2000
    names = {thread.name for thread in executor._threads}
    assert 1 <= len(names) <= 4 and all(name.startswith("test-pool") for name in names)


async def test_exceptions_reach_the_caller(executor: BoundedExecutor) -> None:
    with pytest.raises(ValueError, match="bad digest"):
        await executor.run(_fail, "bad digest")
    # A future cannot hold StopIteration: the caller gets an error instead of waiting forever.
    with pytest.raises(RuntimeError, match="StopIteration"):
        await asyncio.wait_for(executor.run(_stop), timeout=5)
    assert executor.outstanding == 0


async def test_results_finished_while_the_loop_is_busy_come_back_in_one_batch(
    executor: BoundedExecutor,
) -> None:
    loop = asyncio.get_running_loop()
    calls = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        tasks = [asyncio.ensure_future(executor.run(abs, -n)) for n in range(8)]
        await asyncio.sleep(0)  # the jobs are submitted
        deadline = time.monotonic() + 5
        while executor.outstanding and time.monotonic() < deadline:
            time.sleep(0.01)  # the loop is held here while the results come in
        time.sleep(0.1)
        assert await asyncio.gather(*tasks) == list(range(8))
    finally:
        del loop.call_soon_threadsafe
    assert calls == 1


async def test_the_bound_refuses_at_once_and_frees_up(executor: BoundedExecutor) -> None:
    small = BoundedExecutor(1, 2, thread_name_prefix="small")
    gate = threading.Event()
    try:
        held = [small.submit(gate.wait, 5) for _ in range(3)]
        with pytest.raises(Overloaded):
            small.submit(gate.wait, 5)
        with pytest.raises(Overloaded):
            await small.run(gate.wait, 5)
        assert small.outstanding == 3
        gate.set()
        assert [future.result(timeout=5) for future in held] == [True, True, True]
        assert small.outstanding == 0
        assert await small.run(len, "abc") == 3
    finally:
        small.shutdown()


async def test_a_cancelled_caller_s_waiting_job_does_not_run() -> None:
    pool = BoundedExecutor(1, 10, thread_name_prefix="cancel")
    gate, ran = threading.Event(), []
    try:
        busy = pool.submit(gate.wait, 5)
        while not busy.running():
            time.sleep(0.001)
        waiting = asyncio.ensure_future(pool.run(ran.append, "late"))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.sleep(0)
        gate.set()
        assert busy.result(timeout=5) is True
        assert await pool.run(ran.append, "next") is None
        assert ran == ["next"] and pool.outstanding == 0
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        pool.shutdown()


async def test_shutdown_cancels_or_runs_what_waits() -> None:
    pool = BoundedExecutor(1, 10, thread_name_prefix="shutdown")
    gate = threading.Event()
    busy = pool.submit(gate.wait, 5)
    while not busy.running():
        time.sleep(0.001)
    queued = pool.submit(len, "ab")
    awaited = asyncio.ensure_future(pool.run(len, "abc"))
    await asyncio.sleep(0)
    closing = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    closing.start()
    gate.set()
    closing.join(timeout=5)
    assert busy.result(timeout=5) is True and queued.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(awaited, timeout=5)
    assert pool.outstanding == 0
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(len, "")

    kept = BoundedExecutor(1, 10, thread_name_prefix="drain")
    slow = [kept.submit(time.sleep, 0.01) for _ in range(5)]
    kept.shutdown(wait=True)  # without cancel_futures, what waits still runs
    assert all(future.done() and not future.cancelled() for future in slow)


def test_one_executor_serves_one_loop_after_another(executor: BoundedExecutor) -> None:
    for n in range(3):
        assert asyncio.run(executor.run(pow, 2, n)) == 2**n
