"""The transaction lifecycle as it happens, for the WebSocket subscriptions of this replica
(`eth_subscribe("qsigner_transactions", {"account"?: ADDRESS})`), and the wake-up of webhook
deliveries.

The database writes each event (proxy/migrations/0010) and announces it when it commits
(NOTIFY qsigner_events, the event id): one LISTEN connection per replica hears every replica's
events, reads them in batches (one query for whatever arrived meanwhile, only while someone
subscribes) and hands each to the subscriptions of its organisation. A listener that was lost
catches up from the events written since shortly before it was lost, none delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from proxy import logs, rpc
from proxy.audit.records import timestamp
from proxy.errors import InvalidParams, RateLimited
from proxy.metrics import Metrics
from proxy.sockets.session import SocketSession, Subscription
from proxy.store import BoundedPool
from signer.base import checksum

KIND = "qsigner_transactions"
EVENTS = ("queued", "sent", "mined", "failed", "filled")
EVENTS_CHANNEL = "qsigner_events"
WEBHOOKS_CHANNEL = "qsigner_webhooks"
LISTENER_NAME = "qsigner-events"
KEEPALIVE_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 5.0
CATCH_UP_SECONDS = 5.0  # a lost listener reads back from this long before it was lost
CATCH_UP_MAX = 10_000
RECENT_MAX = 16_384  # event ids delivered lately: a catch-up never delivers one twice

# An event's columns as `event_body` reads them, from `ledger_events e` (with a delivery's id
# in front for webhooks).
EVENTS_BY_ID = """SELECT e.* FROM ledger_events e WHERE e.id = ANY($1::bigint[]) ORDER BY e.id"""
EVENTS_SINCE = """SELECT e.* FROM ledger_events e
                   WHERE e.created_at >= coalesce($1, now()) - make_interval(secs => $2)
                   ORDER BY e.id LIMIT $3"""


def event_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """An event as callers receive it (subscription result and webhook body alike). Numbers are
    hex quantities, as in JSON-RPC; `receiptStatus` and `blockNumber` come with `mined`,
    `reason` with `failed` and `filled`."""
    body: dict[str, Any] = {
        "id": str(row["id"]),
        "event": row["event"],
        "transactionHash": "0x" + row["tx_hash"].hex() if row["tx_hash"] is not None else None,
        "account": checksum(bytes(row["account"])),
        "nonce": hex(row["nonce"]),
        "chainId": hex(row["chain_id"]),
        "kind": row["kind"],
        "user": row["user_id"],
        "requestId": row["request_id"],
        "private": row["private"],
        "time": timestamp(row["created_at"]),
    }
    if row["event"] == "mined":
        # Not `status`: web3.py takes a subscription result with a `status` key for geth's
        # syncing notification, and fails on it.
        status = row["receipt_status"]
        body["receiptStatus"] = None if status is None else hex(status)
        body["blockNumber"] = hex(row["block_number"])
    elif row["event"] in ("failed", "filled"):
        body["reason"] = row["reason"]
    return body


class TransactionSubscription(Subscription):
    """A client's `qsigner_transactions` subscription: its organisation's events, or one
    account's."""

    def __init__(self, session: SocketSession, organisation_id: int, account: bytes | None,
                 on_end: Callable[[TransactionSubscription], None]) -> None:  # fmt: skip
        super().__init__(session, on_end)
        self.organisation_id = organisation_id
        self.account = account

    @property
    def kind(self) -> str:
        return KIND

    def wants(self, row: Mapping[str, Any]) -> bool:
        return row["organisation_id"] == self.organisation_id and (
            self.account is None or bytes(row["account"]) == self.account
        )


def _subscription_account(params: list[Any]) -> bytes | None:
    if not params:
        return None
    criteria = params[0]
    if len(params) > 1 or not isinstance(criteria, dict) or not set(criteria) <= {"account"}:
        raise InvalidParams(f'{KIND} takes at most one object: {{"account": ADDRESS}}')
    account = criteria.get("account")
    if account is None:
        return None
    if not (isinstance(account, str) and account.startswith(("0x", "0X")) and len(account) == 42):
        raise InvalidParams('"account" must be a 0x address (20 bytes)')
    try:
        return bytes.fromhex(account[2:])
    except ValueError:
        raise InvalidParams('"account" must be a 0x address (20 bytes)') from None


