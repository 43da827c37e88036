"""The nonce ledger: which nonce each transaction of a managed account gets, kept in PostgreSQL so
that every replica obeys the same rules (proxy/migrations/0004_nonce_ledger.sql holds them).

A transaction's row goes through these states:

    reserved ──sign, store──▶ signed ──send──▶ sent ──receipt──▶ mined (status 1 or 0)
       │                        │  ▲             │
       │ failed before          │  └─resend──────┘ (recovery: same bytes, never a new nonce)
       │ anything left us       │
       ▼                        ▼ the node refused it for sure (or never got it)
    released ◀──────────────────┘
       (its nonce becomes a hole: the next allocation takes it; with a higher nonce already
        sent, a 0-value self-transfer fills it at once)
    signed (eth_signTransaction, bytes handed to the caller and never seen on chain within
        QSIGNER_SIGNED_TX_TIMEOUT) ──▶ replaced (its nonce becomes a hole, then is filled)

- A nonce is reserved (one short statement, the account's row locked for its length only), then
  signed in the HSM, then the signed bytes are stored (a second statement), and only then sent.
  Reserving first, as a committed row, means that two replicas never sign the same nonce (no HSM
  work thrown away under contention) and that a replica killed at any point leaves a row saying
  how far it got: `reserved` (nothing left the process: the nonce may be given again) or
  `signed` (bytes that may be out there: only those very bytes are ever sent again).
- Concurrent requests of a replica share these statements (group commit): one statement reserves
  for every request of an account waiting at that moment, one stores every signature ready and
  carries the "sent" marks of the sends that finished since; so a transaction costs at most two
  round trips alone, and far fewer under load.
- No database lock is held across a node round trip or an HSM call: each statement commits on
  its own.
- A request alone in its account's pipeline (one at a time: a wallet, a script) may sign at the
  nonce its reservation will most likely get (`likely_nonce`) while the reservation runs, so
  that the HSM's time overlaps the round trip. Those bytes are kept only when the reservation
  gives exactly that nonce; otherwise they are dropped unseen (never stored, sent or shown)
  and the request signs at its nonce as above. Only stored bytes are ever sent, so the rules
  above hold as they are; the HSM's work thrown away is at most the one signature of a guess
  that failed (another replica or a hole took it), after which no request guesses until a
  reservation's nonce is the expected one again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import typing
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import Gauge

from proxy.errors import (
    InvalidParams,
    NodeError,
    NoNodeAvailable,
    RateLimited,
    ReservationLost,
    SendOutcomeUnknown,
)
from proxy.ledger.metrics import LedgerMetrics
from proxy.nodes.pool import NodePool
from proxy.store import BoundedPool
from signer.base import AsyncSigner, SignedTransaction, checksum
from signer.transactions import Transaction, sign_transaction_async

log = logging.getLogger(__name__)

# Statements of one kind under way at once (per account for reservations): a batch forms while
# one is in flight, and a few in flight at once overlap their round trips instead of queueing
# every request behind a single one (one at a time held an account near 1 / round-trip time).
_FLUSHES = 4

# The database's own bound on fresh nonces beyond the mined count: none for requests (turn()
# bounds the pipeline); a fill passes 0, so that it only ever takes a hole.
_UNBOUNDED = 2**62


@dataclass(frozen=True)
class Origin:
    """Who asked for a transaction: kept on its row."""

    user_id: str
    org_id: int | None
    request_id: str


@dataclass(frozen=True)
class Idempotency:
    key: str
    digest: bytes  # of the request's parameters: the same key with other parameters is refused


def params_digest(params: Any) -> bytes:
    """A digest of a request's parameters, independent of key order and spacing."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).digest()


