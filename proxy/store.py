"""PostgreSQL access: the connection pool and the numbered schema migrations.

Migrations are plain SQL files in `proxy/migrations/NNNN_name.sql`, applied in order, each in
its own transaction, under an advisory lock so that replicas upgrading at once take turns.
"""

from __future__ import annotations

import re
from importlib.resources import files

import asyncpg

from proxy.errors import SettingsError

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


async def connect(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool on the database, or `SettingsError` naming QSIGNER_DATABASE_URL."""
    try:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=10)
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
