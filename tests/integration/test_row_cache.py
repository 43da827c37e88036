"""The row cache of authentication (issue 13, item 5): a lost LISTEN connection comes back by
itself, nothing stale is served while it is down, and every cached row expires anyway."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.identity import Identity
from proxy.identity.rowcache import CHANNEL, LISTENER_NAME, RowCache
from proxy.settings import Settings
from tests.conftest import SoftHsmToken
from tests.support.identity import acme, refused_within_a_second, two_pools

SETTINGS = Settings(pbkdf2_iterations=100_000)


async def provision(identity: Identity, hsm_token: SoftHsmToken) -> str:
    """Alice and Bob of acme; Bob's API key."""
    await acme(identity, hsm_token, {"alice": "alice", "bob": "bob"})
    return (await identity.create_api_key("bob", "bob")).key


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    async with two_pools(database_url) as pools:
        yield pools


async def silent_role(pool: asyncpg.Pool, user: str, role: str) -> None:
    """A change no replica is told of: only a cache that is not in use sees it."""
    await pool.execute("UPDATE users SET role = $2 WHERE id = $1", user, role)


async def cache_in_use(read: Callable[[], Awaitable[str]], pool: asyncpg.Pool, user: str) -> bool:
    """Whether `read` (the user's role) answers from a cache: a silent change goes unseen. The
    database then holds the other role than the cache."""
    seen = await read()
    await silent_role(pool, user, "viewer" if seen == "signer" else "signer")
    return await read() == seen


async def wait_for_cache(read: Callable[[], Awaitable[str]], pool: asyncpg.Pool,
                         user: str) -> None:  # fmt: skip
    deadline = time.monotonic() + 5.0
    while not await cache_in_use(read, pool, user):
        assert time.monotonic() < deadline, "the listener did not come back"
        await asyncio.sleep(0.05)


async def test_a_terminated_listener_comes_back_and_nothing_stale_is_served_meanwhile(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    mine, other = Identity(pools[0], SETTINGS), Identity(pools[1], SETTINGS)
    bob_key = await provision(other, hsm_token)
    await mine.listen(database_url)
    try:
        await mine.principal("alice")  # both cached here
        await mine.unlock_with_api_key(bob_key)
        terminated = await pools[1].fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = $1 AND datname = current_database()""",
            LISTENER_NAME,
        )
        assert terminated == 1
        await other.disable_user("alice")
        await other.revoke_api_key(bob_key.split("_")[1])
        await refused_within_a_second(lambda: mine.principal("alice"))
        await refused_within_a_second(lambda: mine.unlock_with_api_key(bob_key))

        # The listener is back: rows are cached again (a silent change goes unseen) ...
        async def bob_role() -> str:
            return (await mine.principal("bob")).role

        await wait_for_cache(bob_role, pools[1], "bob")
        # ... and announced changes reach this replica through it.
        stored = await pools[1].fetchval("SELECT role FROM users WHERE id = 'bob'")
        await pools[1].execute("SELECT pg_notify($1, 'user:bob')", CHANNEL)
        deadline = time.monotonic() + 1.0
        while await bob_role() != stored:
            assert time.monotonic() < deadline, "a NOTIFY did not arrive on the new listener"
            await asyncio.sleep(0.01)
    finally:
        await mine.close()


async def test_a_cached_row_expires_even_if_no_change_is_announced(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    await provision(Identity(pools[1], SETTINGS), hsm_token)
    mine = Identity(pools[0], replace(SETTINGS, row_cache_seconds=1))
    await mine.listen(database_url)
    try:
        await mine.principal("alice")
        await silent_role(pools[1], "alice", "viewer")
        assert (await mine.principal("alice")).role == "signer"  # served from the cache
        deadline = time.monotonic() + 2.0
        while (await mine.principal("alice")).role != "viewer":
            assert time.monotonic() < deadline, "a cached row outlived its TTL"
            await asyncio.sleep(0.05)
    finally:
        await mine.close()


class Blackhole:
    """A TCP relay to PostgreSQL whose open connections can go silent without closing: the
    half-open connection a dead network path or a vanished server leaves behind."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        self._unix = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._parts = parts
        self._silenced: list[asyncio.Event] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        """Start relaying; the DSN that goes through the relay."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._parts.username or "postgres"
        return urlunsplit(self._parts._replace(netloc=f"{user}@127.0.0.1:{port}", query=""))

    def silence(self) -> None:
        """From now on, every connection open so far swallows what is sent either way."""
        for silenced in self._silenced:
            silenced.set()

    async def close(self) -> None:
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._unix:
            upstream = await asyncio.open_unix_connection(self._unix)
        else:
            upstream = await asyncio.open_connection(*self._target)
        silenced = asyncio.Event()
        self._silenced.append(silenced)
        self._writers += [writer, upstream[1]]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not silenced.is_set():
                    sink.write(data)
                    await sink.drain()
            sink.close()

        for source, sink in ((reader, upstream[1]), (upstream[0], writer)):
            task = asyncio.create_task(pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)


@contextlib.asynccontextmanager
async def silenced_listener(
    database_url: str,
    hsm_token: SoftHsmToken,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    **cache_options: float,
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """A row cache whose listener goes through a relay, with alice's row cached and then changed
    behind its back, and the relay silenced: the connection stays open and nothing comes
    through (a partition). Yields a read of alice's role through the cache."""
    await provision(Identity(pools[1], SETTINGS), hsm_token)
    relay = Blackhole(database_url)
    rows = RowCache(pools[0], 100, 30, **cache_options)
    query = "SELECT id, role FROM users WHERE id = $1"

    async def alice_role() -> str:
        return str((await rows.row("user", "alice", query))["role"])

    try:
        await rows.listen(await relay.start())
        await alice_role()
        await silent_role(pools[1], "alice", "viewer")
        assert await alice_role() == "signer"  # cached
        relay.silence()
        await pools[1].execute("SELECT pg_notify($1, 'user:alice')", CHANNEL)  # lost
        yield alice_role
    finally:
        await rows.close()
        await relay.close()


async def stale_rows_end_within(seconds: float, alice_role: Callable[[], Awaitable[str]]) -> None:
    deadline = time.monotonic() + seconds
    while await alice_role() != "viewer":
        assert time.monotonic() < deadline, "a silent listener kept stale rows in use"
        await asyncio.sleep(0.02)


async def test_a_listener_that_stops_answering_is_replaced(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    async with silenced_listener(database_url, hsm_token, pools,
                                 keepalive_seconds=0.3) as alice_role:  # fmt: skip
        await stale_rows_end_within(1.0, alice_role)
        # A new listener (a new connection through the relay) caches again.
        await wait_for_cache(alice_role, pools[1], "alice")


async def test_by_default_a_silent_listener_stops_the_cache_within_seconds(
    database_url: str, hsm_token: SoftHsmToken, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    """With the default keepalive, a listener cut off without a word (no FIN, no RST) stops
    serving cached rows within about two seconds, not once its query times out."""
    async with silenced_listener(database_url, hsm_token, pools) as alice_role:
        await stale_rows_end_within(3.0, alice_role)