@dataclass
class Slot:
    """A nonce held for one transaction (its ledger row)."""

    row_id: int
    account: bytes
    nonce: int
    state: str = "reserved"
    tx_hash: bytes | None = None
    existing: bool = False  # an Idempotency-Key's earlier transaction, not a new reservation
    digest: bytes | None = None
    started: float = field(default_factory=time.perf_counter)
    # A GoQuorum private transaction's eth_sendRawPrivateTransaction arguments (JSON), stored
    # with its bytes for recovery to resend it the same way; None for a public one.
    private_args: str | None = None


@dataclass
class _Ask:
    """What one reservation is for: kept on its row."""

    origin: Origin
    kind: str
    idempotency: Idempotency | None


@dataclass
class _Wanted(_Ask):
    answer: asyncio.Future[Slot | None]


# A node's refusal that means the nonce is taken on chain or in its pool by another transaction
# (someone sent from the account outside the proxy): the nonce is not a hole.
_NONCE_TAKEN = re.compile(r"nonce too low|replacement transaction underpriced|already known|"
                          r"known transaction|already imported", re.IGNORECASE)  # fmt: skip
# Refusals that geth, GoQuorum, Besu and anvil give before a transaction enters any pool: its
# nonce may be given to another transaction. Anything else (a gateway's 5xx, an internal error)
# may have come after the node took it: the outcome is unknown and only these bytes are resent.
_DEFINITE = re.compile(
    r"insufficient funds|intrinsic gas|gas limit|exceeds block gas|transaction underpriced|"
    r"gas price below|less than block base fee|fee cap less than|max fee per gas less than|"
    r"priority fee per gas higher than|invalid sender|invalid signature|invalid chain ?id|"
    r"chain ?id mismatch|only replay-protected|pool is full|txpool is full|nonce too high|"
    r"nonce too far|exceeds the configured cap|oversized data|init ?code size|"
    r"transaction type not supported|tx type not supported|"
    # GoQuorum's private transactions, refused by the node or its Tessera before any pool
    r"transaction is not private|not supported for private transactions|"
    r"recipient not found|privacy metadata|privacy flag", re.IGNORECASE)  # fmt: skip


def refusal_kind(error: NodeError) -> str:
    """'taken' (the nonce went to another transaction), 'definite' (refused before any pool:
    the nonce is free), or 'unknown' (it may have been taken: keep the nonce and these bytes)."""
    if error.http_status >= 500:
        return "unknown"
    if _NONCE_TAKEN.search(error.message):
        return "taken"
    if _DEFINITE.search(error.message):
        return "definite"
    return "unknown"


def resend_call(raw: bytes, private_args: str | None) -> tuple[str, list[Any]]:
    """How stored bytes are sent again: as they were first sent, a GoQuorum private transaction
    with eth_sendRawPrivateTransaction and its recipients (the same Tessera hash: its Tessera
    sends the same payload again), any other with eth_sendRawTransaction."""
    if private_args is None:
        return "eth_sendRawTransaction", ["0x" + raw.hex()]
    return "eth_sendRawPrivateTransaction", ["0x" + raw.hex(), json.loads(private_args)]


def fill_transaction(chain_id: int, account: bytes, nonce: int, gas_price: int) -> Transaction:
    """A 0-value transfer from the account to itself at `nonce`: what closes a hole. Legacy, so
    that one form is accepted by GoQuorum (no EIP-1559) and fee-market chains alike."""
    return Transaction(type=0, chain_id=chain_id, nonce=nonce, gas=21000, to=account, value=0,
                       data=b"", gas_price=gas_price)  # fmt: skip


class _Account:
    """What this replica knows of one account: its chain counts, and requests waiting for nonces."""

    def __init__(self, max_in_flight: int, queued: Gauge, in_flight: Gauge) -> None:
        self.queued = queued  # this account's queue-depth and in-flight gauges (label resolved)
        self.in_flight = in_flight
        self.mined = 0  # the chain's mined transaction count, as last read
        self.pending = 0  # the node's pending count, as last read (a hint)
        self.read_at = float("-inf")
        self.reading: asyncio.Future[tuple[int, int]] | None = None
        self.queue: list[_Wanted] = []
        self.flushing = 0  # reservation statements under way
        self.waiting = 0  # requests in turn(): in the pipeline or waiting for a place
        self.guess: int | None = None  # the nonce the next reservation will likely get
        self.guessed = False  # whether the last reservation got the nonce guessed for it
        self.pipeline = asyncio.Semaphore(max_in_flight)


