"""Per-user account grants (issue 13, item 11): `user add` grants the organisation's current
accounts unless `--account` narrows it, `user grant` / `user revoke-account` change them, the
upgrade grants existing users everything they could use before, and the proxy signs only with
granted accounts, lists only those, and sees a change made elsewhere within a second."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm
from tests.support.cli import JWT_SECRET, Cli, count, make_cli, make_token, query
from tests.support.hsm import random_label
from tests.support.recording_node import RecordingNode, recording_node
from tests.support.stack import in_process


@pytest.fixture
def token(softhsm_conf: Path, softhsm_module: str) -> tuple[str, str]:
    return make_token(softhsm_module)


@pytest.fixture
def cli(database_url: str, softhsm_conf: Path, tmp_path: Path) -> Cli:
    return make_cli(database_url, softhsm_conf, tmp_path)


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


@dataclass
class Tenants:
    url: str
    session: aiohttp.ClientSession
    node: RecordingNode
    settings: Settings
    treasury: str
    ops: str
    password: str = field(repr=False)

    async def call(self, user: str, method: str, params: list[Any]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {issue_token(self.settings, user, 600)}",
                   "X-Signer-Password": self.password}  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.session.post(self.url, json=body, headers=headers) as response:
            return response.status, await response.json()

    async def accounts(self, user: str) -> list[str]:
        status, answer = await self.call(user, "eth_accounts", [])
        assert status == 200, answer
        return list(answer["result"])

    async def sign(self, user: str, address: str) -> dict[str, Any]:
        _, answer = await self.call(user, "personal_sign", ["0x68656c6c6f", address])
        return dict(answer)


@pytest.fixture
async def tenants(database_url: str, softhsm_conf: Path,
                  softhsm_module: str) -> AsyncIterator[Tenants]:  # fmt: skip
    """Organisation acme with accounts treasury and ops; alice holds both, bob only ops."""
    label, pin, password = random_label("grants"), os.urandom(8).hex(), "pw-" + os.urandom(6).hex()
    async with recording_node() as node:
        settings = Settings(upstreams=(node.url,), database_url=database_url,
                            pkcs11_module=softhsm_module, jwt_secret=JWT_SECRET,
                            pbkdf2_iterations=100_000)  # fmt: skip
        pool = await store.connect(database_url, max_size=2)
        try:
            await store.upgrade(pool)
            identity = Identity(pool, settings)
            with Hsm(softhsm_module, sessions_per_token=1) as hsm:
                hsm.initialise_token(label, os.urandom(8).hex(), pin)
                await identity.create_organisation("acme")
                treasury = await identity.create_account("acme", hsm, label, pin, "treasury")
                ops = await identity.create_account("acme", hsm, label, pin, "ops")
                await identity.add_user("acme", "alice", "signer", hsm, pin, password)
                await identity.add_user("acme", "bob", "signer", hsm, pin, password,
                                        accounts=[ops.address])  # fmt: skip
        finally:
            await pool.close()
        async with in_process(settings) as (url, session):
            yield Tenants(url, session, node, settings, checksum(treasury.address),
                          checksum(ops.address), password)  # fmt: skip


async def _within_a_second(check: Any) -> None:
    deadline = asyncio.get_running_loop().time() + 1.0
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not seen within 1 s"
        await asyncio.sleep(0.02)


async def test_the_proxy_signs_and_lists_only_granted_accounts(tenants: Tenants,
                                                                cli: Cli) -> None:  # fmt: skip
    assert await tenants.accounts("alice") == [tenants.treasury, tenants.ops]
    assert await tenants.accounts("bob") == [tenants.ops]
    assert "result" in await tenants.sign("alice", tenants.treasury)
    assert "result" in await tenants.sign("bob", tenants.ops)
    refused = await tenants.sign("bob", tenants.treasury)
    assert refused["error"]["code"] == 4100
    assert "not an account this caller may use" in refused["error"]["message"]

    # A grant and a revocation made elsewhere (the command line) hold on the running proxy,
    # whose cache the bob rows are now in.
    cli.ok("user", "grant", "--user", "bob", "--account", tenants.treasury)

    async def treasury_granted() -> bool:
        return "result" in await tenants.sign("bob", tenants.treasury)

    await _within_a_second(treasury_granted)
    assert await tenants.accounts("bob") == [tenants.treasury, tenants.ops]

    cli.ok("user", "revoke-account", "--user", "bob", "--account", tenants.ops)

    async def ops_revoked() -> bool:
        return "error" in await tenants.sign("bob", tenants.ops)

    await _within_a_second(ops_revoked)
    assert await tenants.accounts("bob") == [tenants.treasury]
    assert "result" in await tenants.sign("alice", tenants.ops)  # alice's grants are her own
