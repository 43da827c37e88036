"""The admin API's reads, each scoped to one organisation, and its cursors.

A cursor is the sort key of the last item of a page, as base64url JSON: opaque to callers,
checked when it comes back (a cursor that does not decode is bad input). The queries read
without taking any lock the signing path waits for.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from proxy.errors import BadInput

_BAD_CURSOR = "the cursor is not one this API gave: ask again without it"


def encode_cursor(*key: Any) -> str:
    text = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in key],
                      separators=(",", ":"))  # fmt: skip
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kinds: Sequence[type]) -> list[Any] | None:
    """The key a cursor holds, each part of the kind given (datetime, int, str); None for no
    cursor; BadInput for a cursor this API did not give."""
    if cursor is None:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, list) or len(parts) != len(kinds):
            raise ValueError
        key: list[Any] = []
        for part, kind in zip(parts, kinds, strict=True):
            if kind is datetime:
                moment = datetime.fromisoformat(part)
                if moment.tzinfo is None:
                    raise ValueError
                key.append(moment)
            elif kind is int and isinstance(part, int) and not isinstance(part, bool):
                key.append(part)
            elif kind is str and isinstance(part, str):
                key.append(part)
            else:
                raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadInput(_BAD_CURSOR) from None
    return key


def like_literal(text: str) -> str:
    """`text` matched literally inside a LIKE pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


ACCOUNTS = """
    SELECT a.id, a.address, a.name, a.token_label,
           (SELECT count(*) FROM user_accounts g WHERE g.account_id = a.id) AS users,
           l.next_nonce, l.mined_count,
           (SELECT count(*) FROM ledger_transactions t
             WHERE t.chain_id = $2 AND t.account = a.address
               AND t.state IN ('reserved', 'signed', 'sent')) AS in_flight,
           (SELECT min(t.nonce) FROM ledger_transactions t
             WHERE t.chain_id = $2 AND t.account = a.address
               AND t.state IN ('reserved', 'signed', 'sent')) AS lowest_in_flight,
           (SELECT count(*) FROM ledger_holes h
             WHERE h.chain_id = $2 AND h.account = a.address) AS holes,
           m.nonce AS last_mined_nonce, m.mined_at AS last_mined_at
      FROM accounts a
      LEFT JOIN ledger_accounts l ON l.chain_id = $2 AND l.account = a.address
      LEFT JOIN LATERAL (
           SELECT t.nonce, t.mined_at FROM ledger_transactions t
            WHERE t.chain_id = $2 AND t.account = a.address AND t.state = 'mined'
            ORDER BY t.nonce DESC LIMIT 1) m ON true
     WHERE a.organisation_id = $1 AND ($3::bigint IS NULL OR a.id > $3)
       AND ($4::bytea IS NULL OR a.address = $4)
     ORDER BY a.id
     LIMIT $5"""

TRANSACTIONS = """
    SELECT t.id, t.tx_hash, t.account, t.nonce, t.state, t.kind, t.user_id, t.request_id, t.node,
           t.block_number, t.receipt_status, t.reason, t.send_attempts,
           t.private_args IS NOT NULL AS private, t.created_at, t.signed_at, t.sent_at,
           t.mined_at
      FROM ledger_transactions t
     WHERE t.chain_id = $1
       AND t.account IN (SELECT address FROM accounts WHERE organisation_id = $2)
       AND ($3::bytea IS NULL OR t.account = $3)
       AND ($4::text IS NULL OR t.user_id = $4)
       AND ($5::text IS NULL OR t.state = $5)
       AND ($6::timestamptz IS NULL OR t.created_at >= $6)
       AND ($7::timestamptz IS NULL OR t.created_at < $7)
       AND ($8::timestamptz IS NULL OR (t.created_at, t.id) < ($8, $9::bigint))
     ORDER BY t.created_at DESC, t.id DESC
     LIMIT $10"""

TRANSACTION_BY_HASH = """
    SELECT t.id, t.tx_hash, t.account, t.nonce, t.state, t.kind, t.user_id, t.request_id, t.node,
           t.block_number, t.receipt_status, t.reason, t.send_attempts,
           t.private_args IS NOT NULL AS private, t.created_at, t.signed_at, t.sent_at,
           t.mined_at
      FROM ledger_transactions t
     WHERE t.tx_hash = $1
       AND t.account IN (SELECT address FROM accounts WHERE organisation_id = $2)
     ORDER BY t.state IN ('released', 'replaced'), t.created_at DESC, t.id DESC"""

