"""PostgreSQL access: the connection pool and the numbered schema migrations.

Migrations are plain SQL files in `proxy/migrations/NNNN_name.sql`, applied in order, each in
its own transaction, under an advisory lock so that replicas upgrading at once take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from typing import Any

import asyncpg

from proxy.errors import DatabaseUnavailable, SettingsError

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any fixed 64-bit number works as the advisory lock key; this one is ours.
_MIGRATION_LOCK = 0x5153_4947_4E45_5201


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    found = []
    for entry in files("proxy.migrations").iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Given as the server pool's `reset`: asyncpg then only rolls back a transaction left open
    (its own step before this one), without its reset query, a round trip on every release.
    Nothing in our code keeps session state (advisory locks, LISTEN, SET) on a pooled
    connection."""


async def connect(dsn: str, *, min_size: int = 1, max_size: int = 10,
                  command_timeout: float | None = None, light_reset: bool = False,
                  ) -> asyncpg.Pool:  # fmt: skip
    """A pool on the database, or `SettingsError` naming QSIGNER_DATABASE_URL. With
    `light_reset` (the server's pool), a connection given back costs no round trip."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10,
                                         command_timeout=command_timeout,
                                         reset=_keep_session if light_reset else None,
                                         )  # fmt: skip
    except (OSError, asyncpg.PostgresError, TimeoutError, ValueError) as exc:
        # The DSN may hold a password: never echo it.
        raise SettingsError(
            f"QSIGNER_DATABASE_URL: cannot connect to the database ({type(exc).__name__})"
        ) from None
    if pool is None:  # pragma: no cover (asyncpg returns None only when not awaited)
        raise SettingsError("QSIGNER_DATABASE_URL: cannot connect to the database")
    return pool


async def upgrade(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations not yet applied; return the names of those applied now."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version     integer PRIMARY KEY,
                       name        text NOT NULL,
                       applied_at  timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


# What a lost, restarting, frozen or saturated server raises, and one that cannot serve us now:
# a primary demoted to a read-only standby by a failover, credentials rotated under a running
# pool, the database gone. Errors about the data (a unique violation, say) are not among them
# and pass unchanged.
UNREACHABLE = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    # A connection whose server went away while it sat idle in the pool (the server's FATAL
    # arrived unasked): asyncpg's protocol is left mid-state and refuses the next statement.
    asyncpg.exceptions.InternalClientError,
)  # fmt: skip


class BoundedPool:
    """The server's pool: a single statement (acquiring, running, giving the connection back)
    answers within `timeout` seconds in all; in a transaction, acquiring and each statement are
    bounded alike. A database that cannot answer raises `DatabaseUnavailable` (HTTP 503), so
    that a request fails closed within the caller's patience instead of hanging. asyncpg's pool
    reconnects by itself once the server is back."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        with _unavailable_on_failure():
            # The acquire timeout also bounds giving the connection back (asyncpg applies it).
            async with self.pool.acquire(timeout=self.timeout) as conn:
                with _discard_broken(conn):
                    yield conn

    async def _statement(self, method: str, query: str, *args: Any) -> Any:
        async def attempt() -> Any:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                with _discard_broken(conn):
                    return await getattr(conn, method)(query, *args)

        # Cancelling a statement on a hung server makes asyncpg wait for the server to confirm
        # (bounded only by the acquire timeout): the caller stops waiting at the deadline while
        # the attempt winds down on its own.
        running = asyncio.ensure_future(attempt())
        running.add_done_callback(_consume_outcome)
        with _unavailable_on_failure():
            return await asyncio.wait_for(asyncio.shield(running), self.timeout)

    async def fetch(self, query: str, *args: Any) -> Any:
        return await self._statement("fetch", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._statement("fetchrow", query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._statement("fetchval", query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._statement("execute", query, *args)


def _consume_outcome(attempt: asyncio.Future[Any]) -> None:
    """An attempt abandoned at the deadline ends with an error nobody awaits: fetch it here so
    that asyncio does not report it as never retrieved."""
    if not attempt.cancelled():
        attempt.exception()


@contextlib.contextmanager
def _discard_broken(conn: asyncpg.Connection) -> Iterator[None]:
    """A connection whose protocol state asyncpg no longer trusts is closed, never given to
    the next statement."""
    try:
        yield
    except asyncpg.exceptions.InternalClientError:
        conn.terminate()
        raise


@contextlib.contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    try:
        yield
    except UNREACHABLE:
        raise DatabaseUnavailable(
            "database unavailable: requests are refused until it answers again"
        ) from None