class TransactionEvents:
    """This replica's listener of the events of every replica."""

    def __init__(self, db: BoundedPool, metrics: Metrics) -> None:
        self._db = db
        self._metrics = metrics
        self._dsn = ""
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, TransactionSubscription] = {}
        self._arrived: list[int] = []
        self._recent: deque[int] = deque()
        self._recent_set: set[int] = set()
        self._alive_at: datetime | None = None  # the server's time when the listener last answered
        self._closing = False
        self.webhooks_due = asyncio.Event()  # set when a delivery was written (any replica)

    async def start(self, dsn: str) -> None:
        self._dsn = dsn
        await self._connect()
        self._watcher = asyncio.create_task(self._watch(), name="events listener")

    async def close(self) -> None:
        # Stopped by a flag, not only by cancelling: on Python 3.11 a cancellation that lands
        # as a timeout's wait finishes may be lost, and awaiting the task would never end.
        self._closing = True
        self._lost.set()
        tasks = [t for t in (self._watcher, self._reader) if t is not None]
        if self._reader is not None:
            self._reader.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()
        self._watcher = self._reader = None
        listener, self._listener = self._listener, None
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(TimeoutError, OSError, asyncpg.InterfaceError):
                await listener.close(timeout=KEEPALIVE_SECONDS)

    # Subscriptions

    async def subscribe(self, session: SocketSession, request_id: str, organisation_id: int,
                        params: list[Any]) -> TransactionSubscription:  # fmt: skip
        account = _subscription_account(params)
        if account is not None:
            owner = await self._db.fetchval(
                "SELECT organisation_id FROM accounts WHERE address = $1", account
            )
            if owner != organisation_id:
                raise InvalidParams(f"{checksum(account)} is not an account of your "
                                    "organisation")  # fmt: skip
        if len(session.subscriptions) >= session.max_subscriptions:
            raise RateLimited(f"at most {session.max_subscriptions} subscriptions per connection "
                              "(QSIGNER_WS_MAX_SUBSCRIPTIONS)")  # fmt: skip
        subscription = TransactionSubscription(session, organisation_id, account, self.unsubscribe)
        self._subscriptions[subscription.id] = subscription
        session.subscriptions[subscription.id] = subscription
        session.hold_until_answered(subscription, request_id)
        self._metrics.ws_subscriptions.labels(KIND).inc()
        return subscription

    def unsubscribe(self, subscription: TransactionSubscription) -> None:
        if self._subscriptions.pop(subscription.id, None) is None:
            return
        subscription.session.subscriptions.pop(subscription.id, None)
        self._metrics.ws_subscriptions.labels(KIND).dec()

    # The listener

    async def _connect(self) -> None:
        listener = await asyncpg.connect(
            self._dsn, timeout=10, server_settings={"application_name": LISTENER_NAME}
        )
        try:
            await listener.add_listener(EVENTS_CHANNEL, self._on_event)
            await listener.add_listener(WEBHOOKS_CHANNEL, self._on_webhooks)
        except BaseException:
            listener.terminate()
            raise
        listener.add_termination_listener(lambda _conn: self._lost.set())
        self._alive_at = await listener.fetchval("SELECT now()")
        self._listener = listener
        self._lost.clear()
        self.webhooks_due.set()  # whatever was written while nobody listened

    def _on_event(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if not self._subscriptions:
            return
        with contextlib.suppress(ValueError):
            self._arrived.append(int(payload))
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="events reader")

    def _on_webhooks(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self.webhooks_due.set()

    async def _read(self) -> None:
        """Read the events announced meanwhile, in batches, until none is left."""
        while self._arrived:
            ids, self._arrived = self._arrived, []
            try:
                rows = await self._db.fetch(EVENTS_BY_ID, ids)
            except Exception as exc:  # a database failure loses these for the sockets only
                logs.event("transaction events not read", logging.WARNING,
                           error=type(exc).__name__, events=len(ids))  # fmt: skip
                continue
            self._deliver(rows)

    def _deliver(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            event_id = row["id"]
            if event_id in self._recent_set:
                continue
            self._recent.append(event_id)
            self._recent_set.add(event_id)
            if len(self._recent) > RECENT_MAX:
                self._recent_set.discard(self._recent.popleft())
            encoded: bytes | None = None
            for subscription in list(self._subscriptions.values()):
                if subscription.wants(row):
                    encoded = encoded or rpc.dumps(event_body(row))
                    subscription.notify(encoded)

    async def _watch(self) -> None:
        """Keep the listener alive; after a loss, reconnect and catch up."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    await self._lost.wait()
            if self._closing:
                return
            listener = self._listener
            if listener is not None and not self._lost.is_set():
                try:
                    self._alive_at = await listener.fetchval("SELECT now()",
                                                             timeout=KEEPALIVE_SECONDS)  # fmt: skip
                    continue
                except Exception:  # noqa: S110 (whatever the failure, the listener is replaced)
                    pass
            lost_at = self._alive_at  # every event committed before it was heard
            self._listener = None
            if listener is not None and not listener.is_closed():
                listener.terminate()
            logs.event("transaction events listener lost: reconnecting", logging.WARNING)
            delay = 0.1
            while not self._closing:
                try:
                    async with asyncio.timeout(30):
                        await self._connect()
                    break
                except Exception as exc:  # the watcher must outlive any failure
                    logs.event("transaction events listener cannot reconnect", logging.WARNING,
                               error=type(exc).__name__, retry_seconds=delay)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            if self._closing:
                return
            logs.event("transaction events listener back")
            await self._catch_up(lost_at)

    async def _catch_up(self, lost_at: datetime | None) -> None:
        if not self._subscriptions:
            return
        try:
            rows = await self._db.fetch(EVENTS_SINCE, lost_at, CATCH_UP_SECONDS, CATCH_UP_MAX)
        except Exception as exc:
            logs.event("transaction events not caught up", logging.WARNING,
                       error=type(exc).__name__)  # fmt: skip
            return
        self._deliver(rows)
