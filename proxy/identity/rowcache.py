"""Rows read for authentication, cached while a LISTEN connection tells this replica of every
change (NOTIFY qsigner_identity from any replica); without one, every check reads. The listener
is watched (a cheap query now and then) and reconnected with backoff; every row also expires."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import asyncpg

from proxy import logs

CHANNEL = "qsigner_identity"
LISTENER_NAME = "qsigner-listener"  # application_name, so operators can tell it apart
# The listener proves it is alive every second; rows are served only while it did so lately
# (within two periods), so a listener cut off without a word (half-open TCP, a partition) stops
# the cache within about two seconds, long before its query's own timeout replaces it.
KEEPALIVE_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 5.0
# A key or user that does not exist is remembered briefly, so that made-up credentials do not
# cost a query each; creating one announces it, so a miss never outlives the creation.
MISS_SECONDS = 5.0
MISSES_MAX = 10_000


class RowCache:
    """Authentication rows by (kind, key), kind being "user" or "apikey".

    A change is announced as `user:<id>` (status, role, envelope: every row about the user),
    `attempts:<id>` (only the wrong-password count or the lock: the user's own row), or
    `apikey:<id>`.
    """

    def __init__(self, pool: asyncpg.Pool, max_rows: int, ttl_seconds: float,
                 keepalive_seconds: float = KEEPALIVE_SECONDS) -> None:  # fmt: skip
        self.pool = pool
        self._max_rows = max_rows
        self._ttl = ttl_seconds
        self._keepalive = keepalive_seconds
        self._dsn = ""
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._alive_at = 0.0  # when the listener last proved it answers (monotonic)
        self._watcher: asyncio.Task[None] | None = None
        self._rows: OrderedDict[tuple[str, str], tuple[float, asyncpg.Record]] = OrderedDict()
        self._misses: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._generation = 0
        self._forget_callbacks: list[Callable[[str, str | None], None]] = []

    def on_forget(self, callback: Callable[[str, str | None], None]) -> None:
        """Also call `callback(kind, key)` whenever rows about a user or API key are dropped
        (so that what was derived from them is dropped too); key None means every row."""
        self._forget_callbacks.append(callback)

    @property
    def listening(self) -> bool:
        """Whether changes reach this replica now (else nothing is served from the cache)."""
        listener = self._listener
        return (listener is not None and not listener.is_closed() and not self._lost.is_set()
                and time.monotonic() - self._alive_at <= 2 * self._keepalive)  # fmt: skip

    @property
    def generation(self) -> int:
        """Changes with every invalidation: what was derived from rows read before a change
        must not be stored after it."""
        return self._generation

    async def listen(self, dsn: str) -> None:
        """Cache authentication rows, invalidated by NOTIFY from every replica (the server)."""
        self._dsn = dsn
        await self._connect()
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        listener, self._listener = self._listener, None
        self._forget_rows()
        if listener is not None and not listener.is_closed():
            # asyncpg aborts the connection when it does not answer in time, then re-raises:
            # a half-open listener is gone either way.
            with contextlib.suppress(TimeoutError, OSError, asyncpg.InterfaceError):
                await listener.close(timeout=self._keepalive)

    async def _connect(self) -> None:
        listener = await asyncpg.connect(
            self._dsn,
            timeout=5 * self._keepalive,
            server_settings={"application_name": LISTENER_NAME},
        )
        try:
            await listener.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            listener.terminate()
            raise
        listener.add_termination_listener(self._on_listener_lost)
        # Changes made while nobody listened were never announced: start from nothing.
        self._forget_rows()
        self._listener = listener
        self._alive_at = time.monotonic()
        self._lost.clear()

    async def _watch(self) -> None:
        """Reconnect a lost listener, and treat one that stops answering (half-open TCP, a
        server that vanished without a FIN) as lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._keepalive)
            listener = self._listener
            if listener is not None and not self._lost.is_set():
                try:
                    # Answered, every NOTIFY sent before it has arrived: fresh again. A slow
                    # answer only pauses the cache; no answer at all replaces the listener.
                    await listener.fetchval("SELECT 1", timeout=5 * self._keepalive)
                    self._alive_at = time.monotonic()
                    continue
                except Exception:  # noqa: S110 (whatever the failure, the listener is replaced)
                    pass
            self._drop_listener()
            logs.event("identity listener lost: reading every row until it is back",
                       logging.WARNING)  # fmt: skip
            delay = 0.1
            while True:
                try:
                    await asyncio.wait_for(self._connect(), 10 * self._keepalive)
                    break
                except Exception as exc:  # the watcher must outlive any failure
                    logs.event("identity listener cannot reconnect", logging.WARNING,
                               error=type(exc).__name__, retry_seconds=delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            logs.event("identity listener back")

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        self._lost.set()
        self._forget_rows()
        if listener is not None and not listener.is_closed():
            listener.terminate()  # no goodbye on a connection that may be half-open

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key = payload.partition(":")
        self.forget(kind, key)

    def forget(self, kind: str, key: str) -> None:
        """Drop what this replica holds about a user or an API key. Called on NOTIFY from any
        replica, and by this one right after its own change commits (the NOTIFY comes later)."""
        self._generation += 1
        for cached in [k for k, (_, row) in self._rows.items()
                       if (kind == "user" and row["id"] == key) or k == (kind, key)
                       or (kind == "attempts" and k == ("user", key))]:  # fmt: skip
            del self._rows[cached]
        self._misses.pop((kind, key), None)
        if kind == "attempts":
            self._misses.pop(("user", key), None)
        for callback in self._forget_callbacks:
            callback(kind, key)

    def _on_listener_lost(self, conn: object) -> None:
        if conn is self._listener:
            self._listener = None
            self._lost.set()
            self._forget_rows()

    def _forget_rows(self) -> None:
        self._generation += 1
        self._rows.clear()
        self._misses.clear()
        for callback in self._forget_callbacks:
            callback("*", None)

    async def row(self, kind: str, key: str, query: str) -> asyncpg.Record | None:
        """The row `query` reads for `key`, from the cache while listening and fresh."""
        if self.listening:
            now = time.monotonic()
            cached = self._rows.get((kind, key))
            if cached is not None and cached[0] > now:
                return cached[1]
            missed = self._misses.get((kind, key))
            if missed is not None and missed > now:
                return None
        generation = self._generation
        row = await self.pool.fetchrow(query, key)
        # Store only if no invalidation arrived while we read (it may concern this row).
        if self.listening and generation == self._generation:
            if row is not None:
                self._rows[(kind, key)] = (time.monotonic() + self._ttl, row)
                self._rows.move_to_end((kind, key))
                while len(self._rows) > self._max_rows:
                    self._rows.popitem(last=False)
            else:
                self._misses[(kind, key)] = time.monotonic() + min(MISS_SECONDS, self._ttl)
                self._misses.move_to_end((kind, key))
                while len(self._misses) > MISSES_MAX:
                    self._misses.popitem(last=False)
        return row

    @staticmethod
    async def notify(conn: asyncpg.Connection, kind: str, key: str) -> None:
        """Tell every replica (on commit) that rows about this user or API key changed."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{kind}:{key}")
