"""A thread pool with a bounded queue: blocking work (PKCS#11 calls, PBKDF2) waits in a queue of
known length, and work beyond it is refused at once with `Overloaded` instead of piling up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from signer.errors import Overloaded

P = ParamSpec("P")
T = TypeVar("T")


class BoundedExecutor(ThreadPoolExecutor):
    """`max_workers` threads and at most `max_queued` jobs waiting for one of them."""

    def __init__(self, max_workers: int, max_queued: int, thread_name_prefix: str = "") -> None:
        if max_workers < 1 or max_queued < 0:
            raise ValueError("an executor needs a thread, and a queue bound of 0 or more")
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.name = thread_name_prefix or "executor"
        self.max_queued = max_queued
        self._bound = max_workers + max_queued
        self._outstanding = 0
        self._count_lock = threading.Lock()
        # Every job accepted so far: lets tests count the executor hops of a request.
        self.submitted = 0

    @property
    def outstanding(self) -> int:
        """Jobs running or waiting."""
        return self._outstanding

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._count_lock:
            if self._outstanding >= self._bound:
                raise Overloaded(f"{self.name}: {self.max_queued} jobs are already waiting")
            self._outstanding += 1
            self.submitted += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on one of the threads, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self, function, *args)

    def _finished(self, _future: Future[T] | None) -> None:
        with self._count_lock:
            self._outstanding -= 1
