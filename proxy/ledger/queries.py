"""What the nonce ledger knows of transactions, read for people (`quorum-signer tx show|list`).

Read-only: these queries never take a lock the ledger's writers wait for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from proxy.errors import BadInput

Database: TypeAlias = "asyncpg.Pool | asyncpg.Connection"

# The states a ledger row goes through (proxy/ledger/nonces.py draws the machine).
STATES = ("reserved", "signed", "sent", "mined", "released", "replaced")


@dataclass(frozen=True)
class LedgerTransaction:
    """One row of the ledger: a nonce of an account, and how far its transaction got."""

    chain_id: int
    account: bytes
    nonce: int
    state: str
    kind: str  # send | sign | fill
    tx_hash: bytes | None  # None while only reserved
    user_id: str | None
    request_id: str | None
    node: str | None  # the node it was last sent to, masked as in /readyz
    block_number: int | None
    receipt_status: int | None  # 1 or 0, once mined
    reason: str | None  # why it was released or replaced
    send_attempts: int
    created_at: datetime
    signed_at: datetime | None
    sent_at: datetime | None
    mined_at: datetime | None
    private_args: str | None  # a GoQuorum private transaction's recipients (JSON), else None


def _row(record: Any) -> LedgerTransaction:
    return LedgerTransaction(
        **{field.name: record[field.name] for field in fields(LedgerTransaction)}
    )


async def _fetch(db: Database, sql: str, *args: object) -> list[LedgerTransaction]:
    try:
        records = await db.fetch(sql, *args)
    except asyncpg.UndefinedTableError:
        raise BadInput(
            "this database has no nonce ledger yet: run `quorum-signer db upgrade` "
            "(or check QSIGNER_DATABASE_URL)"
        ) from None
    return [_row(record) for record in records]


async def transactions_by_hash(db: Database, tx_hash: bytes) -> list[LedgerTransaction]:
    """Every row holding `tx_hash`: the live one first (there is at most one), then rows that
    gave their nonce up (the same bytes stored again after a refusal), newest first. Empty if
    the ledger does not know the hash."""
    # Two halves, each answered by its partial index (ledger_hash_once, ledger_released_hash).
    return await _fetch(
        db,
        """
        SELECT chain_id, account, nonce, state, kind, tx_hash, user_id, request_id, node,
               block_number, receipt_status, reason, send_attempts, created_at, signed_at,
               sent_at, mined_at, private_args
          FROM ledger_transactions
         WHERE id IN (SELECT id FROM ledger_transactions
                       WHERE tx_hash = $1 AND state <> 'released'
                      UNION ALL
                      SELECT id FROM ledger_transactions
                       WHERE tx_hash = $1 AND state = 'released')
         ORDER BY state IN ('released', 'replaced'), created_at DESC, id DESC""",
        tx_hash,
    )


async def recent_transactions(db: Database, *, account: bytes | None = None,
                              state: str | None = None, limit: int = 50,
                              ) -> list[LedgerTransaction]:  # fmt: skip
    """The newest `limit` rows, of every chain, optionally of one account and in one state."""
    if state is not None and state not in STATES:
        raise BadInput(f"unknown state {state!r}: one of {', '.join(STATES)}")
    if limit < 1:
        raise BadInput("the limit must be a positive number of transactions")
    return await _fetch(
        db,
        """
        SELECT chain_id, account, nonce, state, kind, tx_hash, user_id, request_id, node,
               block_number, receipt_status, reason, send_attempts, created_at, signed_at,
               sent_at, mined_at, private_args
          FROM ledger_transactions
         WHERE ($1::bytea IS NULL OR account = $1) AND ($2::text IS NULL OR state = $2)
         ORDER BY created_at DESC, id DESC
         LIMIT $3""",
        account,
        state,
        limit,
    )
