"""Two organisations in front of a recording node, served by the proxy in process: acme with the
accounts treasury and ops (alice granted both, bob only ops) and globex with one account (gina).
Every part is real (PostgreSQL, SoftHSM, HTTP); the node records the headers it got."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm
from tests.support.cli import JWT_SECRET
from tests.support.hsm import random_label
from tests.support.recording_node import RecordingNode, recording_node
from tests.support.stack import in_process, provisioning


@dataclass
class Tenants:
    url: str
    session: aiohttp.ClientSession
    node: RecordingNode
    settings: Settings
    treasury: str  # acme's accounts, checksummed
    ops: str
    other: str  # globex's
    password: str = field(repr=False)  # every user's

    async def call(self, user: str, method: str, params: list[Any],
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        sent = {"Authorization": f"Bearer {issue_token(self.settings, user, 600)}",
                "X-Signer-Password": self.password, **(headers or {})}  # fmt: skip
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.session.post(self.url, json=body, headers=sent) as response:
            return response.status, await response.json()

    async def accounts(self, user: str) -> list[str]:
        status, answer = await self.call(user, "eth_accounts", [])
        assert status == 200, answer
        return list(answer["result"])

    async def sign(self, user: str, address: str) -> dict[str, Any]:
        _, answer = await self.call(user, "personal_sign", ["0x68656c6c6f", address])
        return dict(answer)


@dataclass
class Enrolled:
    """The organisations as enrolled, with the identity service and the HSM still open."""

    identity: Identity
    hsm: Hsm
    settings: Settings
    label: str
    pin: str = field(repr=False)
    password: str = field(repr=False)  # every user's
    accounts: dict[str, bytes] = field(default_factory=dict)  # by name


@contextlib.asynccontextmanager
async def enrolled(database_url: str, softhsm_module: str,
                   upstreams: tuple[str, ...] = ()) -> AsyncIterator[Enrolled]:  # fmt: skip
    label, pin, password = random_label("tenants"), os.urandom(8).hex(), "pw-" + os.urandom(6).hex()
    settings = Settings(upstreams=upstreams, database_url=database_url,
                        pkcs11_module=softhsm_module, jwt_secret=JWT_SECRET,
                        pbkdf2_iterations=100_000)  # fmt: skip
    async with provisioning(database_url, settings, softhsm_module, label,
                            pin) as (identity, hsm):  # fmt: skip
        done = Enrolled(identity, hsm, settings, label, pin, password)
        for org in ("acme", "globex"):
            await identity.create_organisation(org)
        for org, name in (("acme", "treasury"), ("acme", "ops"), ("globex", "other")):
            account = await identity.create_account(org, hsm, label, pin, name)
            done.accounts[name] = account.address
        for org, user, accounts in (("acme", "alice", None),
                                    ("acme", "bob", [done.accounts["ops"]]),
                                    ("globex", "gina", None)):  # fmt: skip
            await identity.add_user(org, user, "signer", hsm, pin, password,
                                    accounts=accounts)  # fmt: skip
        yield done


@contextlib.asynccontextmanager
async def tenants(database_url: str, softhsm_module: str) -> AsyncIterator[Tenants]:
    async with recording_node() as node:
        async with enrolled(database_url, softhsm_module, (node.url,)) as done:
            settings, accounts, password = done.settings, done.accounts, done.password
        async with in_process(settings) as (url, session):
            yield Tenants(url, session, node, settings, checksum(accounts["treasury"]),
                          checksum(accounts["ops"]), checksum(accounts["other"]),
                          password)  # fmt: skip


async def within_a_second(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail if it does not within the 1 s the issue promises."""
    deadline = asyncio.get_running_loop().time() + 1.0
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not seen within 1 s"
        await asyncio.sleep(0.02)
