"""Identity: who may call and with which HSM credentials. `provisioning` administers the rows,
`unlock` opens envelopes (lockout, unlock cache), `rowcache` keeps authentication rows fresh by
NOTIFY, `auth` verifies JWTs, `credentials` seals and opens envelopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from proxy.audit import AuditLog
from proxy.identity.model import ROLES, SIGNING_ROLES, Account, BlockingWork, NewApiKey, Principal
from proxy.identity.provisioning import Provisioning
from proxy.identity.rowcache import RowCache
from proxy.identity.unlock import Unlocker
from proxy.settings import Settings

__all__ = ["ROLES", "SIGNING_ROLES", "Account", "Identity", "NewApiKey", "Principal"]


class Identity:
    """The three identity services over one pool, wired together; callers use its methods."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings,
                 run_blocking: Callable[..., Awaitable[Any]] | None = None,
                 audit: AuditLog | None = None) -> None:  # fmt: skip
        self.pool = pool
        self.settings = settings
        blocking = BlockingWork(run_blocking)
        # Security events go into the audit log in the transaction of the change; a command's
        # Identity gets a log over its own pool.
        self.audit = audit if audit is not None else AuditLog(pool)
        self.rows = RowCache(pool, settings.unlock_cache_size, settings.row_cache_seconds)
        self.unlocker = Unlocker(pool, settings, self.rows, blocking, self.audit)
        self.provisioning = Provisioning(pool, settings, self.rows, self.unlocker, blocking,
                                         self.audit)  # fmt: skip
        # The operations callers use, by their old names (one object to pass around).
        self.listen = self.rows.listen
        self.close = self.rows.close
        self.principal = self.unlocker.principal
        self.unlock_with_password = self.unlocker.unlock_with_password
        self.unlock_with_api_key = self.unlocker.unlock_with_api_key
        provisioning = self.provisioning
        self.create_organisation = provisioning.create_organisation
        self.organisation_id = provisioning.organisation_id
        self.create_account = provisioning.create_account
        self.accounts = provisioning.accounts
        self.account_for = provisioning.account_for
        self.granted_accounts = provisioning.granted_accounts
        self.grant_account = provisioning.grant_account
        self.revoke_account = provisioning.revoke_account
        self.set_private_states = provisioning.set_private_states
        self.private_state_for = provisioning.private_state_for
        self.set_tessera = provisioning.set_tessera
        self.tessera_of = provisioning.tessera_of
        self.add_user = provisioning.add_user
        self.change_password = provisioning.change_password
        self.disable_user = provisioning.disable_user
        self.create_api_key = provisioning.create_api_key
        self.revoke_api_key = provisioning.revoke_api_key
