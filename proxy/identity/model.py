"""What provisioning and unlocking share: the values they hand out (principal, account, new API
key), the security events both record (in the audit log), and how both push slow work off the
event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from proxy.audit import AuditEvent, AuditLog

ROLES = ("signer", "viewer", "admin")
SIGNING_ROLES = frozenset({"signer", "admin"})

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user of one organisation, with a role."""

    user_id: str
    organisation_id: int
    organisation: str
    role: str

    @property
    def may_sign(self) -> bool:
        return self.role in SIGNING_ROLES


@dataclass(frozen=True)
class Account:
    address: bytes
    name: str | None
    token_label: str
    token_serial: str
    key_id: bytes


@dataclass(frozen=True)
class NewApiKey:
    key_id: str
    key: str  # shown once


class BlockingWork:
    """PBKDF2 and PKCS#11 work off the event loop (the server passes its bounded executor)."""

    def __init__(self, run_blocking: Callable[..., Awaitable[Any]] | None = None) -> None:
        self._run_blocking = run_blocking

    async def __call__(self, function: Callable[..., T], *args: Any) -> T:
        if self._run_blocking is not None:
            result: T = await self._run_blocking(function, *args)
            return result
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def security_event(audit: AuditLog, conn: asyncpg.Connection, organisation: str | None,
                         user_id: str | None, action: str,
                         detail: dict[str, Any]) -> None:  # fmt: skip
    """Record a security event in the audit log, in the transaction of the change it is about."""
    await audit.append_in(conn, [AuditEvent("security", organisation, user_id, action,
                                            detail=detail)])  # fmt: skip
