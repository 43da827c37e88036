"""Checkpoints: a chain's head (chain, seq, hash) signed with the HSM audit key and stored in
audit_checkpoints, so that an export kept elsewhere proves later that history was not rewritten.

The audit key is a secp256k1 key on a token (`quorum-signer audit key create`). `serve` holds no
PIN: its `Checkpointer` signs once its process is logged into that token (after a user's unlock
opened it); `quorum-signer audit checkpoint` logs in with the PIN and signs at once. Before
signing, the rows since the last checkpoint are verified: a key never vouches for a broken chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from proxy.audit.records import (
    Checkpoint,
    Row,
    checkpoint_content,
    checkpoint_digest,
    timestamp,
)
from proxy.audit.verify import Break, ChainVerifier, Reference
from proxy.store import BoundedPool
from signer.base import AsyncSigner, checksum
from signer.errors import NotLoggedIn
from signer.pkcs11 import Hsm, HsmKey

log = logging.getLogger(__name__)

_AUDIT_KEY = """SELECT address, token_label, token_serial, key_id FROM audit_keys
                 ORDER BY created_at DESC, address LIMIT 1"""

# Chains whose head is not signed yet and is due: `$1` forces every such head, else `$2` rows
# since the last checkpoint or `$3` seconds since it. The last checkpoint comes along, for the
# rows after it to be verified before the new one is signed.
_DUE = """
    SELECT h.chain, h.seq, h.hash, c.seq AS signed_seq, c.hash AS signed_hash, c.at AS signed_at
      FROM audit_heads h
      LEFT JOIN LATERAL (SELECT seq, hash, at FROM audit_checkpoints c
                          WHERE c.chain = h.chain ORDER BY seq DESC LIMIT 1) c ON true
     WHERE c.seq IS NULL
        OR (h.seq > c.seq AND ($1 OR h.seq - c.seq >= $2
                               OR c.at <= now() - make_interval(secs => $3)))
     ORDER BY h.chain"""

_ROWS = """SELECT chain, seq, at, content, prev_hash, hash FROM audit_log
            WHERE chain = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq"""


@dataclass(frozen=True)
class AuditKey:
    address: bytes
    token_label: str
    token_serial: str
    key_id: bytes


async def audit_key(db: BoundedPool | asyncpg.Pool) -> AuditKey | None:
    """The audit key that signs new checkpoints (the newest registered), if any."""
    row = await db.fetchrow(_AUDIT_KEY)
    if row is None:
        return None
    return AuditKey(row["address"], row["token_label"], row["token_serial"], row["key_id"])


async def create_key(db: asyncpg.Pool, hsm: Hsm, token_label: str, pin: str,
                     blocking: Callable[..., Awaitable[Any]]) -> bytes:  # fmt: skip
    """A new audit key inside the token (private key sensitive, never extractable), registered
    as the key that signs from now on; its address. A key whose registration fails is destroyed."""
    token = await blocking(hsm.login, token_label, pin)
    key_id = secrets.token_bytes(16)
    key: HsmKey = await blocking(token.generate_key, key_id, f"qsigner-audit-{key_id.hex()}")
    try:
        await db.execute(
            """INSERT INTO audit_keys (address, token_label, token_serial, key_id)
               VALUES ($1, $2, $3, $4)""",
            key.address, token.label, token.serial, key_id,
        )  # fmt: skip
    except BaseException:
        await blocking(token.destroy_key, key_id)
        raise
    return key.address


async def sign_heads(db: BoundedPool | asyncpg.Pool, key: AsyncSigner, *, force: bool,
                     rows: int = 1, seconds: float = 0.0,
                     ) -> tuple[list[Checkpoint], Break | None]:  # fmt: skip
    """Sign the head of every chain that is due (with `force`, every head not yet signed) and
    store the checkpoints: those made, and the first problem of a chain left unsigned because
    its rows since its last checkpoint do not verify."""
    made: list[Checkpoint] = []
    broken: Break | None = None
    for due in await db.fetch(_DUE, force, rows, float(seconds)):
        chain, seq, head_hash = due["chain"], due["seq"], due["hash"]
        problem = await _verify_since(db, chain, seq, due["signed_seq"], due["signed_hash"],
                                      due["signed_at"])  # fmt: skip
        if problem is not None:
            broken = broken or problem
            continue
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        content = checkpoint_content(chain, seq, head_hash, now)
        signature = await key.sign_digest_async(checkpoint_digest(content))
        checkpoint = Checkpoint(chain, seq, head_hash, now, key.address, content,
                                signature.to_bytes())  # fmt: skip
        # Two replicas signing the same head at once: one row is enough.
        await db.execute(
            """INSERT INTO audit_checkpoints (chain, seq, hash, at, address, content, signature)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
            chain, seq, head_hash, now, key.address, content, checkpoint.signature,
        )  # fmt: skip
        made.append(checkpoint)
    return made, broken


