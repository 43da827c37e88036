"""Half-written state and failure reporting of the administration commands (issue 13, item 13):
an account name taken while a key was being made, or a registration whose commit fails, leaves
no key behind (one whose commit went through though its answer was lost keeps it); `user passwd`
holds no row lock while PBKDF2 runs and reports a concurrent change or a vanished user clearly;
every failure is one line, exit 2 for bad input and 1 for a failure of the system."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy import store
from proxy.errors import BadInput
from proxy.identity import Identity
from signer.pkcs11 import Hsm
from tests.support.cli import BIN, Cli, count
from tests.support.tenants import Enrolled, enrolled


def _keys_on(softhsm_module: str, label: str, pin: str) -> int:
    with Hsm(softhsm_module, sessions_per_token=1) as hsm:
        return len(hsm.login(label, pin).keys())


def test_a_taken_account_name_is_one_line_and_leaves_no_key(
    cli: Cli, token: tuple[str, str], softhsm_module: str, database_url: str
) -> None:
    label, pin = token
    pin_file = cli.secret_file("pin", pin)
    cli.ok("db", "upgrade")
    cli.ok("org", "create", "acme")
    create = [str(BIN), "account", "create", "--org", "acme", "--token-label", label,
              "--name", "ops", "--pin-file", pin_file]  # fmt: skip
    # Four administrators at once: one wins, the others are told, nothing is left behind.
    running = [subprocess.Popen(create, env=cli.env, cwd=cli.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    results = [(p.wait(timeout=120), *p.communicate()) for p in running]
    assert sorted(code for code, _, _ in results) == [0, 2, 2, 2], results
    for code, _, stderr in results:
        if code:
            assert stderr.count("\n") == 1 and "already has an account named 'ops'" in stderr
    assert count(database_url, "accounts") == 1
    assert _keys_on(softhsm_module, label, pin) == 1
    cli.bad("account", "create", "--org", "acme", "--token-label", label, "--name", "ops",
            "--pin-file", pin_file, match="already has an account named 'ops'")  # fmt: skip
    assert _keys_on(softhsm_module, label, pin) == 1


@pytest.fixture
async def admin(database_url: str, softhsm_conf: Path,
                softhsm_module: str) -> AsyncIterator[Enrolled]:  # fmt: skip
    """Organisations acme and globex, their accounts and users (alice...), in process."""
    async with enrolled(database_url, softhsm_module) as done:
        yield done


async def _elsewhere(database_url: str, sql: str, *args: object) -> None:
    """A statement from another connection (another administrator, another tool)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_an_insert_that_fails_anyway_destroys_the_new_key(
    admin: Enrolled, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = admin.hsm.login(admin.label, admin.pin)
    loop = asyncio.get_running_loop()
    generate = token.generate_key

    def generate_while_the_name_is_taken(key_id: bytes, label: str) -> Any:
        key = generate(key_id, label)
        # Meanwhile a writer that does not take the organisation's lock takes the name.
        taken = _elsewhere(database_url, """INSERT INTO accounts (organisation_id, address,
            name, token_label, token_serial, key_id) SELECT id, $1, 'ops', 't', 's', $2
            FROM organisations WHERE name = 'acme'""", b"\x01" * 20, b"\x01" * 16)  # fmt: skip
        asyncio.run_coroutine_threadsafe(taken, loop).result()
        return key

    monkeypatch.setattr(token, "generate_key", generate_while_the_name_is_taken)
    keys_before = len(token.keys())
    with pytest.raises(BadInput, match="already has an account named 'ops'"):
        await admin.identity.create_account("acme", admin.hsm, admin.label, admin.pin, "ops")
    assert len(token.keys()) == keys_before  # the key made for nothing is gone


# A deferred constraint trigger runs at COMMIT: what it does there is what the commit does.
_AT_COMMIT = """
    CREATE FUNCTION at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {body}; RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON accounts DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION at_commit()"""


@pytest.mark.parametrize(
    ("body", "failure"),
    [("RAISE EXCEPTION 'refused at commit'", asyncpg.RaiseError),
     # The connection is lost at commit (the server ends it): the transaction did not commit.
     ("PERFORM pg_terminate_backend(pg_backend_pid())", asyncpg.PostgresConnectionError)],
    ids=["refused", "connection-lost"],
)  # fmt: skip
async def test_a_commit_that_fails_destroys_the_new_key(
    admin: Enrolled, database_url: str, body: str, failure: type[Exception]
) -> None:
    await _elsewhere(database_url, _AT_COMMIT.format(body=body))
    token = admin.hsm.login(admin.label, admin.pin)
    keys_before = len(token.keys())
    with pytest.raises(failure):
        await admin.identity.create_account("acme", admin.hsm, admin.label, admin.pin, "late")
    assert len(token.keys()) == keys_before  # the key made for nothing is gone
    assert await admin.identity.pool.fetchval("SELECT count(*) FROM accounts") == 3  # no more


@contextlib.asynccontextmanager
async def _commit_answer_lost(database_url: str, then_down: bool) -> AsyncIterator[str]:
    """A DSN through a relay to the database that passes everything, except that the answer to
    the first COMMIT never arrives: the client's connection is cut once the server has
    committed (a network that fails at the worst moment); `then_down`: no connection passes
    after that."""
    target = urlsplit(database_url)
    committed = asyncio.Event()

    async def relay(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        if then_down and committed.is_set():
            client_out.transport.abort()
            return
        server_in, server_out = await asyncio.open_connection(target.hostname, target.port)
        commit_sent = False

        async def to_server() -> None:
            nonlocal commit_sent
            while data := await client_in.read(65536):
                commit_sent = commit_sent or (b"COMMIT" in data and not committed.is_set())
                server_out.write(data)
                await server_out.drain()

        async def to_client() -> None:
            while data := await server_in.read(65536):
                if commit_sent:  # the server's answer to COMMIT: lost
                    committed.set()
                    client_out.transport.abort()
                    return
                client_out.write(data)
                await client_out.drain()

        await asyncio.gather(to_server(), to_client(), return_exceptions=True)
        for writer in (client_out, server_out):
            writer.transport.abort()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    netloc = target.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
    try:
        yield urlunsplit(target._replace(netloc=netloc, query="sslmode=disable"))
    finally:
        server.close()
    assert committed.is_set()


@pytest.mark.parametrize("then_down", [False, True], ids=["database-answers", "database-gone"])
async def test_a_commit_whose_answer_is_lost_but_went_through_keeps_the_key(
    admin: Enrolled, then_down: bool
) -> None:
    token = admin.hsm.login(admin.label, admin.pin)
    keys_before = len(token.keys())
    async with _commit_answer_lost(admin.settings.database_url, then_down) as relayed:
        pool = await store.connect(relayed, max_size=2)
        try:
            identity = Identity(pool, admin.settings)
            create = identity.create_account("acme", admin.hsm, admin.label, admin.pin, "late")
            if then_down:  # whether it committed cannot be told: the error, and the key is kept
                with pytest.raises(asyncpg.ConnectionDoesNotExistError):
                    await create
            else:  # the database tells that it committed: the account, as if nothing happened
                account = await create
                accounts = await admin.identity.accounts(
                    await admin.identity.organisation_id("acme"))  # fmt: skip
                assert account in accounts
        finally:
            pool.terminate()
    # The account was registered: its key must stay (destroying it would strand the address).
    assert len(token.keys()) == keys_before + 1
    assert await admin.identity.pool.fetchval("SELECT count(*) FROM accounts") == 4


async def _passwd_in_background(admin: Enrolled, new: str,
                                iterations: int) -> asyncio.Task[None]:  # fmt: skip
    """`user passwd` with a slow PBKDF2 (another process's settings), started."""
    slow = Identity(admin.identity.pool, replace(admin.settings, pbkdf2_iterations=iterations))
    task = asyncio.create_task(slow.change_password("alice", admin.password, new))
    await asyncio.sleep(0.15)  # it has read the envelope and is deriving the new key
    assert not task.done()
    return task


async def test_passwd_holds_no_lock_while_deriving(admin: Enrolled, database_url: str) -> None:
    task = await _passwd_in_background(admin, "new-" + admin.password, 4_000_000)
    conn = await asyncpg.connect(database_url)
    try:
        # A writer of that row waits out the short final update, never the derivation (about
        # half a second at these iterations): a longer wait raises LockNotAvailableError.
        await conn.execute("SET lock_timeout = '200ms'")
        while not task.done():
            async with conn.transaction():
                await conn.fetchval("""SELECT id FROM credential_envelopes WHERE user_id =
                    'alice' AND kind = 'password' FOR UPDATE""")  # fmt: skip
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    await task
    await admin.identity.unlock_with_password("alice", "new-" + admin.password)


async def test_passwd_reports_a_concurrent_change(admin: Enrolled) -> None:
    task = await _passwd_in_background(admin, "slow-" + admin.password, 4_000_000)
    await admin.identity.change_password("alice", admin.password, "fast-" + admin.password)
    with pytest.raises(BadInput, match="changed while this command ran"):
        await task
    await admin.identity.unlock_with_password("alice", "fast-" + admin.password)


async def test_passwd_for_a_user_deleted_meanwhile(admin: Enrolled, database_url: str) -> None:
    task = await _passwd_in_background(admin, "new-" + admin.password, 4_000_000)
    await _elsewhere(database_url, """DELETE FROM user_accounts WHERE user_id = 'alice';
        DELETE FROM credential_envelopes WHERE user_id = 'alice';
        DELETE FROM users WHERE id = 'alice'""")  # fmt: skip
    with pytest.raises(BadInput, match="no user 'alice'"):
        await task


def test_exit_codes_tell_bad_input_from_a_failing_system(
    cli: Cli, token: tuple[str, str], tmp_path: Path
) -> None:
    label, pin = token
    pin_file, pw_file = cli.secret_file("pin", pin), cli.secret_file("pw", "pw-" + pin)
    cli.ok("db", "upgrade")
    cli.ok("org", "create", "acme")
    account: Callable[..., list[str]] = lambda token_label: [  # noqa: E731
        "account", "create", "--org", "acme", "--token-label", token_label, "--pin-file",
        pin_file]  # fmt: skip

    # The system fails: exit 1, one line.
    cli.broken(*account("no-such-token"), match="no initialised token labelled 'no-such-token'")
    cli.broken("user", "add", "--org", "acme", "--user", "bob", "--token-label", "no-such-token",
               "--pin-file", pin_file, "--password-file", pw_file,
               match="no initialised token")  # fmt: skip
    module = dict(cli.env, QSIGNER_PKCS11_MODULE=str(tmp_path / "missing-pkcs11.so"))
    Cli(module, cli.tmp).broken(*account(label), match="PKCS#11 module not found")
    down = dict(cli.env, QSIGNER_DATABASE_URL="postgresql://nobody:hunter2@127.0.0.1:1/none")
    for args in (("org", "create", "x"), ("db", "upgrade"), account(label)):
        line = Cli(down, cli.tmp).broken(*args, match="QSIGNER_DATABASE_URL: cannot connect")
        assert "hunter2" not in line

    # Bad input: exit 2, one line.
    cli.bad(*account(label)[:-1], cli.secret_file("wrong", "wrong-pin"), match="refused the PIN")
    unset = {k: v for k, v in cli.env.items() if k != "QSIGNER_DATABASE_URL"}
    Cli(unset, cli.tmp).bad("org", "create", "x", match="QSIGNER_DATABASE_URL is not set")
    assert count(cli.env["QSIGNER_DATABASE_URL"], "accounts") == 0