class Ledger:
    """Nonces of managed accounts, for one chain, shared by every replica through the database."""

    def __init__(self, db: BoundedPool, pool: NodePool, metrics: LedgerMetrics, *,
                 max_in_flight: int, idempotency_ttl: float, counts_max_age: float = 1.0,
                 ) -> None:  # fmt: skip
        self.db = db
        self.pool = pool
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.idempotency_ttl = idempotency_ttl
        self._counts_max_age = counts_max_age
        self._accounts: dict[bytes, _Account] = {}
        self._stores: list[tuple[Slot, SignedTransaction, asyncio.Future[bool]]] = []
        self._sent: list[tuple[int, str]] = []
        self._writing = 0  # store statements under way
        self._wake_writer = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def chain_id(self) -> int:
        return self.pool.chain_id

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._flush_sent_marks(), name="ledger-sent-marks")

    async def close(self) -> None:
        task, self._writer = self._writer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await task
        if self._sent:
            try:
                await self._write([], list(self._sent))
            except Exception:  # the recovery task resends what is left as signed
                log.warning("could not record %d sends as sent on shutdown", len(self._sent))

    # -- the chain's counts ---------------------------------------------------------------

    def _account(self, address: bytes) -> _Account:
        account = self._accounts.get(address)
        if account is None:
            label = checksum(address)
            account = self._accounts[address] = _Account(
                self.max_in_flight, self.metrics.queue_depth.labels(label),
                self.metrics.in_flight.labels(label))  # fmt: skip
        return account

    async def chain_counts(self, address: bytes, *, fresh: bool = False) -> tuple[int, int]:
        """(mined, pending) transaction counts of `address` on the nodes, read at most once per
        `counts_max_age` seconds by this replica (one read serves every request waiting). A
        read answers the node's own counts; between reads, the highest mined count seen."""
        account = self._account(address)
        if fresh or time.monotonic() - account.read_at > self._counts_max_age:
            if account.reading is None:
                account.reading = asyncio.ensure_future(self._read_counts(address, account))
            reading = account.reading
            try:
                return await asyncio.shield(reading)
            finally:
                if reading.done() and account.reading is reading:
                    account.reading = None
        return account.mined, account.pending

    async def _read_counts(self, address: bytes, account: _Account) -> tuple[int, int]:
        # From the node the account's transactions go to: its counts are the ones that matter.
        mined, pending = await asyncio.gather(
            self.pool.call("eth_getTransactionCount", [checksum(address), "latest"],
                           affinity=address),
            self.pool.call("eth_getTransactionCount", [checksum(address), "pending"],
                           affinity=address),
        )  # fmt: skip
        account.mined = max(account.mined, int(mined, 16))
        account.pending = int(pending, 16)
        account.read_at = time.monotonic()
        return int(mined, 16), account.pending

    def reset_counts(self, address: bytes, mined: int) -> None:
        """The node went back (a reset): forget the higher mined count seen before."""
        account = self._account(address)
        account.mined = mined
        account.read_at = float("-inf")

    def saw_mined(self, address: bytes, mined: int) -> None:
        """The tracker or recovery read the chain's mined count: waiting requests may have room."""
        account = self._accounts.get(address)
        if account is not None and mined > account.mined:
            account.mined = mined

    # -- reserving ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, address: bytes) -> AsyncIterator[None]:
        """A place in the account's pipeline in this replica, from its nonce's reservation to
        the node's answer: at most QSIGNER_MAX_IN_FLIGHT at once, so that transactions that may
        reach the node out of order stay within a txpool's per-account queue (64 in geth and
        GoQuorum). As many more wait, for at most QSIGNER_READ_TIMEOUT seconds; beyond that,
        RateLimited, with nothing signed or sent."""
        account = self._account(address)
        if account.waiting >= 2 * self.max_in_flight:
            raise RateLimited(
                f"account {checksum(address)} already has {self.max_in_flight} transactions in "
                f"flight and {self.max_in_flight} waiting (QSIGNER_MAX_IN_FLIGHT); nothing was "
                "signed or sent, try again shortly"
            )
        label = checksum(address)
        queued, in_flight = account.queued, account.in_flight
        account.waiting += 1
        queued.inc()
        try:
            try:
                async with asyncio.timeout(self.pool.read_timeout):
                    await account.pipeline.acquire()
            except TimeoutError:
                raise RateLimited(
                    f"account {label}: no room among its {self.max_in_flight} transactions in "
                    f"flight within {self.pool.read_timeout:g} s (QSIGNER_MAX_IN_FLIGHT, "
                    "QSIGNER_READ_TIMEOUT); nothing was signed or sent, try again shortly"
                ) from None
            queued.dec()
            in_flight.inc()
            try:
                yield
            finally:
                account.pipeline.release()
                in_flight.dec()
                queued.inc()
        finally:
            account.waiting -= 1
            queued.dec()

    async def reserve(self, address: bytes, origin: Origin, *, kind: str = "send",
                      idempotency: Idempotency | None = None) -> Slot:  # fmt: skip
        """The next free nonce of `address` (a hole first), as a committed `reserved` row; or,
        for an Idempotency-Key already used, that key's row (`existing`)."""
        account = self._account(address)
        await self.chain_counts(address)
        answer: asyncio.Future[Slot | None] = asyncio.get_running_loop().create_future()
        account.queue.append(_Wanted(origin, kind, idempotency, answer))
        if account.flushing < _FLUSHES:
            account.flushing += 1  # now: requests this tick must not start more than that
            self._background(self._flush_reservations(address, account))
        slot = await answer
        if slot is None:  # pragma: no cover (no room bound on fresh nonces: turn() bounds them)
            raise RuntimeError("the ledger reserved no nonce")
        if not slot.existing:
            account.guessed = slot.nonce == account.guess
            account.guess = slot.nonce + 1
        digest = idempotency.digest if idempotency else None
        if slot.existing and slot.digest != digest:
            raise InvalidParams(
                "this Idempotency-Key was already used with different parameters; "
                "use a new key for a different request"
            )
        return slot

    def likely_nonce(self, address: bytes) -> int | None:
        """The nonce `reserve` will most likely give the one request of `address` under way in
        this replica (called within its turn()): the one after this replica's last reservation,
        when that one got the nonce guessed for it in turn. None when another request of the
        account is under way here, or the guess was wrong last time (another replica, a hole).
        A request may sign at it while the reservation runs, and uses that signature only if
        the reservation gives it this very nonce: see the module's docstring."""
        account = self._accounts.get(address)
        if account is None or account.waiting != 1 or not account.guessed:
            return None
        return account.guess

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_reservations(self, address: bytes, account: _Account) -> None:
        try:
            while account.queue:
                batch, account.queue = account.queue, []
                try:
                    slots = await self._reserve_rows(address, account, batch)
                except asyncpg.UniqueViolationError:
                    # An Idempotency-Key taken at this instant for another account's request:
                    # one at a time, so that only that request fails.
                    for wanted in batch:
                        try:
                            (slot,) = await self._reserve_rows(address, account, [wanted])
                        except asyncpg.UniqueViolationError:
                            _fail(wanted.answer, InvalidParams(
                                "this Idempotency-Key is in use by another request; use a new "
                                "key for a different request"))  # fmt: skip
                            continue
                        except Exception as exc:
                            _fail(wanted.answer, exc)
                            continue
                        _settle(wanted.answer, slot)
                    continue
                except Exception as exc:
                    for wanted in batch:
                        _fail(wanted.answer, exc)
                    continue
                for wanted, slot in zip(batch, slots, strict=True):
                    _settle(wanted.answer, slot)
        finally:
            account.flushing -= 1

    async def _reserve_rows(self, address: bytes, account: _Account, batch: Sequence[_Ask],
                            room: int = _UNBOUNDED) -> list[Slot | None]:  # fmt: skip
        """One ledger_reserve statement for `batch`: a slot each, None where it got no nonce
        (with `room` 0, where no hole was left)."""
        self.metrics.db_round_trips.inc()
        rows = await self.db.fetch(
            "SELECT * FROM ledger_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            self.chain_id, address, account.mined, account.pending, room,
            [w.origin.user_id for w in batch], [w.origin.org_id for w in batch],
            [w.origin.request_id for w in batch], [w.kind for w in batch],
            [w.idempotency.key if w.idempotency else None for w in batch],
            [w.idempotency.digest if w.idempotency else None for w in batch],
            float(self.idempotency_ttl),
        )  # fmt: skip
        by_slot = {row["slot"]: row for row in rows}
        slots: list[Slot | None] = []
        for index, _ in enumerate(batch, 1):
            row = by_slot.get(index)
            if row is None:
                slots.append(None)
                continue
            slots.append(Slot(row["row_id"], address, row["nonce"], row["state"],
                              row["tx_hash"], row["existing"], row["idem_digest"]))  # fmt: skip
            if not row["existing"]:
                self.metrics.nonces.labels("reused" if row["reused"] else "allocated").inc()
        return slots

    @typing.overload
    async def claim(self, address: bytes, nonce: int, origin: Origin, *, kind: str = ...,
                    idempotency: Idempotency | None = ...,
                    unrecorded_ahead: typing.Literal[False] = ...) -> Slot: ...  # fmt: skip

    @typing.overload
    async def claim(self, address: bytes, nonce: int, origin: Origin, *, kind: str = ...,
                    idempotency: Idempotency | None = ...,
                    unrecorded_ahead: bool) -> Slot | None: ...  # fmt: skip

    async def claim(self, address: bytes, nonce: int, origin: Origin, *, kind: str = "send",
                    idempotency: Idempotency | None = None,
                    unrecorded_ahead: bool = False) -> Slot | None:  # fmt: skip
        """The nonce the caller chose (QSIGNER_CALLER_NONCES=respect), if no transaction the
        proxy made holds it, and if it leaves no gap. With an Idempotency-Key already used for
        this very request, that request's row (`existing`) instead of a refusal. With
        `unrecorded_ahead`, a nonce ahead of the ledger answers None (nothing recorded) instead
        of a refusal: eth_signTransaction signs such a nonce as given."""
        mined, pending = await self.chain_counts(address)
        self.metrics.db_round_trips.inc()
        try:
            row = await self.db.fetchrow(
                "SELECT * FROM ledger_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                self.chain_id, address, mined, pending, nonce, pending,
                origin.user_id, origin.org_id, origin.request_id, kind,
                idempotency.key if idempotency else None,
                idempotency.digest if idempotency else None,
            )  # fmt: skip
        except asyncpg.UniqueViolationError:  # the key, taken at this instant for another nonce
            raise InvalidParams("this Idempotency-Key is in use by another request; use a new "
                                "key for a different request") from None  # fmt: skip
        if row["outcome"] == "used":
            if idempotency is not None:
                earlier = await self.keyed(origin.user_id, idempotency)
                if earlier is not None:
                    return earlier
            raise InvalidParams(
                f"nonce {nonce} of {checksum(address)} is already used by another transaction "
                f"sent through this proxy; leave the nonce out to get the next free one "
                f"(next: {row['next_nonce']})"
            )
        if row["outcome"] == "ahead":
            if unrecorded_ahead:
                return None
            raise InvalidParams(
                f"nonce {nonce} of {checksum(address)} is ahead of the account's next nonce "
                f"{row['next_nonce']}: the nonces in between would be a gap that holds up every "
                "transaction after it; leave the nonce out to get the next free one"
            )
        self.metrics.nonces.labels("allocated").inc()
        return Slot(row["row_id"], address, nonce)

    async def expire_keys(self) -> None:
        """Give up Idempotency-Keys older than QSIGNER_IDEMPOTENCY_TTL (a few thousand a call)."""
        self.metrics.db_round_trips.inc()
        await self.db.execute(
            """UPDATE ledger_transactions SET idem_key = NULL, idem_user = NULL
                WHERE id IN (SELECT id FROM ledger_transactions
                              WHERE idem_key IS NOT NULL
                                AND created_at < now() - make_interval(secs => $1)
                              LIMIT 5000)""",
            float(self.idempotency_ttl),
        )  # fmt: skip

    async def keyed(self, user_id: str, idempotency: Idempotency) -> Slot | None:
        """The row an Idempotency-Key of this user holds, if it is not expired."""
        self.metrics.db_round_trips.inc()
        row = await self.db.fetchrow(
            """SELECT id, account, nonce, state, tx_hash, idem_digest FROM ledger_transactions
                WHERE idem_user = $1 AND idem_key = $2
                  AND created_at >= now() - make_interval(secs => $3)""",
            user_id, idempotency.key, float(self.idempotency_ttl),
        )  # fmt: skip
        if row is None:
            return None
        if row["idem_digest"] != idempotency.digest:
            raise InvalidParams(
                "this Idempotency-Key was already used with different parameters; "
                "use a new key for a different request"
            )
        return Slot(row["id"], row["account"], row["nonce"], row["state"], row["tx_hash"],
                    existing=True, digest=row["idem_digest"])  # fmt: skip

    async def next_nonce(self, address: bytes) -> int | None:
        """The ledger's next nonce of `address`, or None when the ledger has never seen it."""
        self.metrics.db_round_trips.inc()
        value = await self.db.fetchval(
            "SELECT next_nonce FROM ledger_accounts WHERE chain_id = $1 AND account = $2",
            self.chain_id, address,
        )  # fmt: skip
        return None if value is None else int(value)

    async def wait_for_hash(self, slot: Slot) -> bytes | None:
        """An Idempotency-Key's earlier transaction: its hash once a node took it (or once the
        send's outcome is unknown past QSIGNER_READ_TIMEOUT: its bytes will be resent), or None
        if that request failed meanwhile (its key was given up: this request goes ahead)."""
        deadline = time.monotonic() + self.pool.read_timeout
        while True:
            if slot.state in ("sent", "mined", "replaced") and slot.tx_hash is not None:
                return slot.tx_hash
            if slot.state == "released":
                return None
            if time.monotonic() >= deadline:
                if slot.tx_hash is not None:  # signed, outcome unknown: these bytes or none
                    return slot.tx_hash
                raise RateLimited("the first request with this Idempotency-Key is still under "
                                  "way; try again shortly")  # fmt: skip
            await asyncio.sleep(0.05)
            self.metrics.db_round_trips.inc()
            row = await self.db.fetchrow(
                "SELECT state, tx_hash, idem_key FROM ledger_transactions WHERE id = $1",
                slot.row_id,
            )
            if row is None or row["idem_key"] is None:
                return None
            slot.state, slot.tx_hash = row["state"], row["tx_hash"]

    # -- storing the signed bytes, and the sent marks -------------------------------------

    async def store(self, slot: Slot, signed: SignedTransaction) -> None:
        """Commit the signed bytes of a reservation; only then may they be sent. Raises
        `ReservationLost` if recovery gave the nonce up meanwhile (this replica was taken for
        dead): the bytes must then never be sent."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._stores.append((slot, signed, answer))
        if self._writing < _FLUSHES:
            self._writing += 1
            self._background(self._flush_stores())
        if not await answer:
            raise ReservationLost(f"the reservation of nonce {slot.nonce} was given up by recovery")
        slot.state, slot.tx_hash = "signed", signed.hash

    def sent(self, slot: Slot, node: str) -> None:
        """The node took the transaction: recorded with the next store, or within 0.1 s."""
        slot.state = "sent"
        self._sent.append((slot.row_id, node))
        self.metrics.request_to_sent.observe(time.perf_counter() - slot.started)
        self._wake_writer.set()

    async def _flush_stores(self) -> None:
        try:
            while self._stores:
                batch, self._stores = self._stores, []
                sent, self._sent = self._sent, []
                try:
                    stored = await self._write(batch, sent)
                except Exception as exc:
                    self._sent = sent + self._sent
                    for _, _, answer in batch:
                        _fail(answer, exc)
                    continue
                for slot, _, answer in batch:
                    _settle(answer, slot.row_id in stored)
        finally:
            self._writing -= 1
            if self._sent:  # marks that came while this store ran: the writer takes them
                self._wake_writer.set()

    async def _write(self, batch: list[tuple[Slot, SignedTransaction, asyncio.Future[bool]]],
                     sent: list[tuple[int, str]]) -> set[int]:  # fmt: skip
        try:
            return await self._write_once(batch, sent)
        except asyncpg.DeadlockDetectedError:  # with the tracker's marks, rows in another order
            return await self._write_once(batch, sent)

    async def _write_once(self, batch: list[tuple[Slot, SignedTransaction, asyncio.Future[bool]]],
                          sent: list[tuple[int, str]]) -> set[int]:  # fmt: skip
        self.metrics.db_round_trips.inc()
        rows = await self.db.fetch(
            """WITH stored AS (
                   UPDATE ledger_transactions t
                      SET state = 'signed', raw = u.raw, tx_hash = u.hash, signed_at = now(),
                          updated_at = now(), private_args = u.private::jsonb
                     FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $6::text[])
                          AS u(id, raw, hash, private)
                    WHERE t.id = u.id AND t.state = 'reserved'
                RETURNING t.id),
               marked AS (
                   UPDATE ledger_transactions t
                      SET state = 'sent', node = u.node, sent_at = now(), updated_at = now(),
                          send_attempts = t.send_attempts + 1
                     FROM unnest($4::bigint[], $5::text[]) AS u(id, node)
                    WHERE t.id = u.id AND t.state = 'signed'
                RETURNING t.id)
               SELECT id FROM stored""",
            [slot.row_id for slot, _, _ in batch], [signed.raw for _, signed, _ in batch],
            [signed.hash for _, signed, _ in batch],
            [row_id for row_id, _ in sent], [node for _, node in sent],
            [slot.private_args for slot, _, _ in batch],
        )  # fmt: skip
        return {row["id"] for row in rows}

    async def _flush_sent_marks(self) -> None:
        while True:
            await self._wake_writer.wait()
            await asyncio.sleep(0.1)  # a store within this time carries the marks instead
            self._wake_writer.clear()
            if not self._sent or self._writing:
                continue  # a store under way carries them
            sent, self._sent = self._sent, []
            try:
                await self._write([], sent)
            except Exception:
                # Kept for the next write; until then recovery sees them as signed, and
                # resending the same bytes is harmless.
                self._sent = sent + self._sent
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # see recovery._still_cancelled
                    raise asyncio.CancelledError from None
                await asyncio.sleep(1)
                self._wake_writer.set()

    # -- giving a nonce back --------------------------------------------------------------

    async def release(self, slot: Slot, reason: str, *, hole: bool = True) -> bool:
        """The transaction never reached a mempool (refused for sure, or never signed): its
        nonce is given back as a hole, unless `hole` is False (the chain used the nonce: someone
        sent from the account outside the proxy). Answers whether a transaction with a higher
        nonce is already signed or sent, so that the hole must be filled at once."""
        self.metrics.db_round_trips.inc()
        row = await self.db.fetchrow(
            """WITH released AS (
                   UPDATE ledger_transactions
                      SET state = 'released', reason = $2, idem_key = NULL, idem_user = NULL,
                          updated_at = now()
                    WHERE id = $1 AND state IN ('reserved', 'signed')
                RETURNING chain_id, account, nonce),
               hole AS (
                   INSERT INTO ledger_holes (chain_id, account, nonce)
                   SELECT chain_id, account, nonce FROM released WHERE $3
                   ON CONFLICT DO NOTHING)
               SELECT EXISTS (
                   SELECT 1 FROM ledger_transactions t, released r
                    WHERE t.chain_id = r.chain_id AND t.account = r.account
                      AND t.nonce > r.nonce
                      AND t.state IN ('reserved', 'signed', 'sent')) AS higher,
                      (SELECT count(*) FROM released) AS released""",
            slot.row_id, reason[:500], hole,
        )  # fmt: skip
        slot.state = "released"
        if row["released"]:
            self.metrics.nonces.labels("released").inc()
        return bool(row["higher"]) and hole

    async def fill(self, address: bytes, origin: Origin, key: AsyncSigner,
                   headers: Mapping[str, str] | None = None) -> int | None:  # fmt: skip
        """Fill the lowest hole of `address` with a 0-value self-transfer at the network's gas
        price (0 on Quorum), signed with `key`; answers its nonce, or None when no hole was left
        (another request took it meanwhile). A fill the node refuses for sure is given back, so
        that the hole is tried again rather than held by bytes no node takes."""
        slot = await self._reserve_hole(address, origin)
        if slot is None:
            return None
        try:
            price = int(await self.pool.call("eth_gasPrice"), 16)
            signed = await sign_transaction_async(fill_transaction(
                self.chain_id, address, slot.nonce, price), key)  # fmt: skip
        except BaseException:
            await self.release(slot, "the fill could not be priced or signed")
            raise
        await self.store(slot, signed)
        try:
            _, node = await self.pool.submit(
                "eth_sendRawTransaction", ["0x" + signed.raw.hex()], "0x" + signed.hash.hex(),
                headers=headers, affinity=address,
            )  # fmt: skip
        except NoNodeAvailable as failure:
            if not isinstance(failure, SendOutcomeUnknown):
                await self.release(slot, "the fill was not sent: no node available")
            raise
        except NodeError as refusal:
            if refusal_kind(refusal) != "unknown":
                await self.release(slot, f"the fill was refused: {refusal.message}",
                                   hole=refusal_kind(refusal) == "definite")  # fmt: skip
            raise
        self.sent(slot, node)
        self.metrics.nonces.labels("filled").inc()
        log.warning("filled nonce %d of %s with a 0-value self-transfer", slot.nonce,
                    checksum(address))  # fmt: skip
        return slot.nonce

    async def _reserve_hole(self, address: bytes, origin: Origin) -> Slot | None:
        """The account's lowest hole for a fill (room 0: never a fresh nonce), or None."""
        await self.chain_counts(address)
        (slot,) = await self._reserve_rows(address, self._account(address),
                                           [_Ask(origin, "fill", None)], room=0)  # fmt: skip
        return slot

    async def reconcile(self, tx_hash: bytes) -> None:
        """Bytes from eth_signTransaction arrived through eth_sendRawTransaction: mark them sent
        (the node is not recorded: a caller's raw send goes to any node)."""
        self.metrics.db_round_trips.inc()
        await self.db.execute(
            """UPDATE ledger_transactions
                  SET state = 'sent', sent_at = now(), updated_at = now(),
                      send_attempts = send_attempts + 1
                WHERE tx_hash = $1 AND state = 'signed'""",
            tx_hash,
        )  # fmt: skip


def _settle(answer: asyncio.Future[Any], value: Any) -> None:
    if not answer.done():
        answer.set_result(value)


def _fail(answer: asyncio.Future[Any], exc: BaseException) -> None:
    if not answer.done():
        answer.set_exception(exc)
