"""The admin API under test: a stack whose organisation has admins (and another organisation
with its own admin), and a client that calls /admin/api/ as a console or a script would."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from signer.pkcs11 import Hsm
from tests.support.stack import Stack, build_stack

ADMIN_PASSWORD = "admin-pw-" + "k" * 10
# A policy that holds transfers above 1000 wei for one admin's approval (an hour to decide).
HOLD_BIG = """
    version: 1
    default: allow
    rules:
      - name: big-transfers
        action: hold
        match: {value: {gt: 1000}}
    approvals: {approvers: 1, expire: 1h}
    """


@dataclass
class Admins:
    """acme's admins ada and bob, globex's admin gina: JWTs and API keys."""

    stack: Stack
    jwt: dict[str, str] = field(repr=False)
    api_key: dict[str, str] = field(repr=False)

    def secrets(self) -> list[str]:
        return [*self.stack.secrets(), ADMIN_PASSWORD, *self.jwt.values(), *self.api_key.values()]


async def admin_stack(anvil_url: str, database_url: str, module: str,
                      **overrides: object) -> Admins:  # fmt: skip
    stack = await build_stack(anvil_url, database_url, module, **overrides)
    pool = await store.connect(database_url, max_size=2)
    keys: dict[str, str] = {}
    try:
        identity = Identity(pool, stack.settings)
        with Hsm(module, sessions_per_token=1) as hsm:
            for org, name in (("acme", "ada"), ("acme", "bob"), ("globex", "gina")):
                await identity.add_user(org, name, "admin", hsm, stack.pin, ADMIN_PASSWORD,
                                        token_label=stack.token_label)  # fmt: skip
                keys[name] = (await identity.create_api_key(name, ADMIN_PASSWORD)).key
        await identity.audit.close()
    finally:
        await pool.close()
    tokens = {name: issue_token(stack.settings, name, 3600)
              for name in ("ada", "bob", "gina", "alice", "victor")}  # fmt: skip
    return Admins(stack, tokens, keys)


@dataclass
class AdminClient:
    url: str
    session: aiohttp.ClientSession
    credential: str = field(repr=False)
    password: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.credential}"}
        if self.password is not None:
            headers["X-Signer-Password"] = self.password
        return headers

    def as_(self, credential: str, password: str | None = None) -> AdminClient:
        return AdminClient(self.url, self.session, credential, password)

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:  # fmt: skip
        data: Any = raw if raw is not None else (
            None if body is None else json.dumps(body).encode())  # fmt: skip
        sent = {**self.headers(), **(headers or {})}
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
            if len(data) > 1024 * 1024:
                data = io.BytesIO(data)  # aiohttp warns on large raw bodies
        async with self.session.request(method, f"{self.url}/admin/api{path}", params=params,
                                        data=data, headers=sent) as response:  # fmt: skip
            text = await response.read()
            if response.content_type == "application/json":
                return response.status, json.loads(text)
            return response.status, text

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        return await self.request("GET", path, params=params or None)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        status, answer = await self.request(method, path, **kwargs)
        assert status == 200, (status, answer)
        return answer


def error_of(answer: Any, code: str) -> str:
    """The error's message, after checking the one error shape and its code."""
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    assert answer["error"]["code"] == code, answer
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], answer
    return str(answer["error"]["message"])


@contextlib.asynccontextmanager
async def audit_rows(database_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """acme's audit rows written inside the block (their contents, in order)."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetchval(
            "SELECT coalesce(max(seq), 0) FROM audit_log WHERE chain = 'acme'"
        )
        found: list[dict[str, Any]] = []
        yield found
        rows = await conn.fetch("SELECT content FROM audit_log WHERE seq > $1 AND chain = 'acme' "
                                "ORDER BY seq", before)  # fmt: skip
        found.extend(json.loads(r["content"]) for r in rows)
    finally:
        await conn.close()