async def _verify_since(db: BoundedPool | asyncpg.Pool, chain: str, head: int,
                        signed_seq: int | None, signed_hash: bytes | None,
                        signed_at: datetime | None) -> Break | None:  # fmt: skip
    """The rows from the last checkpoint (or seq 1) to `head` verify, that checkpoint's row
    included; the first problem otherwise."""
    references = []
    if signed_seq is not None and signed_hash is not None and signed_at is not None:
        references.append(
            Reference(signed_seq, signed_hash, f"the checkpoint signed at {timestamp(signed_at)}")
        )
    verifier = ChainVerifier(chain, complete=signed_seq is None, references=references)
    # In slices, so that a first checkpoint over a long chain never holds it all in memory.
    start = signed_seq if signed_seq is not None else 1
    while start <= head:
        stop = min(head, start + 4999)
        for record in await db.fetch(_ROWS, chain, start, stop):
            verifier.feed(Row(*record))
        start = stop + 1
    report = verifier.finish()
    if report.broken is None and report.head_seq != head:
        return Break(chain, (report.head_seq or 0) + 1, "missing: the row is not there")
    return report.broken


class Checkpointer:
    """`serve`'s checkpoint signer: every `rows` rows appended here, or every `seconds`, it signs
    the heads that are due, once this process is logged into the audit key's token."""

    def __init__(self, db: BoundedPool | asyncpg.Pool, hsm: Hsm, *, rows: int,
                 seconds: float) -> None:  # fmt: skip
        self.db = db
        self.hsm = hsm
        self.rows = rows
        self.seconds = seconds
        self._appended = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._key: HsmKey | None = None
        self._told_closed = False

    def appended(self, count: int) -> None:
        self._appended += count
        if self._appended >= self.rows:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await task

    async def _run(self) -> None:
        # A head falls due `seconds` after its last checkpoint: look at least that often (and
        # every 10 s at most, for a token logged into meanwhile).
        poll = max(0.5, min(float(self.seconds), 10.0))
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)
            self._wake.clear()
            self._appended = 0
            try:
                await self.round()
            except Exception as exc:
                log.warning("audit checkpoint failed: %s", type(exc).__name__)

    async def round(self) -> list[Checkpoint]:
        """Sign what is due now; nothing while no audit key is registered or its token is not
        open in this process."""
        key = await self._signer()
        if key is None:
            if not self._told_closed and await audit_key(self.db) is not None:
                # Said once: checkpoints wait until a user of the audit key's token unlocks in
                # this process (or `audit checkpoint` signs from the command line).
                log.warning("audit checkpoints wait: this process is not logged into the audit "
                            "key's token yet")  # fmt: skip
                self._told_closed = True
            return []
        self._told_closed = False
        made, broken = await sign_heads(self.db, key, force=False, rows=self.rows,
                                        seconds=self.seconds)  # fmt: skip
        if broken is not None:
            log.error("the audit log is broken, a chain's head is not signed: %s", broken)
        return made

    async def _signer(self) -> HsmKey | None:
        registered = await audit_key(self.db)
        if registered is None:
            return None
        if self._key is not None and self._key.address == registered.address:
            return self._key
        try:
            token = self.hsm.token(registered.token_label)
        except NotLoggedIn:
            return None
        if token.serial != registered.token_serial:
            log.warning("the audit key's token %r has another serial here", token.label)
            return None
        key: HsmKey = await token.executor.run(
            functools.partial(token.key, key_id=registered.key_id)
        )
        if key.address != registered.address:
            log.warning("the audit key on token %r is not %s", token.label,
                        checksum(registered.address))  # fmt: skip
            return None
        self._key = key
        return key
