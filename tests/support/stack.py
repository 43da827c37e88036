"""A whole stack for integration and acceptance tests: anvil, a fresh database, a SoftHSM token
with an organisation's account and users, funded on chain. Every part is real."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm
from tests.support.anvil import rpc
from tests.support.hsm import random_label

JWT_SECRET = "stack-secret-" + "z" * 40
CHAIN_ID = 1337


@dataclass
class Stack:
    anvil_url: str
    database_url: str
    settings: Settings
    address: str  # the organisation's HSM account, checksummed
    other_address: str  # an account of another organisation
    jwt: str = field(repr=False)
    password: str = field(repr=False)
    api_key: str = field(repr=False)
    viewer_jwt: str = field(repr=False)
    pin: str = field(repr=False)
    token_label: str = ""

    def secrets(self) -> list[str]:
        return [self.jwt, self.password, self.api_key, self.viewer_jwt, self.pin]


@contextlib.asynccontextmanager
async def provisioning(database_url: str, settings: Settings, module: str, label: str,
                       pin: str) -> AsyncIterator[tuple[Identity, Hsm]]:  # fmt: skip
    """A migrated database and a fresh token (`label`, user PIN `pin`), to provision a test's
    organisations, accounts and users through the same service as the command line."""
    pool = await store.connect(database_url, max_size=4)
    try:
        await store.upgrade(pool)
        with Hsm(module, sessions_per_token=1) as hsm:
            hsm.initialise_token(label, os.urandom(8).hex(), pin)
            yield Identity(pool, settings), hsm
    finally:
        await pool.close()


async def _populate(database_url: str, settings: Settings, module: str, label: str,
                    pin: str, password: str) -> tuple[str, str, str]:  # fmt: skip
    async with provisioning(database_url, settings, module, label, pin) as (identity, hsm):
        await identity.create_organisation("acme")
        account = await identity.create_account("acme", hsm, label, pin, name="treasury")
        await identity.add_user("acme", "alice", "signer", hsm, pin, password)
        await identity.add_user("acme", "victor", "viewer", hsm, pin, password)
        await identity.create_organisation("globex")
        other = await identity.create_account("globex", hsm, label, pin, name="other")
        key = await identity.create_api_key("alice", password)
    return checksum(account.address), checksum(other.address), key.key


async def build_stack(anvil_url: str, database_url: str, softhsm_module: str,
                      upstreams: tuple[str, ...] = (), **overrides: object) -> Stack:  # fmt: skip
    label, pin = random_label("stack"), os.urandom(10).hex()
    password = "pw-" + os.urandom(6).hex()
    settings = Settings(
        upstreams=upstreams or (anvil_url,), database_url=database_url,
        pkcs11_module=softhsm_module, jwt_secret=JWT_SECRET, pbkdf2_iterations=100_000, **overrides,  # type: ignore[arg-type]
    )  # fmt: skip
    address, other, api_key = await _populate(
        database_url, settings, softhsm_module, label, pin, password
    )
    rpc(anvil_url, "anvil_setBalance", [address, hex(10**21)])
    return Stack(
        anvil_url=anvil_url, database_url=database_url, settings=settings, address=address,
        other_address=other, jwt=issue_token(settings, "alice", 3600), password=password,
        api_key=api_key, viewer_jwt=issue_token(settings, "victor", 3600), pin=pin,
        token_label=label,
    )  # fmt: skip


def environment(stack: Stack, softhsm_conf: Path, listen: str) -> dict[str, str]:
    """The environment a user would give `quorum-signer serve` for this stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
    env.update(
        QSIGNER_LISTEN=listen,
        QSIGNER_UPSTREAMS=",".join(stack.settings.upstreams),
        QSIGNER_DATABASE_URL=stack.database_url,
        QSIGNER_JWT_SECRET=JWT_SECRET,
        QSIGNER_PKCS11_MODULE=str(stack.settings.pkcs11_module),
        QSIGNER_LOG_FORMAT="json",
        SOFTHSM2_CONF=str(softhsm_conf),
    )
    return env


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """The app behind a real HTTP server on loopback (base URL) and a client session for it."""
    from aiohttp.test_utils import TestServer

    from proxy.app import create_app

    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield str(server.make_url("")).rstrip("/"), session
    finally:
        await server.close()
