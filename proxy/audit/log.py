"""Appending to the audit log: `append` (durable on return, concurrent appends of a chain share
one statement: group commit) and `append_in` (in a transaction the caller holds). Both go
through the database function `audit_append`, which extends a chain under its advisory lock.

The checkpoint signer rides along: once enough rows were appended here, or enough time passed,
it signs each chain's head with the HSM audit key (proxy/audit/checkpoints.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from proxy.audit.checkpoints import Checkpointer
from proxy.audit.records import AuditEvent, content_of
from proxy.store import BoundedPool
from signer.pkcs11 import Hsm

log = logging.getLogger(__name__)

# Statements of one chain under way at once: a batch forms while one is in flight, and a second
# overlaps its round trip with the first (they take turns on the chain's lock all the same).
_FLUSHES_PER_CHAIN = 2
# Rows per statement, at most: a burst is cut into statements of this size.
_MAX_BATCH = 2000

_APPEND = "SELECT seq, hash FROM audit_append($1, $2::timestamptz[], $3::text[])"


@dataclass
class _Pending:
    at: datetime
    content: str
    done: asyncio.Future[None]


class AuditLog:
    """The audit log of one process (a replica or a command), over its database pool."""

    def __init__(self, db: BoundedPool | asyncpg.Pool, *, hsm: Hsm | None = None,
                 checkpoint_rows: int = 1000, checkpoint_seconds: float = 60) -> None:  # fmt: skip
        """With `hsm` (the server's), `start()` runs the checkpoint signer too."""
        self.db = db
        self._queues: dict[str, list[_Pending]] = {}
        self._flushing: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.checkpointer = None if hsm is None else Checkpointer(
            db, hsm, rows=checkpoint_rows, seconds=checkpoint_seconds)  # fmt: skip
        # Told how many rows each statement committed: the checkpoint signer counts them.
        self._on_appended: Callable[[int], None] | None = (
            None if self.checkpointer is None else self.checkpointer.appended
        )

    async def start(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.start()

    @staticmethod
    def _prepare(event: AuditEvent) -> tuple[datetime, str]:
        # Milliseconds, like the content's text, so that the `at` column equals it exactly.
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        return now, content_of(event, now)

    async def append(self, event: AuditEvent) -> None:
        """Record `event`; on return it is committed. Raises what the database raised (the
        event may then be recorded or not: a commit whose answer was lost). A caller cancelled
        while waiting does not take its event back: the batch it joined is written."""
        if self._closed:
            raise RuntimeError("the audit log is closed")
        at, content = self._prepare(event)  # a bad event fails here, alone
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_outcome)
        chain = event.chain
        self._queues.setdefault(chain, []).append(_Pending(at, content, done))
        if self._flushing.get(chain, 0) < _FLUSHES_PER_CHAIN:
            self._flushing[chain] = self._flushing.get(chain, 0) + 1
            task = asyncio.create_task(self._flush(chain), name=f"audit-append-{chain}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The statement runs on its own task: a caller that stops waiting does not cut a
        # batch that other callers share.
        await asyncio.shield(done)

    async def append_in(self, conn: asyncpg.Connection, events: Sequence[AuditEvent]) -> None:
        """Record `events` in the transaction `conn` holds (READ COMMITTED, the default): they
        commit or roll back with it. The chains' locks are held until it ends, so keep the
        transaction short after this call."""
        by_chain: dict[str, list[tuple[datetime, str]]] = {}
        for event in events:
            by_chain.setdefault(event.chain, []).append(self._prepare(event))
        # Chains in a fixed order: two transactions appending to the same two chains never
        # wait for each other's lock crosswise.
        for chain in sorted(by_chain):
            rows = by_chain[chain]
            await conn.fetch(_APPEND, chain, [at for at, _ in rows], [c for _, c in rows])
        if self._on_appended is not None and events:
            self._on_appended(len(events))

    async def _flush(self, chain: str) -> None:
        try:
            while self._queues.get(chain):
                queue = self._queues[chain]
                batch, self._queues[chain] = queue[:_MAX_BATCH], queue[_MAX_BATCH:]
                try:
                    await self.db.fetch(_APPEND, chain, [p.at for p in batch],
                                        [p.content for p in batch])  # fmt: skip
                except BaseException as exc:
                    for pending in batch:
                        if not pending.done.done():
                            pending.done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_result(None)
                if self._on_appended is not None:
                    self._on_appended(len(batch))
        finally:
            self._flushing[chain] -= 1
            if not self._flushing[chain]:
                del self._flushing[chain]
                if not self._queues.get(chain):
                    self._queues.pop(chain, None)

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new appends and let those under way finish (for at most `timeout` s)."""
        self._closed = True
        if self.checkpointer is not None:
            await self.checkpointer.close()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()


def _consume_outcome(done: asyncio.Future[None]) -> None:
    """A caller cancelled while its batch ran never reads the outcome: read it here, so that
    asyncio does not report an error nobody retrieved."""
    if not done.cancelled():
        done.exception()
