"""Rows read for authentication, cached while a LISTEN connection tells this replica of every
change (NOTIFY qsigner_identity from any replica); without one, every check reads."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import asyncpg

CHANNEL = "qsigner_identity"


class RowCache:
    """Authentication rows by (kind, key), kind being "user" or "apikey".

    A change is announced as `user:<id>` (status, role, envelope: every row about the user),
    `attempts:<id>` (only the wrong-password count or the lock: the user's own row), or
    `apikey:<id>`.
    """

    def __init__(self, pool: asyncpg.Pool, max_rows: int) -> None:
        self.pool = pool
        self._max_rows = max_rows
        self._listener: asyncpg.Connection | None = None
        self._rows: OrderedDict[tuple[str, str], asyncpg.Record] = OrderedDict()
        self._generation = 0
        self._forget_callbacks: list[Callable[[str, str], None]] = []

    def on_forget(self, callback: Callable[[str, str], None]) -> None:
        """Also call `callback(kind, key)` whenever rows about a user or API key are dropped
        (so that what was derived from them is dropped too)."""
        self._forget_callbacks.append(callback)

    async def listen(self, dsn: str) -> None:
        """Cache authentication rows, invalidated by NOTIFY from every replica (the server)."""
        self._listener = await asyncpg.connect(dsn)
        await self._listener.add_listener(CHANNEL, self._on_notify)
        self._listener.add_termination_listener(self._on_listener_lost)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        self._forget_rows()
        if listener is not None and not listener.is_closed():
            await listener.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key = payload.partition(":")
        self.forget(kind, key)

    def forget(self, kind: str, key: str) -> None:
        """Drop what this replica holds about a user or an API key. Called on NOTIFY from any
        replica, and by this one right after its own change commits (the NOTIFY comes later)."""
        self._generation += 1
        for cached in [k for k, row in self._rows.items()
                       if (kind == "user" and row["id"] == key) or k == (kind, key)
                       or (kind == "attempts" and k == ("user", key))]:  # fmt: skip
            del self._rows[cached]
        for callback in self._forget_callbacks:
            callback(kind, key)

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None
        self._forget_rows()

    def _forget_rows(self) -> None:
        self._generation += 1
        self._rows.clear()

    async def row(self, kind: str, key: str, query: str) -> asyncpg.Record | None:
        """The row `query` reads for `key`, from the cache while listening."""
        listening = self._listener is not None and not self._listener.is_closed()
        if listening and (kind, key) in self._rows:
            return self._rows[(kind, key)]
        generation = self._generation
        row = await self.pool.fetchrow(query, key)
        # Store only if no invalidation arrived while we read (it may concern this row).
        if listening and row is not None and generation == self._generation:
            self._rows[(kind, key)] = row
            while len(self._rows) > self._max_rows:
                self._rows.popitem(last=False)
        return row

    @staticmethod
    async def notify(conn: asyncpg.Connection, kind: str, key: str) -> None:
        """Tell every replica (on commit) that rows about this user or API key changed."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{kind}:{key}")
