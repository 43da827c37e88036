"""A thread pool with a bounded queue: blocking work (PKCS#11 calls, PBKDF2) waits in a queue of
known length, and work beyond it is refused at once with `Overloaded` instead of piling up.

`run` is the event loop's way in (a signature's one executor hop). It hands the worker an
asyncio future directly, and results go back to the loop in batches: one `call_soon_threadsafe`
for every result that arrived while the loop had not yet collected the last batch. Through
`loop.run_in_executor` on a `ThreadPoolExecutor` the same hop cost ~45 µs of CPU (a concurrent
future, its chaining to an asyncio one, a self-pipe write per job), ~20 µs this way.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from signer.errors import Overloaded

P = ParamSpec("P")
T = TypeVar("T")

# (function, args, kwargs, future, inbox): inbox is None for a `submit` job (future is then a
# concurrent future); None alone tells a worker to stop.
_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any, "_Inbox | None"]


class _Inbox:
    """Results on their way back to one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, bool]] = collections.deque()
        self._scheduled = False

    def deliver(self, future: asyncio.Future[Any], value: Any, failed: bool) -> None:
        """From a worker thread. The result is queued before the flag is read, and `_drain`
        clears the flag before it empties the queue: no result waits without a drain to come."""
        self._done.append((future, value, failed))
        if not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                pass

    def _drain(self) -> None:
        self._scheduled = False
        done = self._done
        while done:
            future, value, failed = done.popleft()
            if future.cancelled():
                continue
            if not failed:
                future.set_result(value)
            elif isinstance(value, StopIteration):  # a future refuses it, and would never end
                future.set_exception(RuntimeError(f"the job raised {value!r}"))
            else:
                future.set_exception(value)

    def cancel(self, future: asyncio.Future[Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(future.cancel)
        except RuntimeError:
            pass


class BoundedExecutor(Executor):
    """`max_workers` threads and at most `max_queued` jobs waiting for one of them."""

    def __init__(self, max_workers: int, max_queued: int, thread_name_prefix: str = "") -> None:
        if max_workers < 1 or max_queued < 0:
            raise ValueError("an executor needs a thread, and a queue bound of 0 or more")
        self.name = thread_name_prefix or "executor"
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._bound = max_workers + max_queued
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._outstanding = 0
        self._shutdown = False
        self._inbox: _Inbox | None = None
        # Every job accepted so far: lets tests count the executor hops of a request.
        self.submitted = 0

    @property
    def outstanding(self) -> int:
        """Jobs running or waiting."""
        return self._outstanding

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self._accept((fn, args, kwargs, future, None))
        return future

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` on one of the threads, awaited from the event loop."""
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._accept((function, args, {}, future, inbox))
        return await future

    def _accept(self, job: _Job) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError(f"{self.name}: cannot take work after shutdown")
            if self._outstanding >= self._bound:
                raise Overloaded(f"{self.name}: {self.max_queued} jobs are already waiting")
            self._outstanding += 1
            self.submitted += 1
            if self._outstanding > len(self._threads) < self.max_workers:
                self._start_thread()
            self._jobs.put(job)

    def _start_thread(self) -> None:
        if not self._threads:
            with _live_lock:
                _live.add(self)
        # Daemon threads, stopped by `shutdown` (or at exit, below) between two jobs.
        thread = threading.Thread(
            target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            function, args, kwargs, future, inbox = job
            if inbox is None:
                if not future.set_running_or_notify_cancel():
                    self._finished()
                    continue
            elif future.cancelled():  # its caller gave up while it waited
                self._finished()
                continue
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                self._finished()
                if inbox is None:
                    future.set_exception(exc)
                else:
                    inbox.deliver(future, exc, True)
            else:
                self._finished()
                if inbox is None:
                    future.set_result(result)
                else:
                    inbox.deliver(future, result, False)

    def _finished(self) -> None:
        # Before the result is handed over: whoever sees it also sees the job counted out.
        with self._lock:
            self._outstanding -= 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As `ThreadPoolExecutor.shutdown`: no new work; waiting jobs run, or are cancelled."""
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        with _live_lock:
            _live.discard(self)
        while cancel_futures:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                continue
            _function, _args, _kwargs, future, inbox = job
            self._finished()
            if inbox is None:
                future.cancel()
            else:
                inbox.cancel(future)
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


_live: set[BoundedExecutor] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_at_exit() -> None:
    """An executor nobody shut down: its running jobs end before the interpreter does (a
    PKCS#11 call cut short by the exit could leave a token's files half written)."""
    with _live_lock:
        executors = list(_live)
    for executor in executors:
        executor.shutdown(wait=True, cancel_futures=True)
