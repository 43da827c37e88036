"""Unlocking a user's HSM credentials: opening envelopes with a password or an API key, the
lockout after wrong passwords, the cache of recent unlocks, and the principal behind a JWT."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Generic, TypeVar

import asyncpg
import orjson

from proxy.audit import AuditLog
from proxy.errors import EnvelopeError, LockedOut, RateLimited, Unauthorized
from proxy.identity.credentials import (
    Envelope,
    HsmCredentials,
    associated_data,
    envelope_key,
    open_envelope,
)
from proxy.identity.model import BlockingWork, Principal, security_event
from proxy.identity.rowcache import RowCache
from proxy.settings import Settings

V = TypeVar("V")
_API_KEY = re.compile(r"^qsk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

LOCKED = "too many wrong passwords: the user is locked for a while"

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


def _principal(row: asyncpg.Record) -> Principal:
    return Principal(row["id"], row["organisation_id"], row["organisation"], row["role"])


def _envelope(row: asyncpg.Record) -> Envelope:
    return Envelope(row["kdf"], row["iterations"], row["salt"], row["nonce"], row["ciphertext"])


class SecretCache(Generic[V]):
    """Values opened with a secret (a password, an API key), so that the slow or costly opening
    runs once: PBKDF2 per user and password, HKDF + AES-GCM + JSON per API key.

    Keyed by a MAC (keyed BLAKE2b) under a per-process random key of the secret and what it
    opens (user, envelope id and version): the secret itself is never stored, a guess cannot be
    tested offline against the cache, and a new envelope (`user passwd`) makes old entries
    unreachable. Each entry names its owners ("user:<id>", "apikey:<id>") so that a change to
    one of them drops it. Bounded in size (least recently used goes first) and in time.
    """

    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[bytes, tuple[float, tuple[str, ...], V]] = OrderedDict()

    def _slot(self, parts: tuple[object, ...]) -> bytes:
        try:
            encoded = orjson.dumps(parts)  # every API-key request comes here: orjson's speed
        except TypeError:  # a lone surrogate (a header's undecodable byte) or a huge integer
            encoded = json.dumps(parts).encode()
        # Keyed BLAKE2b is a MAC, in a third of the time of an OpenSSL HMAC-SHA256 per call.
        return hashlib.blake2b(encoded, key=self._key, digest_size=32).digest()

    def get(self, parts: tuple[object, ...]) -> V | None:
        slot = self._slot(parts)
        entry = self._entries.get(slot)
        if entry is None:
            return None
        expires, _, value = entry
        if expires < time.monotonic():
            del self._entries[slot]
            return None
        self._entries.move_to_end(slot)
        return value

    def put(self, parts: tuple[object, ...], value: V, owners: tuple[str, ...]) -> None:
        slot = self._slot(parts)
        self._entries[slot] = (time.monotonic() + self._ttl, owners, value)
        self._entries.move_to_end(slot)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, owner: str | None) -> None:
        """Drop the entries `owner` ("kind:key") owns; everything when None."""
        if owner is None:
            self._entries.clear()
            return
        for slot in [s for s, (_, owners, _) in self._entries.items() if owner in owners]:
            del self._entries[slot]

    def __len__(self) -> int:
        return len(self._entries)


def _encodable(secret: str) -> bool:
    try:
        secret.encode()
    except UnicodeEncodeError:
        return False
    return True


class _Flight:
    """A user's cold unlock in progress in this replica, and how many requests wait on it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0


