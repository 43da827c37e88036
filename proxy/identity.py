"""Organisations, accounts, users, API keys, and unlocking a user's HSM credentials.

Used alike by the command line and the server. Every write that belongs together happens in one
transaction, so bad input leaves no half-written rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from proxy.credentials import (
    Envelope,
    HsmCredentials,
    associated_data,
    envelope_key,
    open_envelope,
    seal_with_password,
    seal_with_secret,
)
from proxy.errors import BadInput, EnvelopeError, Forbidden, LockedOut, Unauthorized
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm

ROLES = ("signer", "viewer", "admin")
SIGNING_ROLES = frozenset({"signer", "admin"})
_USER_ID = re.compile(r"^[A-Za-z0-9._@+:|-]{1,200}$")
_API_KEY = re.compile(r"^qsk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

T = TypeVar("T")
CHANNEL = "qsigner_identity"

_USER_UNLOCK_QUERY = """
    SELECT u.id, u.organisation_id, o.name AS organisation, u.role, u.status,
           u.failed_attempts, u.locked_until, e.id AS envelope_id, e.version, e.kdf,
           e.iterations, e.salt, e.nonce, e.ciphertext
    FROM users u
    JOIN organisations o ON o.id = u.organisation_id
    JOIN credential_envelopes e ON e.user_id = u.id AND e.kind = 'password'
    WHERE u.id = $1"""

_API_KEY_UNLOCK_QUERY = """
    SELECT k.secret_hash, k.revoked_at, u.id, u.organisation_id, o.name AS organisation,
           u.role, u.status, e.kdf, e.iterations, e.salt, e.nonce, e.ciphertext, e.version
    FROM api_keys k
    JOIN users u ON u.id = k.user_id
    JOIN organisations o ON o.id = u.organisation_id
    JOIN credential_envelopes e ON e.api_key_id = k.id
    WHERE k.id = $1"""


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


def _envelope(row: asyncpg.Record) -> Envelope:
    return Envelope(row["kdf"], row["iterations"], row["salt"], row["nonce"], row["ciphertext"])


class UnlockCache:
    """Recently unlocked credentials, so that PBKDF2 runs once per user and password.

    Keyed by HMAC-SHA256 under a per-process random key of (user, envelope id and version,
    password): the password itself is never stored, a guess cannot be tested offline against
    the cache, and a new envelope (`user passwd`) makes old entries unreachable. Bounded in size
    (least recently used goes first) and in time.
    """

    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[float, str, HsmCredentials]] = OrderedDict()

    def _slot(self, user_id: str, envelope_id: int, version: int, password: str) -> bytes:
        message = json.dumps([user_id, envelope_id, version, password]).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, user_id: str, envelope_id: int, version: int, password: str
            ) -> HsmCredentials | None:  # fmt: skip
        slot = self._slot(user_id, envelope_id, version, password)
        entry = self._entries.get(slot)
        if entry is None:
            return None
        expires, _, credentials = entry
        if expires < time.monotonic():
            del self._entries[slot]
            return None
        self._entries.move_to_end(slot)
        return credentials

    def put(self, user_id: str, envelope_id: int, version: int, password: str,
            credentials: HsmCredentials) -> None:  # fmt: skip
        slot = self._slot(user_id, envelope_id, version, password)
        self._entries[slot] = (time.monotonic() + self._ttl, user_id, credentials)
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget_user(self, user_id: str) -> None:
        for slot in [s for s, (_, uid, _) in self._entries.items() if uid == user_id]:
            del self._entries[slot]

    def __len__(self) -> int:
        return len(self._entries)


class Identity:
    """The identity service over the database (and the HSM where keys or PINs are involved)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings,
                 run_blocking: Callable[..., Any] | None = None) -> None:  # fmt: skip
        self.pool = pool
        self.settings = settings
        self.unlock_cache = UnlockCache(settings.unlock_cache_seconds, settings.unlock_cache_size)
        self._run_blocking = run_blocking
        # Rows read for authentication, kept only while a LISTEN connection tells us of every
        # change (NOTIFY qsigner_identity from any replica); without one, every check reads.
        self._listener: asyncpg.Connection | None = None
        self._rows: OrderedDict[tuple[str, str], asyncpg.Record] = OrderedDict()
        self._generation = 0

    async def listen(self, dsn: str) -> None:
        """Cache authentication rows, invalidated by NOTIFY from every replica (the server)."""
        self._listener = await asyncpg.connect(dsn)
        await self._listener.add_listener(CHANNEL, self._on_notify)
        self._listener.add_termination_listener(self._on_listener_lost)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        self._forget_rows()
        if listener is not None and not listener.is_closed():
            await listener.close()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, key = payload.partition(":")
        self._forget(kind, key)

    def _forget(self, kind: str, key: str) -> None:
        """Drop what this replica holds about a user or an API key. Called on NOTIFY from any
        replica, and by this one right after its own change commits (the NOTIFY comes later)."""
        self._generation += 1
        for cached in [k for k, row in self._rows.items()
                       if (kind == "user" and row["id"] == key) or k == (kind, key)]:  # fmt: skip
            del self._rows[cached]
        if kind == "user":
            self.unlock_cache.forget_user(key)

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None
        self._forget_rows()

    def _forget_rows(self) -> None:
        self._generation += 1
        self._rows.clear()

    async def _cached_row(self, kind: str, key: str, query: str) -> asyncpg.Record | None:
        listening = self._listener is not None and not self._listener.is_closed()
        if listening and (kind, key) in self._rows:
            return self._rows[(kind, key)]
        generation = self._generation
        row = await self.pool.fetchrow(query, key)
        # Store only if no invalidation arrived while we read (it may concern this row).
        if listening and row is not None and generation == self._generation:
            self._rows[(kind, key)] = row
            while len(self._rows) > self.settings.unlock_cache_size:
                self._rows.popitem(last=False)
        return row

    @staticmethod
    async def _notify(conn: asyncpg.Connection, kind: str, key: str) -> None:
        """Tell every replica (on commit) that rows about this user or API key changed."""
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{kind}:{key}")

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        """PBKDF2 and PKCS#11 work off the event loop (the server passes its bounded executor)."""
        if self._run_blocking is not None:
            result: T = await self._run_blocking(function, *args)
            return result
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    # --- organisations and accounts ---------------------------------------------------------

    async def create_organisation(self, name: str) -> int:
        name = name.strip()
        if not name or len(name) > 200:
            raise BadInput("an organisation name is 1 to 200 characters")
        try:
            org_id: int = await self.pool.fetchval(
                "INSERT INTO organisations (name) VALUES ($1) RETURNING id", name
            )
        except asyncpg.UniqueViolationError:
            raise BadInput(f"an organisation named {name!r} already exists") from None
        return org_id

    async def organisation_id(self, name: str) -> int:
        org_id = await self.pool.fetchval("SELECT id FROM organisations WHERE name = $1", name)
        if org_id is None:
            raise BadInput(f"no organisation named {name!r} (create it with `org create`)")
        return int(org_id)

    async def create_account(self, organisation: str, hsm: Hsm, token_label: str, pin: str,
                             name: str | None = None) -> Account:  # fmt: skip
        """A new key pair inside the token, registered for the organisation."""
        org_id = await self.organisation_id(organisation)
        if name is not None and await self.pool.fetchval(
            "SELECT 1 FROM accounts WHERE organisation_id = $1 AND name = $2", org_id, name
        ):
            raise BadInput(f"organisation {organisation!r} already has an account named {name!r}")
        token = await self._blocking(hsm.login, token_label, pin)
        key_id = secrets.token_bytes(16)
        key = await self._blocking(token.generate_key, key_id, name or f"qsigner-{key_id.hex()}")
        account = Account(key.address, name, token.label, token.serial, key_id)
        await self.pool.execute(
            """INSERT INTO accounts (organisation_id, address, name, token_label, token_serial,
                                     key_id) VALUES ($1, $2, $3, $4, $5, $6)""",
            org_id, account.address, name, account.token_label, account.token_serial, key_id,
        )  # fmt: skip
        return account

    async def accounts(self, organisation_id: int) -> list[Account]:
        rows = await self.pool.fetch(
            """SELECT address, name, token_label, token_serial, key_id FROM accounts
               WHERE organisation_id = $1 ORDER BY id""",
            organisation_id,
        )
        return [Account(r["address"], r["name"], r["token_label"], r["token_serial"],
                        r["key_id"]) for r in rows]  # fmt: skip

    # --- users ------------------------------------------------------------------------------

    async def add_user(self, organisation: str, user_id: str, role: str, hsm: Hsm, pin: str,
                       password: str, token_label: str | None = None) -> None:  # fmt: skip
        """Register a user; the token PIN is checked against the token, then stored only
        inside an envelope sealed with the user's password."""
        if not _USER_ID.match(user_id):
            raise BadInput("a user id is 1 to 200 letters, digits or . _ @ + : | -")
        if role not in ROLES:
            raise BadInput(f"role must be one of {', '.join(ROLES)}")
        if not password:
            raise BadInput("the password must not be empty")
        org_id = await self.organisation_id(organisation)
        if await self.pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id):
            raise BadInput(f"a user {user_id!r} already exists")
        accounts = await self.accounts(org_id)
        labels = sorted({a.token_label for a in accounts})
        if token_label is None:
            if len(labels) != 1:
                raise BadInput(
                    f"organisation {organisation!r} has accounts on {len(labels)} tokens: "
                    "name the token with --token-label"
                )
            token_label = labels[0]
        token = await self._blocking(hsm.login, token_label, pin)  # PinIncorrect if wrong
        credentials = HsmCredentials(
            token.label, token.serial, pin,
            tuple(a.key_id.hex() for a in accounts if a.token_serial == token.serial),
        )  # fmt: skip
        aad = associated_data(user_id, org_id, "password", 1)
        envelope, _ = await self._blocking(
            seal_with_password, password, credentials, aad, self.settings.pbkdf2_iterations
        )
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO users (id, organisation_id, role) VALUES ($1, $2, $3)",
                    user_id, org_id, role,
                )  # fmt: skip
            except asyncpg.UniqueViolationError:
                raise BadInput(f"a user {user_id!r} already exists") from None
            await self._insert_envelope(conn, user_id, "password", None, 1, envelope)

    async def _insert_envelope(self, conn: asyncpg.Connection, user_id: str, kind: str,
                               api_key_id: str | None, version: int,
                               envelope: Envelope) -> None:  # fmt: skip
        await conn.execute(
            """INSERT INTO credential_envelopes (user_id, kind, api_key_id, version, kdf,
                                                 iterations, salt, nonce, ciphertext)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            user_id, kind, api_key_id, version, envelope.kdf, envelope.iterations,
            envelope.salt, envelope.nonce, envelope.ciphertext,
        )  # fmt: skip

    async def change_password(self, user_id: str, old: str, new: str) -> None:
        if not new:
            raise BadInput("the new password must not be empty")
        principal, credentials = await self.unlock_with_password(user_id, old)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT id, version FROM credential_envelopes
                   WHERE user_id = $1 AND kind = 'password' FOR UPDATE""",
                user_id,
            )
            version = int(row["version"]) + 1
            aad = associated_data(user_id, principal.organisation_id, "password", version)
            envelope, _ = await self._blocking(
                seal_with_password, new, credentials, aad, self.settings.pbkdf2_iterations
            )
            await conn.execute(
                """UPDATE credential_envelopes SET version = $2, kdf = $3, iterations = $4,
                          salt = $5, nonce = $6, ciphertext = $7, created_at = now()
                   WHERE id = $1""",
                row["id"], version, envelope.kdf, envelope.iterations, envelope.salt,
                envelope.nonce, envelope.ciphertext,
            )  # fmt: skip
            await self._notify(conn, "user", user_id)
        self._forget("user", user_id)

    async def disable_user(self, user_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                "UPDATE users SET status = 'disabled' WHERE id = $1 RETURNING id", user_id
            )
            if updated is None:
                raise BadInput(f"no user {user_id!r}")
            await self._event(conn, user_id, "user_disabled", {})
            await self._notify(conn, "user", user_id)
        self._forget("user", user_id)

    async def _event(self, conn: asyncpg.Connection, user_id: str | None, kind: str,
                     detail: dict[str, Any]) -> None:  # fmt: skip
        await conn.execute(
            "INSERT INTO security_events (user_id, kind, detail) VALUES ($1, $2, $3)",
            user_id, kind, json.dumps(detail),
        )  # fmt: skip

    async def principal(self, user_id: str) -> Principal:
        """The active user behind a verified JWT; read from the database on every request, so
        that `user disable` holds at once on every replica."""
        row = await self._cached_row("user", user_id, _USER_UNLOCK_QUERY)
        if row is None or row["status"] != "active":
            raise Unauthorized("unknown or disabled user")
        return Principal(row["id"], row["organisation_id"], row["organisation"], row["role"])

    # --- unlocking --------------------------------------------------------------------------

    async def unlock_with_password(self, user_id: str, password: str
                                   ) -> tuple[Principal, HsmCredentials]:  # fmt: skip
        row = await self._cached_row("user", user_id, _USER_UNLOCK_QUERY)
        if row is None or row["status"] != "active":
            raise Unauthorized("unknown or disabled user, or wrong password")
        if row["locked_until"] is not None and row["locked_until"] > datetime.now(UTC):
            raise LockedOut("too many wrong passwords: the user is locked for a while")
        principal = Principal(row["id"], row["organisation_id"], row["organisation"], row["role"])
        cached = self.unlock_cache.get(user_id, row["envelope_id"], row["version"], password)
        if cached is not None:
            if row["failed_attempts"]:
                await self._reset_attempts(user_id)
            return principal, cached
        envelope = _envelope(row)
        aad = associated_data(user_id, row["organisation_id"], "password", row["version"])
        try:
            key = await self._blocking(envelope_key, envelope, password)
            credentials = open_envelope(key, envelope, aad)
        except EnvelopeError:
            await self._wrong_password(user_id)
            raise Unauthorized("unknown or disabled user, or wrong password") from None
        if row["failed_attempts"]:
            await self._reset_attempts(user_id)
        self.unlock_cache.put(user_id, row["envelope_id"], row["version"], password, credentials)
        return principal, credentials

    async def _reset_attempts(self, user_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE users SET failed_attempts = 0 WHERE id = $1 AND failed_attempts > 0",
                user_id,
            )
            await self._notify(conn, "user", user_id)
        self._forget("user", user_id)

    async def _wrong_password(self, user_id: str) -> None:
        """Count a wrong password; the Nth in a row locks the user and leaves an event."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE users SET failed_attempts = failed_attempts + 1 WHERE id = $1
                   RETURNING failed_attempts""",
                user_id,
            )
            attempts = int(row["failed_attempts"])
            await self._notify(conn, "user", user_id)
            await self._event(conn, user_id, "wrong_password", {"attempts": attempts})
            if attempts >= self.settings.lockout_attempts:
                await conn.execute(
                    """UPDATE users SET failed_attempts = 0,
                              locked_until = now() + make_interval(secs => $2) WHERE id = $1""",
                    user_id, float(self.settings.lockout_seconds),
                )  # fmt: skip
                await self._event(conn, user_id, "locked_out",
                                  {"seconds": self.settings.lockout_seconds})  # fmt: skip
        self._forget("user", user_id)

    # --- API keys ---------------------------------------------------------------------------

    async def create_api_key(self, user_id: str, password: str) -> NewApiKey:
        """A key `qsk_<id>_<secret>` that alone authenticates and unlocks; only its hash and
        an envelope sealed under its secret are stored."""
        principal, credentials = await self.unlock_with_password(user_id, password)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        aad = associated_data(user_id, principal.organisation_id, f"apikey:{key_id}", 1)
        envelope = seal_with_secret(secret.encode(), credentials, aad)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (id, user_id, secret_hash) VALUES ($1, $2, $3)",
                key_id, user_id, hashlib.sha256(secret.encode()).digest(),
            )  # fmt: skip
            await self._insert_envelope(conn, user_id, "apikey", key_id, 1, envelope)
            await self._event(conn, user_id, "apikey_created", {"key_id": key_id})
        return NewApiKey(key_id, f"qsk_{key_id}_{secret}")

    async def revoke_api_key(self, key_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(
                """UPDATE api_keys SET revoked_at = now()
                   WHERE id = $1 AND revoked_at IS NULL RETURNING user_id""",
                key_id,
            )
            if user_id is None:
                raise BadInput(f"no active API key with id {key_id!r}")
            await self._event(conn, user_id, "apikey_revoked", {"key_id": key_id})
            await self._notify(conn, "apikey", key_id)
        self._forget("apikey", key_id)

    async def unlock_with_api_key(self, api_key: str) -> tuple[Principal, HsmCredentials]:
        match = _API_KEY.match(api_key)
        if match is None:
            raise Unauthorized("invalid API key")
        key_id, secret = match.group(1), match.group(2).encode()
        row = await self._cached_row("apikey", key_id, _API_KEY_UNLOCK_QUERY)
        if (
            row is None
            or not hmac.compare_digest(row["secret_hash"], hashlib.sha256(secret).digest())
            or row["revoked_at"] is not None
            or row["status"] != "active"
        ):
            raise Unauthorized("invalid, revoked or disabled API key")
        principal = Principal(row["id"], row["organisation_id"], row["organisation"], row["role"])
        envelope = _envelope(row)
        aad = associated_data(row["id"], row["organisation_id"], f"apikey:{key_id}",
                              row["version"])  # fmt: skip
        try:
            credentials = open_envelope(envelope_key(envelope, secret), envelope, aad)
        except EnvelopeError:
            raise Unauthorized("invalid, revoked or disabled API key") from None
        return principal, credentials

    async def account_for(self, principal: Principal, address: bytes) -> Account:
        """The organisation's account at `address`; refused (4100) for any other address."""
        row = await self.pool.fetchrow(
            """SELECT address, name, token_label, token_serial, key_id FROM accounts
               WHERE address = $1 AND organisation_id = $2""",
            address, principal.organisation_id,
        )  # fmt: skip
        if row is None:
            raise Forbidden(f"{checksum(address)} is not an account this caller may use")
        return Account(row["address"], row["name"], row["token_label"], row["token_serial"],
                       row["key_id"])  # fmt: skip
