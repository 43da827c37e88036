"""The audit formats, pure: an event's canonical content (the JSON text that is hashed), the
chain it belongs to, the hash that links a row to the one before it, and the signed text of a
checkpoint with the check of its signature."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from signer.base import Signature, checksum
from signer.ecdsa import address_of, recover_public_key
from signer.messages import personal_message_digest

KINDS = ("decision", "signed", "security")
NO_ORGANISATION = "-"  # the chain of events that belong to no organisation
GENESIS = bytes(32)  # what the first row of every chain follows


@dataclass(frozen=True)
class AuditEvent:
    """One thing that happened, as the audit log keeps it. `time` is added at append."""

    kind: str  # "decision" | "signed" | "security"
    organisation: str | None
    user: str | None
    action: str  # decision: allow, deny, hold, shadow-deny, shadow-hold; signed: sent, signed,
    # released; security: wrong_password, lockout, user_disabled, apikey_created, ...
    request_id: str | None = None
    account: str | None = None  # checksummed 0x address
    method: str | None = None
    reason: str | None = None
    rule: str | None = None
    policy_version: int | None = None
    tx_hash: str | None = None
    digest: str | None = None  # a message's digest (0x hex)
    nonce: int | None = None
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def chain(self) -> str:
        return self.organisation if self.organisation is not None else NO_ORGANISATION


def canonical(value: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, ASCII only (non-ASCII as \\u escapes, so that any text, even a
    lone surrogate from a caller, has exactly one UTF-8 form)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)  # fmt: skip


def timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with milliseconds: 2026-12-01T10:11:12.345Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> datetime:
    """The inverse of `timestamp` (any ISO-8601 with a zone); ValueError otherwise."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def content_of(event: AuditEvent, moment: datetime) -> str:
    """The canonical content of `event` appended at `moment`. Raises ValueError (TypeError for
    values JSON cannot hold) for an event that cannot be recorded faithfully."""
    if event.kind not in KINDS:
        raise ValueError(f"audit event kind must be one of {', '.join(KINDS)}, not {event.kind!r}")
    if not event.action:
        raise ValueError("an audit event needs an action")
    body: dict[str, Any] = {
        "kind": event.kind,
        "organisation": event.organisation,
        "user": event.user,
        "action": event.action,
        "request_id": event.request_id,
        "account": event.account,
        "method": event.method,
        "reason": event.reason,
        "rule": event.rule,
        "policy_version": event.policy_version,
        "tx_hash": event.tx_hash,
        "digest": event.digest,
        "nonce": event.nonce,
        "detail": dict(event.detail),
        "time": timestamp(moment),
    }
    return canonical(body)


def link(prev_hash: bytes, content: str) -> bytes:
    """A row's hash: SHA-256(prev_hash || content as UTF-8)."""
    return hashlib.sha256(prev_hash + content.encode()).digest()


@dataclass(frozen=True)
class Row:
    """A row of a chain, as stored or exported."""

    chain: str
    seq: int
    at: datetime
    content: str
    prev_hash: bytes
    hash: bytes


CHECKPOINT_TYPE = "quorum-signer audit checkpoint"


def checkpoint_content(chain: str, seq: int, head_hash: bytes, moment: datetime) -> str:
    """The text an audit key signs (as an EIP-191 personal message) for a chain's head: anyone
    can check it with standard tools (`cast wallet verify`, ethers' verifyMessage)."""
    return canonical({"type": CHECKPOINT_TYPE, "chain": chain, "seq": seq,
                      "hash": "0x" + head_hash.hex(), "time": timestamp(moment)})  # fmt: skip


def checkpoint_digest(content: str) -> bytes:
    return personal_message_digest(content.encode())


@dataclass(frozen=True)
class Checkpoint:
    """A chain's head (chain, seq, hash) signed by an audit key."""

    chain: str
    seq: int
    hash: bytes
    at: datetime
    address: bytes  # the audit key's, as recorded next to the signature
    content: str
    signature: bytes  # 65 bytes r || s || v (v 27 or 28)

    def problem(self, keys: Collection[bytes]) -> str | None:
        """Why this checkpoint proves nothing (None when it does): its text must state its
        chain, seq, hash and time, and its signature recover to `address`, one of `keys`."""
        if self.content != checkpoint_content(self.chain, self.seq, self.hash, self.at):
            return "its signed text does not state its chain, seq, hash and time"
        signer = recover_signer(self.content, self.signature)
        if signer is None or signer != self.address:
            return "its signature does not verify"
        if self.address not in keys:
            return f"it is signed by {checksum(self.address)}, which is not an audit key"
        return None


def recover_signer(content: str, signature: bytes) -> bytes | None:
    """The address whose key signed `content` (EIP-191), or None for a malformed signature."""
    if len(signature) != 65 or signature[64] not in (27, 28):
        return None
    parsed = Signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64],
                       "big"), signature[64] - 27)  # fmt: skip
    try:
        return address_of(recover_public_key(checkpoint_digest(content), parsed))
    except ValueError:
        return None
