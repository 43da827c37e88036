"""Organisations (and their GoQuorum private states), accounts, users (and the accounts each
may use) and API keys: creating, changing and retiring them, and the two lookups the server
makes per request from the row cache (account grants, private states).

Used alike by the command line and the server. Every write that belongs together happens in one
transaction, so bad input leaves no half-written rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import Sequence

import asyncpg

from policy.parse import is_tessera_key
from proxy import logs
from proxy.audit import AuditLog
from proxy.errors import BadInput, Conflict, Forbidden, NotFound
from proxy.identity.credentials import (
    Envelope,
    HsmCredentials,
    associated_data,
    seal_with_password,
    seal_with_secret,
)
from proxy.identity.model import ROLES, Account, BlockingWork, NewApiKey, Principal, security_event
from proxy.identity.rowcache import RowCache
from proxy.identity.unlock import Unlocker
from proxy.nodes.http import http_endpoint
from proxy.nodes.transport import mask_url
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm, Token

# One row for a user's grants (an aggregate answers one row even when there is none), its `id`
# the user's, so that dropping the user's rows from the cache drops these too.
_GRANTS_QUERY = """
    SELECT $1::text AS id,
           coalesce(array_agg(a.address ORDER BY a.id), '{}') AS addresses,
           coalesce(array_agg(a.name ORDER BY a.id), '{}') AS names,
           coalesce(array_agg(a.token_label ORDER BY a.id), '{}') AS token_labels,
           coalesce(array_agg(a.token_serial ORDER BY a.id), '{}') AS token_serials,
           coalesce(array_agg(a.key_id ORDER BY a.id), '{}') AS key_ids
    FROM user_accounts g JOIN accounts a ON a.id = g.account_id
    WHERE g.user_id = $1"""

# An organisation's PSIs in one row, cached by organisation id (NOTIFY `psis:<id>`). `id` is
# NULL so that dropping a user's rows (matched on `id`) never drops these.
_PRIVATE_STATES_QUERY = """
    SELECT NULL::text AS id, coalesce(array_agg(psi ORDER BY psi), '{}') AS psis
    FROM organisation_private_states WHERE organisation_id = $1::text::bigint"""

# Whether any organisation holds a PSI (the deployment runs GoQuorum multi-tenancy), cached
# under `psis:any` (NOTIFY `psis:any` from every `org set-psi`). `$1` is that key, unused.
_ANY_PRIVATE_STATES_KEY = "any"
_ANY_PRIVATE_STATES_QUERY = """
    SELECT NULL::text AS id, $1::text AS key,
           EXISTS (SELECT 1 FROM organisation_private_states) AS held"""

# An organisation's Tessera, cached by organisation id (NOTIFY `tessera:<id>`).
_TESSERA_QUERY = """
    SELECT NULL::text AS id, url, keys
    FROM organisation_tessera WHERE organisation_id = $1::text::bigint"""

# What a GoQuorum PSI may be here: letters, digits and . _ : - (it travels as an HTTP header).
_PSI = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

# How long a check whether a commit that failed went through may take (the database may be gone).
_COMMIT_CHECK_SECONDS = 10.0

_USER_ID = re.compile(r"^[A-Za-z0-9._@+:|-]{1,200}$")


def _accounts_of(row: asyncpg.Record) -> list[Account]:
    """The accounts of a grants row (_GRANTS_QUERY), in the order of their ids."""
    columns = ("addresses", "names", "token_labels", "token_serials", "key_ids")
    return [Account(*fields) for fields in zip(*(row[c] for c in columns), strict=True)]


class Provisioning:
    """Administration of the identity rows (and of keys and PINs in the HSM)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, rows: RowCache,
                 unlocker: Unlocker, blocking: BlockingWork, audit: AuditLog) -> None:  # fmt: skip
        self.pool = pool
        self.audit = audit
        self.settings = settings
        self.rows = rows
        self.unlocker = unlocker
        self._blocking = blocking
        # account_for's lookups, by user: the grants row they were built from, and its
        # accounts by address (rebuilt whenever the row cache hands out another row).
        self._grants: dict[str, tuple[asyncpg.Record | None, dict[bytes, Account]]] = {}

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

    @staticmethod
    async def _lock_organisation(conn: asyncpg.Connection, organisation: str) -> int:
        """The organisation's id, its row locked until the transaction ends. NO KEY UPDATE:
        changes to one organisation take turns without blocking the rows that merely
        reference it (a `user add` meanwhile)."""
        org_id = await conn.fetchval(
            "SELECT id FROM organisations WHERE name = $1 FOR NO KEY UPDATE", organisation
        )
        if org_id is None:
            raise BadInput(f"no organisation named {organisation!r} (create it with `org create`)")
        return int(org_id)

    async def create_account(self, organisation: str, hsm: Hsm, token_label: str, pin: str,
                             name: str | None = None) -> Account:  # fmt: skip
        """A new key pair inside the token, registered for the organisation.

        The name is checked and the row inserted in one transaction that holds the
        organisation's row across the key generation, so two administrators cannot both take a
        name; a key whose registration fails anyway (at the insert or at the commit) is
        destroyed, never left behind.
        """
        taken = BadInput(f"organisation {organisation!r} already has an account named {name!r}")
        made: tuple[Token, Account] | None = None
        committing = False
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                org_id = await self._lock_organisation(conn, organisation)
                if name is not None and await conn.fetchval(
                    "SELECT 1 FROM accounts WHERE organisation_id = $1 AND name = $2",
                    org_id, name,
                ):  # fmt: skip
                    raise taken
                token = await self._blocking(hsm.login, token_label, pin)
                key_id = secrets.token_bytes(16)
                key = await self._blocking(
                    token.generate_key, key_id, name or f"qsigner-{key_id.hex()}"
                )
                account = Account(key.address, name, token.label, token.serial, key_id)
                made = token, account
                await conn.execute(
                    """INSERT INTO accounts (organisation_id, address, name, token_label,
                                             token_serial, key_id)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    org_id, account.address, name, account.token_label, account.token_serial,
                    key_id,
                )  # fmt: skip
                committing = True  # leaving the block commits
        except BaseException as exc:
            if made is None:
                raise
            token, account = made
            registered = await self._registered_anyway(account) if committing else False
            if registered and isinstance(exc, Exception):
                return account  # committed; only the answer to COMMIT was lost
            if registered is not False:  # committed, or nobody can tell: the key stays
                raise
            # The row is not written: the key would be an orphan that no account names.
            await self._blocking(token.destroy_key, account.key_id)
            if isinstance(exc, asyncpg.UniqueViolationError) and name is not None:
                raise taken from None
            raise
        return account

    async def _registered_anyway(self, account: Account) -> bool | None:
        """After a failed COMMIT, whether the account's row was committed all the same (the
        connection may have been lost after the server committed, before it answered); None
        when the database cannot tell. Then the key is kept: a key kept for nothing is only
        clutter, while a key destroyed behind a registered account strands whatever is sent
        to its address."""
        try:
            found = await asyncio.wait_for(self.pool.fetchval(
                "SELECT 1 FROM accounts WHERE key_id = $1 AND token_serial = $2",
                account.key_id, account.token_serial,
            ), _COMMIT_CHECK_SECONDS)  # fmt: skip
        except Exception as exc:
            logs.event("account create: cannot tell whether the account was registered; its "
                       "key is kept", logging.WARNING, error=type(exc).__name__,
                       key_id=account.key_id.hex(), token=account.token_label)  # fmt: skip
            return None
        return found is not None

    async def accounts(self, organisation_id: int) -> list[Account]:
        rows = await self.pool.fetch(
            """SELECT address, name, token_label, token_serial, key_id FROM accounts
               WHERE organisation_id = $1 ORDER BY id""",
            organisation_id,
        )
        return [Account(r["address"], r["name"], r["token_label"], r["token_serial"],
                        r["key_id"]) for r in rows]  # fmt: skip

    async def granted_accounts(self, user_id: str) -> list[Account]:
        """The accounts the user may sign with, from the row cache (NOTIFY `grants:<user>`)."""
        row = await self.rows.row("grants", user_id, _GRANTS_QUERY)
        if row is None:  # pragma: no cover (an aggregate always answers one row)
            return []
        return _accounts_of(row)

    async def account_for(self, principal: Principal, address: bytes) -> Account:
        """The account at `address` if the caller was granted it; refused (4100) otherwise.
        The row comes from the row cache; what was built from it is kept while the cache
        hands out that very row (a change announced drops the row, so a new one is read)."""
        user_id = principal.user_id
        row = await self.rows.row("grants", user_id, _GRANTS_QUERY)
        built = self._grants.get(user_id)
        if built is None or built[0] is not row:
            accounts = {} if row is None else {
                account.address: account for account in reversed(_accounts_of(row))}  # fmt: skip
            built = (row, accounts)
            if len(self._grants) >= self.settings.unlock_cache_size:
                self._grants.clear()
            self._grants[user_id] = built
        account = built[1].get(address)
        if account is None:
            raise Forbidden(f"{checksum(address)} is not an account this caller may use")
        return account

    async def grant_account(self, user_id: str, address: bytes) -> bool:
        """Let the user sign with one more account of their organisation; False if they
        already could."""
        async with self.pool.acquire() as conn, conn.transaction():
            user = await self._user_row(conn, user_id)
            account_id = await self._account_id(conn, user, address)
            granted = await conn.fetchval(
                """INSERT INTO user_accounts (user_id, account_id, organisation_id)
                   VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true""",
                user_id, account_id, user["organisation_id"],
            )  # fmt: skip
            if granted:
                await security_event(self.audit, conn, user["organisation"], user_id,
                                     "account_granted",
                                     {"account": checksum(address)})  # fmt: skip
                await self.rows.notify(conn, "grants", user_id)
        self.rows.forget("grants", user_id)
        return bool(granted)

    async def revoke_account(self, user_id: str, address: bytes) -> None:
        """The user may no longer sign with that account, at once on every replica."""
        async with self.pool.acquire() as conn, conn.transaction():
            user = await self._user_row(conn, user_id)
            account_id = await self._account_id(conn, user, address)
            revoked = await conn.fetchval(
                """DELETE FROM user_accounts WHERE user_id = $1 AND account_id = $2
                   RETURNING true""",
                user_id, account_id,
            )  # fmt: skip
            if not revoked:
                raise BadInput(f"{checksum(address)} is not granted to {user_id!r}")
            await security_event(self.audit, conn, user["organisation"], user_id,
                                 "account_revoked",
                                 {"account": checksum(address)})  # fmt: skip
            await self.rows.notify(conn, "grants", user_id)
        self.rows.forget("grants", user_id)

    async def _user_row(self, conn: asyncpg.Connection, user_id: str) -> asyncpg.Record:
        row = await conn.fetchrow(
            """SELECT u.id, u.organisation_id, o.name AS organisation FROM users u
               JOIN organisations o ON o.id = u.organisation_id WHERE u.id = $1""",
            user_id,
        )
        if row is None:
            raise BadInput(f"no user {user_id!r}")
        return row

    @staticmethod
    async def _account_id(conn: asyncpg.Connection, user: asyncpg.Record, address: bytes) -> int:
        account_id = await conn.fetchval(
            "SELECT id FROM accounts WHERE address = $1 AND organisation_id = $2",
            address, user["organisation_id"],
        )  # fmt: skip
        if account_id is None:
            raise BadInput(f"{checksum(address)} is not an account of organisation "
                           f"{user['organisation']!r}")  # fmt: skip
        return int(account_id)

    # --- private states (GoQuorum multi-tenancy) --------------------------------------------

    async def set_private_states(self, organisation: str, psis: Sequence[str]) -> list[str]:
        """Replace the organisation's PSIs (none: it may use no private state); the sorted set."""
        wanted = sorted(set(psis))
        for psi in wanted:
            if not _PSI.match(psi):
                raise BadInput(f"{psi!r}: a PSI is 1 to 100 letters, digits or . _ : -")
        async with self.pool.acquire() as conn, conn.transaction():
            org_id = await self._lock_organisation(conn, organisation)
            await conn.execute(
                "DELETE FROM organisation_private_states WHERE organisation_id = $1", org_id
            )
            await conn.executemany(
                "INSERT INTO organisation_private_states (organisation_id, psi) VALUES ($1, $2)",
                [(org_id, psi) for psi in wanted],
            )
            await security_event(self.audit, conn, organisation, None, "private_states_set",
                                 {"organisation": organisation, "psis": wanted})  # fmt: skip
            await self.rows.notify(conn, "psis", str(org_id))
            await self.rows.notify(conn, "psis", _ANY_PRIVATE_STATES_KEY)
        self.rows.forget("psis", str(org_id))
        self.rows.forget("psis", _ANY_PRIVATE_STATES_KEY)
        return wanted

    # --- Tessera (GoQuorum private transactions) -----------------------------------------

    async def set_tessera(self, organisation: str, url: str, keys: Sequence[str]) -> list[str]:
        """Set the organisation's Tessera (third-party API URL) and the public keys it owns,
        the first being its default `privateFrom`; the keys as stored."""
        _check_tessera_url(url)
        wanted = list(dict.fromkeys(key.strip() for key in keys))
        for key in wanted:
            if not is_tessera_key(key):
                raise BadInput(f"{key!r} is not a Tessera public key (32 bytes, base64)")
        async with self.pool.acquire() as conn, conn.transaction():
            org_id = await self._lock_organisation(conn, organisation)
            await conn.execute(
                """INSERT INTO organisation_tessera (organisation_id, url, keys)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (organisation_id)
                   DO UPDATE SET url = $2, keys = $3, updated_at = now()""",
                org_id, url, wanted,
            )  # fmt: skip
            await security_event(self.audit, conn, organisation, None, "tessera_set",
                                 {"organisation": organisation, "url": mask_url(url),
                                  "keys": wanted})  # fmt: skip
            await self.rows.notify(conn, "tessera", str(org_id))
        self.rows.forget("tessera", str(org_id))
        return wanted

    async def tessera_of(self, organisation_id: int) -> tuple[str, tuple[str, ...]] | None:
        """The organisation's Tessera URL and keys (default first), or None when it has none."""
        row = await self.rows.row("tessera", str(organisation_id), _TESSERA_QUERY)
        return (row["url"], tuple(row["keys"])) if row is not None else None

    async def private_states(self, organisation_id: int) -> tuple[str, ...]:
        row = await self.rows.row("psis", str(organisation_id), _PRIVATE_STATES_QUERY)
        return tuple(row["psis"]) if row is not None else ()

    async def _multi_tenant(self) -> bool:
        """Whether any organisation holds a PSI: the operator opted into multi-tenancy."""
        row = await self.rows.row("psis", _ANY_PRIVATE_STATES_KEY, _ANY_PRIVATE_STATES_QUERY)
        return bool(row is not None and row["held"])

    async def private_state_for(self, principal: Principal, asked: Sequence[str]) -> str | None:
        """The `Quorum-PSI` to send for this caller: the one asked for if the organisation
        holds it (else 4100), or the organisation's only PSI when none was asked for.

        Fails closed: a node in multi-tenancy mode serves its default PSI to a call without the
        header, and that state may be another organisation's. So an organisation with several
        PSIs must name one, and once any organisation holds PSIs, one that holds none is refused.
        """
        held = await self.private_states(principal.organisation_id)
        if not asked:
            if len(held) == 1:
                return held[0]
            if held:
                raise Forbidden(f"organisation {principal.organisation!r} holds several private "
                                f"states ({', '.join(held)}): name one with the Quorum-PSI "
                                "header")  # fmt: skip
            if await self._multi_tenant():
                raise Forbidden(f"organisation {principal.organisation!r} holds no private state"
                                " on these multi-tenant nodes: an operator must bind one "
                                "(quorum-signer org set-psi)")  # fmt: skip
            return None
        if len(asked) > 1:
            raise Forbidden("give at most one Quorum-PSI header")
        if asked[0] not in held:
            if not held:
                raise Forbidden(f"organisation {principal.organisation!r} may use no private "
                                "state: the Quorum-PSI header is refused")  # fmt: skip
            raise Forbidden(f"organisation {principal.organisation!r} does not hold that "
                            "private state (Quorum-PSI)")  # fmt: skip
        return asked[0]

    # --- users ------------------------------------------------------------------------------

    async def add_user(self, organisation: str, user_id: str, role: str, hsm: Hsm, pin: str,
                       password: str, token_label: str | None = None,
                       accounts: Sequence[bytes] | None = None) -> None:  # fmt: skip
        """Register a user; the token PIN is checked against the token, then stored only
        inside an envelope sealed with the user's password. The user is granted `accounts`,
        or every current account of the organisation on that token when none are named."""
        if not _USER_ID.match(user_id):
            raise BadInput("a user id is 1 to 200 letters, digits or . _ @ + : | -")
        if role not in ROLES:
            raise BadInput(f"role must be one of {', '.join(ROLES)}")
        if not password:
            raise BadInput("the password must not be empty")
        org_id = await self.organisation_id(organisation)
        if await self.pool.fetchval("SELECT 1 FROM users WHERE id = $1", user_id):
            raise BadInput(f"a user {user_id!r} already exists")
        granted = await self.accounts(org_id)
        if accounts is not None:
            by_address = {a.address: a for a in granted}
            for address in accounts:
                if address not in by_address:
                    raise BadInput(f"{checksum(address)} is not an account of organisation "
                                   f"{organisation!r}")  # fmt: skip
            granted = [by_address[address] for address in dict.fromkeys(accounts)]
        labels = sorted({a.token_label for a in granted})
        if token_label is None:
            if len(labels) != 1:
                raise BadInput(
                    f"organisation {organisation!r} has accounts on {len(labels)} tokens: "
                    "name the token with --token-label"
                )
            token_label = labels[0]
        token = await self._blocking(hsm.login, token_label, pin)  # PinIncorrect if wrong
        if accounts is None:  # those the user's token can sign with
            granted = [a for a in granted if a.token_serial == token.serial]
        for account in granted:
            if account.token_serial != token.serial:
                raise BadInput(f"{checksum(account.address)} is on token {account.token_label!r}"
                               f", not on the user's token {token.label!r}")  # fmt: skip
        credentials = HsmCredentials(token.label, token.serial, pin)
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
            except asyncpg.ForeignKeyViolationError:
                raise BadInput(f"no organisation named {organisation!r} (deleted while this "
                               "command ran)") from None  # fmt: skip
            await self._insert_envelope(conn, user_id, "password", None, 1, envelope)
            await conn.executemany(
                """INSERT INTO user_accounts (user_id, account_id, organisation_id)
                   SELECT $1, id, organisation_id FROM accounts WHERE address = $2""",
                [(user_id, account.address) for account in granted],
            )
            await security_event(self.audit, conn, organisation, user_id, "user_added",
                                 {"role": role, "accounts": [checksum(a.address)
                                                             for a in granted]})  # fmt: skip
            await self.rows.notify(conn, "user", user_id)  # a remembered miss ends here
        self.rows.forget("user", user_id)

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
        """A new envelope under `new`. PBKDF2 runs before any row is locked; the write is
        guarded by the envelope version read first, so a change made meanwhile (another
        `user passwd`) is reported instead of being overwritten."""
        if not new:
            raise BadInput("the new password must not be empty")
        current = await self.pool.fetchrow(
            "SELECT id, version FROM credential_envelopes WHERE user_id = $1 AND kind = 'password'",
            user_id,
        )
        if current is None:
            raise BadInput(f"no user {user_id!r}")
        principal, credentials = await self.unlocker.unlock_with_password(user_id, old)
        version = int(current["version"]) + 1
        aad = associated_data(user_id, principal.organisation_id, "password", version)
        envelope, _ = await self._blocking(
            seal_with_password, new, credentials, aad, self.settings.pbkdf2_iterations
        )
        async with self.pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                """UPDATE credential_envelopes SET version = $2, kdf = $3, iterations = $4,
                          salt = $5, nonce = $6, ciphertext = $7, created_at = now()
                   WHERE id = $1 AND version = $8 RETURNING id""",
                current["id"], version, envelope.kdf, envelope.iterations, envelope.salt,
                envelope.nonce, envelope.ciphertext, current["version"],
            )  # fmt: skip
            if updated is None:
                if await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
                    raise BadInput(f"no user {user_id!r} (deleted while this command ran)")
                raise BadInput(f"the password of {user_id!r} changed while this command ran: "
                               "run it again")  # fmt: skip
            await security_event(self.audit, conn, principal.organisation, user_id,
                                 "password_changed", {})  # fmt: skip
            await self.rows.notify(conn, "user", user_id)
        self.rows.forget("user", user_id)

    async def disable_user(self, user_id: str, *, organisation_id: int | None = None,
                           by: str | None = None) -> None:  # fmt: skip
        """The user can no longer sign or read, at once on every replica. `organisation_id`:
        only a user of that organisation (the admin API's caller's); `by`: the admin who did
        it, recorded in the audit row."""
        async with self.pool.acquire() as conn, conn.transaction():
            organisation = await conn.fetchval(
                """UPDATE users u SET status = 'disabled' FROM organisations o
                   WHERE u.id = $1 AND o.id = u.organisation_id
                     AND ($2::bigint IS NULL OR u.organisation_id = $2)
                   RETURNING o.name""",
                user_id, organisation_id,
            )  # fmt: skip
            if organisation is None:
                raise NotFound(f"no user {user_id!r}")
            await security_event(self.audit, conn, organisation, user_id, "user_disabled",
                                 _by(by))  # fmt: skip
            await self.rows.notify(conn, "user", user_id)
        self.rows.forget("user", user_id)

    # --- API keys ---------------------------------------------------------------------------

    async def create_api_key(self, user_id: str, password: str) -> NewApiKey:
        """A key `qsk_<id>_<secret>` that alone authenticates and unlocks; only its hash and
        an envelope sealed under its secret are stored."""
        principal, credentials = await self.unlocker.unlock_with_password(user_id, password)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        aad = associated_data(user_id, principal.organisation_id, f"apikey:{key_id}", 1)
        envelope = seal_with_secret(secret.encode(), credentials, aad)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO api_keys (id, user_id, secret_hash) VALUES ($1, $2, $3)",
                    key_id, user_id, hashlib.sha256(secret.encode()).digest(),
                )  # fmt: skip
            except asyncpg.ForeignKeyViolationError:
                raise BadInput(f"no user {user_id!r} (deleted while this command ran)") from None
            await self._insert_envelope(conn, user_id, "apikey", key_id, 1, envelope)
            await security_event(self.audit, conn, principal.organisation, user_id,
                                 "apikey_created", {"key_id": key_id})  # fmt: skip
            await self.rows.notify(conn, "apikey", key_id)  # a remembered miss ends here
        self.rows.forget("apikey", key_id)
        return NewApiKey(key_id, f"qsk_{key_id}_{secret}")

    async def revoke_api_key(self, key_id: str, *, organisation_id: int | None = None,
                             by: str | None = None) -> None:  # fmt: skip
        """The key no longer authenticates, at once on every replica. `organisation_id` and
        `by` as for `disable_user`."""
        async with self.pool.acquire() as conn, conn.transaction():
            revoked = await conn.fetchrow(
                """UPDATE api_keys k SET revoked_at = now() FROM users u, organisations o
                   WHERE k.id = $1 AND k.revoked_at IS NULL AND u.id = k.user_id
                     AND o.id = u.organisation_id
                     AND ($2::bigint IS NULL OR u.organisation_id = $2)
                   RETURNING k.user_id, o.name AS organisation""",
                key_id, organisation_id,
            )  # fmt: skip
            if revoked is None:
                if organisation_id is not None and await conn.fetchval(
                    """SELECT 1 FROM api_keys k JOIN users u ON u.id = k.user_id
                       WHERE k.id = $1 AND u.organisation_id = $2""", key_id, organisation_id,
                ):  # fmt: skip
                    raise Conflict(f"the API key {key_id!r} is already revoked")
                raise NotFound(f"no active API key with id {key_id!r}")
            await security_event(self.audit, conn, revoked["organisation"], revoked["user_id"],
                                 "apikey_revoked", {"key_id": key_id, **_by(by)})  # fmt: skip
            await self.rows.notify(conn, "apikey", key_id)
        self.rows.forget("apikey", key_id)


def _by(admin: str | None) -> dict[str, str]:
    """What an audit row of a change made through the admin API adds: who made it."""
    return {} if admin is None else {"by": admin, "via": "admin_api"}


def _check_tessera_url(url: str) -> None:
    if http_endpoint(url) is None:
        raise BadInput(f"{mask_url(url)} is not an http(s) URL of a Tessera third-party API")
