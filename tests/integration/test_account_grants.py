"""Per-user account grants (issue 13, item 11): `user add` grants the organisation's current
accounts unless `--account` narrows it, `user grant` / `user revoke-account` change them, the
upgrade grants existing users everything they could use before, and the proxy signs only with
granted accounts, lists only those, and sees a change made elsewhere within a second."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy import store
from signer.base import checksum
from tests.support.cli import Cli, count, query
from tests.support.tenants import Tenants, tenants, within_a_second


def _granted(database_url: str, user: str) -> set[str]:
    rows = query(database_url, """SELECT a.address FROM user_accounts g
                                  JOIN accounts a ON a.id = g.account_id
                                  WHERE g.user_id = $1""", user)  # fmt: skip
    return {checksum(r["address"]) for r in rows}


def test_grants_from_the_command_line(cli: Cli, token: tuple[str, str], database_url: str) -> None:
    label, pin = token
    pin_file, pw_file = cli.secret_file("pin", pin), cli.secret_file("pw", "pw-" + pin)
    cli.ok("db", "upgrade")
    cli.ok("org", "create", "acme")
    cli.ok("org", "create", "globex")

    def account(org: str, name: str) -> str:
        return cli.ok("account", "create", "--org", org, "--token-label", label, "--name", name,
                      "--pin-file", pin_file)  # fmt: skip

    treasury, ops, other = account("acme", "treasury"), account("acme", "ops"), account(
        "globex", "other")  # fmt: skip

    def add(user: str, *extra: str) -> None:
        cli.ok("user", "add", "--org", "acme", "--user", user, "--pin-file", pin_file,
               "--password-file", pw_file, *extra)  # fmt: skip

    add("alice")  # every current account of the organisation
    assert _granted(database_url, "alice") == {treasury, ops}
    add("bob", "--account", ops.lower())  # any case; narrowed to one
    assert _granted(database_url, "bob") == {ops}
    for wrong, why in ((other, "not an account of organisation 'acme'"),
                       ("0x" + "12" * 20, "not an account of organisation 'acme'"),
                       ("0x1234", "address")):  # fmt: skip
        cli.bad("user", "add", "--org", "acme", "--user", "carol", "--pin-file", pin_file,
                "--password-file", pw_file, "--account", wrong, match=why)  # fmt: skip
    assert count(database_url, "users") == 2  # nothing half-written

    # An account made after enrolment is not granted by itself.
    late = account("acme", "late")
    assert late not in _granted(database_url, "alice")
    assert cli.ok("user", "grant", "--user", "bob", "--account", late) == late
    assert _granted(database_url, "bob") == {ops, late}
    cli.ok("user", "grant", "--user", "bob", "--account", late)  # again: no change, no error
    assert cli.ok("user", "revoke-account", "--user", "bob", "--account", ops) == ops
    assert _granted(database_url, "bob") == {late}
    cli.bad("user", "revoke-account", "--user", "bob", "--account", ops, match="not granted")
    cli.bad("user", "grant", "--user", "bob", "--account", other,
            match="not an account of organisation 'acme'")  # fmt: skip
    cli.bad("user", "grant", "--user", "nobody", "--account", ops, match="no user 'nobody'")
    cli.bad("user", "revoke-account", "--user", "nobody", "--account", ops,
            match="no user 'nobody'")  # fmt: skip
    # `account list --user` shows what a user may sign with.
    listed = cli.run("account", "list", "--org", "acme", "--user", "bob").stdout
    assert listed == f"{late}\tlate\n"


async def test_upgrade_grants_existing_users_their_organisations_accounts(
    database_url: str,
) -> None:
    pool = await store.connect(database_url, max_size=1)
    try:
        version, name, sql = store.migrations()[0]
        async with pool.acquire() as conn:  # a deployment on the first schema
            await conn.execute("""CREATE TABLE schema_migrations (version integer PRIMARY KEY,
                name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())""")
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, name)
            for org in (1, 2):
                await conn.execute("INSERT INTO organisations (id, name) VALUES ($1, $2)",
                                   org, f"org{org}")  # fmt: skip
            for number, org in ((1, 1), (2, 1), (3, 2)):
                await conn.execute(
                    """INSERT INTO accounts (organisation_id, address, token_label,
                       token_serial, key_id) VALUES ($1, $2, 't', 's', $3)""",
                    org, bytes([number]) * 20, bytes([number]) * 16,
                )  # fmt: skip
            for user, org in (("u1", 1), ("u2", 1), ("u3", 2)):
                await conn.execute(
                    "INSERT INTO users (id, organisation_id, role) VALUES ($1, $2, 'signer')",
                    user, org,
                )  # fmt: skip
        assert await store.upgrade(pool)
        rows = await pool.fetch("""SELECT g.user_id, a.address FROM user_accounts g
                                   JOIN accounts a ON a.id = g.account_id""")
        granted = {(r["user_id"], r["address"][0]) for r in rows}
        assert granted == {("u1", 1), ("u1", 2), ("u2", 1), ("u2", 2), ("u3", 3)}
    finally:
        await pool.close()


@pytest.fixture
async def acme(database_url: str, softhsm_conf: Path,
               softhsm_module: str) -> AsyncIterator[Tenants]:  # fmt: skip
    async with tenants(database_url, softhsm_module) as served:
        yield served


async def test_the_proxy_signs_and_lists_only_granted_accounts(acme: Tenants,
                                                                cli: Cli) -> None:  # fmt: skip
    assert await acme.accounts("alice") == [acme.treasury, acme.ops]
    assert await acme.accounts("bob") == [acme.ops]
    assert "result" in await acme.sign("alice", acme.treasury)
    assert "result" in await acme.sign("bob", acme.ops)
    refused = await acme.sign("bob", acme.treasury)
    assert refused["error"]["code"] == 4100
    assert "not an account this caller may use" in refused["error"]["message"]

    # A grant and a revocation made elsewhere (the command line) hold on the running proxy,
    # whose cache the bob rows are now in.
    cli.ok("user", "grant", "--user", "bob", "--account", acme.treasury)

    async def treasury_granted() -> bool:
        return "result" in await acme.sign("bob", acme.treasury)

    await within_a_second(treasury_granted)
    assert await acme.accounts("bob") == [acme.treasury, acme.ops]

    cli.ok("user", "revoke-account", "--user", "bob", "--account", acme.ops)

    async def ops_revoked() -> bool:
        return "error" in await acme.sign("bob", acme.ops)

    await within_a_second(ops_revoked)
    assert await acme.accounts("bob") == [acme.treasury]
    assert "result" in await acme.sign("alice", acme.ops)  # alice's grants are her own