class Unlocker:
    """Opens users' envelopes (password or API key) and counts wrong passwords."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, rows: RowCache,
                 blocking: BlockingWork, audit: AuditLog) -> None:  # fmt: skip
        self.pool = pool
        self.audit = audit
        self.settings = settings
        self.rows = rows
        self.unlock_cache: SecretCache[HsmCredentials] = SecretCache(
            settings.unlock_cache_seconds, settings.unlock_cache_size
        )
        # A hit stands in for a row read: it lives no longer than a cached row.
        self.api_key_cache: SecretCache[tuple[Principal, HsmCredentials]] = SecretCache(
            settings.row_cache_seconds, settings.unlock_cache_size
        )
        self._blocking = blocking
        self._flights: dict[str, _Flight] = {}
        rows.on_forget(self._forget)

    def _forget(self, kind: str, key: str | None) -> None:
        # Listener lost (key None): API-key hits would answer for rows nobody re-reads. Password
        # hits still pass the user's row (status, lock) before they are served.
        self.api_key_cache.forget(None if key is None else f"{kind}:{key}")
        if kind == "user" and key is not None:
            self.unlock_cache.forget(f"user:{key}")

    async def principal(self, user_id: str) -> Principal:
        """The active user behind a verified JWT, from the row cache, which every replica's
        `user disable` invalidates at once (NOTIFY)."""
        row = await self.rows.row("user", user_id, _USER_UNLOCK_QUERY)
        if row is None or row["status"] != "active":
            raise Unauthorized("unknown or disabled user")
        return _principal(row)

    async def unlock_with_password(self, user_id: str, password: str
                                   ) -> tuple[Principal, HsmCredentials]:  # fmt: skip
        if not _encodable(password):
            # Undecodable bytes in X-Signer-Password: no password opens with them, and the
            # encoding error would otherwise carry the password's characters into the log.
            raise Unauthorized("unknown or disabled user, or wrong password")
        principal, row = await self._unlockable(user_id)
        cached = self.unlock_cache.get((user_id, row["envelope_id"], row["version"], password))
        if cached is not None:
            if row["failed_attempts"]:
                await self._reset_attempts(user_id)
            return principal, cached
        # One cold unlock per user at a time in this replica: a second request with the same
        # password then finds the cache filled, and guesses queue instead of racing the count.
        async with self._single_flight(user_id):
            principal, row = await self._unlockable(user_id)
            cached = self.unlock_cache.get((user_id, row["envelope_id"], row["version"], password))
            if cached is not None:
                return principal, cached
            # The attempt counts as wrong before PBKDF2 gives its verdict, atomically in the
            # database: however many replicas and requests race, at most `lockout_attempts`
            # guesses are ever judged before the lock.
            attempt = await self._reserve_attempt(user_id)
            envelope = _envelope(row)
            aad = associated_data(user_id, row["organisation_id"], "password", row["version"])
            try:
                key = await self._blocking(envelope_key, envelope, password)
            except BaseException:
                # No verdict (PBKDF2 refused as overloaded, the request cancelled): the caller
                # learnt nothing about the password, so the attempt is given back.
                await self._release_attempt(user_id)
                raise
            try:
                credentials = open_envelope(key, envelope, aad)
            except EnvelopeError:
                await self._wrong_password(principal, attempt)
                raise Unauthorized("unknown or disabled user, or wrong password") from None
            # Checked in the database after PBKDF2: a disable or passwd committed while it ran
            # wins. (A later hit passes the user's row again before it is served.)
            await self._right_password(user_id, row["version"])
            self.unlock_cache.put((user_id, row["envelope_id"], row["version"], password),
                                  credentials, owners=(f"user:{user_id}",))  # fmt: skip
            return principal, credentials

    async def _unlockable(self, user_id: str) -> tuple[Principal, asyncpg.Record]:
        row = await self.rows.row("user", user_id, _USER_UNLOCK_QUERY)
        if row is None or row["status"] != "active":
            raise Unauthorized("unknown or disabled user, or wrong password")
        if row["locked_until"] is not None and row["locked_until"] > datetime.now(UTC):
            raise LockedOut(LOCKED)
        return _principal(row), row

    @contextlib.asynccontextmanager
    async def _single_flight(self, user_id: str) -> AsyncIterator[None]:
        """Wait for this user's cold unlock under way in this replica, at most as long as a
        request waits for the database (QSIGNER_DATABASE_TIMEOUT): a slow database or a long
        PBKDF2 queue must not make a user's requests wait for each other without end."""
        flight = self._flights.setdefault(user_id, _Flight())
        flight.waiting += 1
        try:
            try:
                await asyncio.wait_for(flight.lock.acquire(), self.settings.database_timeout)
            except TimeoutError:
                raise RateLimited("this user's first unlock is still under way: try again "
                                  "shortly") from None  # fmt: skip
            try:
                yield
            finally:
                flight.lock.release()
        finally:
            flight.waiting -= 1
            if flight.waiting == 0:
                del self._flights[user_id]

    async def _reserve_attempt(self, user_id: str) -> int:
        """Count one attempt as wrong until proven right; refused while the user is locked or
        as many attempts as the limit are already counted (some still being judged).

        Attempts count "in a row" within QSIGNER_LOCKOUT_SECONDS of each other: a count that
        reached the limit without a lock (its attempts were never judged, e.g. their replica
        died) ends after that long instead of locking the user for good."""
        attempt = await self.pool.fetchval(
            """UPDATE users SET
                   failed_attempts = CASE WHEN coalesce(attempt_at, '-infinity')
                                               < now() - make_interval(secs => $3)
                                          THEN 1 ELSE failed_attempts + 1 END,
                   attempt_at = now()
               WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now())
                 AND (failed_attempts < $2
                      OR coalesce(attempt_at, '-infinity') < now() - make_interval(secs => $3))
               RETURNING failed_attempts""",
            user_id, self.settings.lockout_attempts, float(self.settings.lockout_seconds),
        )  # fmt: skip
        if attempt is None:
            raise LockedOut(LOCKED)
        return int(attempt)

    async def _release_attempt(self, user_id: str) -> None:
        """Give back an attempt counted by `_reserve_attempt` that was never judged."""
        await self.pool.execute(
            """UPDATE users SET failed_attempts = greatest(failed_attempts - 1, 0)
               WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now())""",
            user_id,
        )

    async def _right_password(self, user_id: str, version: int) -> None:
        """Clear the count (ours included); refused if, while we judged, a lock was set, the
        user was disabled, or the password changed (the envelope we opened is no longer theirs)."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchrow(
                """UPDATE users u SET failed_attempts = 0
                   FROM credential_envelopes e
                   WHERE u.id = $1 AND e.user_id = u.id AND e.kind = 'password'
                   RETURNING u.status, e.version,
                             u.locked_until IS NOT NULL AND u.locked_until > now() AS locked""",
                user_id,
            )
            if state is None or state["status"] != "active" or state["version"] != version:
                raise Unauthorized("unknown or disabled user, or wrong password")
            if state["locked"]:
                raise LockedOut(LOCKED)
            await self.rows.notify(conn, "attempts", user_id)
        self.rows.forget("attempts", user_id)

    async def _reset_attempts(self, user_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE users SET failed_attempts = 0 WHERE id = $1 AND failed_attempts > 0",
                user_id,
            )
            await self.rows.notify(conn, "attempts", user_id)
        self.rows.forget("attempts", user_id)

    async def _wrong_password(self, principal: Principal, attempt: int) -> None:
        """Record the counted attempt as wrong; the one that reached the limit locks the user
        (exactly one does) and leaves an event."""
        user_id, organisation = principal.user_id, principal.organisation
        locks = attempt >= self.settings.lockout_attempts
        async with self.pool.acquire() as conn, conn.transaction():
            # The user's row first, the audit chain's lock last (held until commit), in the
            # order every other change takes them: never two transactions waiting crosswise.
            if locks:
                await conn.execute(
                    """UPDATE users SET failed_attempts = 0,
                              locked_until = now() + make_interval(secs => $2) WHERE id = $1""",
                    user_id, float(self.settings.lockout_seconds),
                )  # fmt: skip
            await security_event(self.audit, conn, organisation, user_id, "wrong_password",
                                 {"attempts": attempt})  # fmt: skip
            if locks:
                await security_event(self.audit, conn, organisation, user_id, "lockout",
                                     {"seconds": self.settings.lockout_seconds})  # fmt: skip
            await self.rows.notify(conn, "attempts", user_id)
        self.rows.forget("attempts", user_id)

    async def unlock_with_api_key(self, api_key: str) -> tuple[Principal, HsmCredentials]:
        match = _API_KEY.match(api_key)
        if match is None:
            raise Unauthorized("invalid API key")
        key_id, secret = match.group(1), match.group(2).encode()
        # Served only while changes reach this replica: the rows it stands for would be read.
        cached = self.api_key_cache.get((api_key,)) if self.rows.listening else None
        if cached is not None:
            return cached
        generation = self.rows.generation
        row = await self.rows.row("apikey", key_id, _API_KEY_UNLOCK_QUERY)
        if (
            row is None
            or not hmac.compare_digest(row["secret_hash"], hashlib.sha256(secret).digest())
            or row["revoked_at"] is not None
            or row["status"] != "active"
        ):
            raise Unauthorized("invalid, revoked or disabled API key")
        principal = _principal(row)
        envelope = _envelope(row)
        aad = associated_data(row["id"], row["organisation_id"], f"apikey:{key_id}",
                              row["version"])  # fmt: skip
        try:
            credentials = open_envelope(envelope_key(envelope, secret), envelope, aad)
        except EnvelopeError:
            raise Unauthorized("invalid, revoked or disabled API key") from None
        if self.rows.listening and generation == self.rows.generation:
            self.api_key_cache.put(
                (api_key,),
                (principal, credentials),
                owners=(f"apikey:{key_id}", f"user:{principal.user_id}"),
            )
        return principal, credentials