# The audit rows of a transaction: its request's decision and what followed, found by request
# id or hash in the organisation's chain, from a little before the ledger row was made to a
# little after it was mined (or now): a range of the `at` index, not the whole chain.
TRANSACTION_EVENTS = """
    SELECT seq, at, hash, content FROM audit_log
     WHERE chain = $1 AND at >= $2::timestamptz - interval '5 minutes'
       AND at <= $5::timestamptz + interval '5 minutes'
       AND (content LIKE $3 OR ($4::text IS NOT NULL AND content LIKE $4))
     ORDER BY seq
     LIMIT 200"""

# `pending` shows those still waiting (not past their expiry); `expired` adds those that went
# past it undecided (the database marks them only when the requester asks again).
APPROVALS = """
    SELECT a.id, a.state, a.requester, a.method, a.rule, a.policy_version, a.needed, a.summary,
           a.created_at, a.expires_at, a.decided_at, a.used_at, a.expires_at <= now() AS expired,
           coalesce((SELECT json_agg(json_build_object('user', v.user_id, 'vote', v.vote,
                                                       'at', v.at) ORDER BY v.at)
                       FROM approval_votes v WHERE v.approval_id = a.id), '[]') AS votes
      FROM approvals a
     WHERE a.organisation_id = $1
       AND ($2::text IS NULL
            OR ($2 = 'pending' AND a.state = 'pending' AND a.expires_at > now())
            OR ($2 = 'expired' AND (a.state = 'expired'
                                    OR (a.state = 'pending' AND a.expires_at <= now())))
            OR ($2 NOT IN ('pending', 'expired') AND a.state = $2))
       AND ($3::timestamptz IS NULL OR (a.created_at, a.id) < ($3, $4::text))
     ORDER BY a.created_at DESC, a.id DESC
     LIMIT $5"""

APPROVAL = """
    SELECT a.id, a.state, a.requester, a.method, a.rule, a.policy_version, a.needed, a.summary,
           a.created_at, a.expires_at, a.decided_at, a.used_at, a.expires_at <= now() AS expired,
           coalesce((SELECT json_agg(json_build_object('user', v.user_id, 'vote', v.vote,
                                                       'at', v.at) ORDER BY v.at)
                       FROM approval_votes v WHERE v.approval_id = a.id), '[]') AS votes
      FROM approvals a WHERE a.id = $1 AND a.organisation_id = $2"""

# The decision that held the request (its facts as the gate saw them), appended as the approval
# was made.
HELD_DECISION = """
    SELECT content FROM audit_log
     WHERE chain = $1 AND at BETWEEN $2::timestamptz - interval '1 minute'
                                 AND $2::timestamptz + interval '1 minute'
       AND content LIKE $3
     ORDER BY seq LIMIT 1"""

AUDIT_PAGE = """
    SELECT seq, at, hash, content FROM audit_log
     WHERE chain = $1
       AND ($2::text IS NULL OR (content::jsonb ->> 'kind') = $2)
       AND ($3::timestamptz IS NULL OR at >= $3)
       AND ($4::timestamptz IS NULL OR at < $4)
       AND ($5::bigint IS NULL OR seq < $5)
     ORDER BY seq DESC
     LIMIT $6"""

USERS = """
    SELECT u.id, u.role, u.status, u.locked_until, u.created_at,
           coalesce((SELECT array_agg(a.address ORDER BY a.id) FROM user_accounts g
                       JOIN accounts a ON a.id = g.account_id WHERE g.user_id = u.id),
                    '{}') AS accounts,
           (SELECT count(*) FROM api_keys k
             WHERE k.user_id = u.id AND k.revoked_at IS NULL) AS api_keys
      FROM users u
     WHERE u.organisation_id = $1 AND ($2::text IS NULL OR u.id > $2)
       AND ($3::text IS NULL OR u.id = $3)
     ORDER BY u.id
     LIMIT $4"""

API_KEYS = """
    SELECT k.id, k.user_id, k.created_at, k.revoked_at
      FROM api_keys k JOIN users u ON u.id = k.user_id
     WHERE u.organisation_id = $1
       AND ($2::text IS NULL OR k.user_id = $2)
       AND ($3::boolean IS NULL OR (k.revoked_at IS NOT NULL) = $3)
       AND ($4::timestamptz IS NULL OR (k.created_at, k.id) < ($4, $5::text))
     ORDER BY k.created_at DESC, k.id DESC
     LIMIT $6"""

POLICY = """
    SELECT version, source, installed_at, installed_by FROM policy_versions
     WHERE organisation_id = $1 ORDER BY version DESC LIMIT 1"""
