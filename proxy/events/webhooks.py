"""Webhooks: an organisation's transaction events POSTed to its receivers, at least once.

The database makes one `pending` delivery per event and webhook that wants it, in the same
transaction as the change the event is about (proxy/migrations/0010), so nothing is lost when
a replica stops. Delivery:

- A webhook is delivered by one replica at a time: the one holding its lease (a row lock taken
  with SKIP LOCKED for one short statement, then an expiry and a fencing token on the row). The
  holder POSTs the webhook's pending deliveries one at a time in event order, and marks each
  delivered only while its token is still the webhook's: a holder that stalled past its lease
  writes nothing, and the next holder goes on from the first delivery not marked. So in the
  normal case every event is POSTed once; after a replica died between a POST and its mark,
  that one event is POSTed again (the `X-QSigner-Event-Id` header lets the receiver tell).
- No database lock is held across a POST: each statement commits on its own.
- A POST answered other than 2xx within QSIGNER_WEBHOOK_TIMEOUT (3xx included: redirects are
  not followed) is a failure: the webhook pauses (1 s, doubling with each failure in a row, at
  most QSIGNER_WEBHOOK_RETRY_MAX) and its lease is given back; whoever leases it next retries
  from the same delivery. The first 2xx resets the wait.
- A delivery still pending QSIGNER_WEBHOOK_GIVE_UP after its event is given up (`expired`).
  Events are deleted QSIGNER_EVENT_RETENTION after they happened, once no delivery waits.

Each body is the event's JSON (`stream.event_body`), signed: `X-QSigner-Signature: sha256=<hex
HMAC-SHA256 of the body under the webhook's secret>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram

from proxy import logs, rpc
from proxy.audit import AuditLog
from proxy.errors import BadInput
from proxy.events.stream import EVENTS, TransactionEvents, event_body
from proxy.identity.model import security_event
from proxy.nodes.transport import mask_url
from proxy.store import BoundedPool

POLL_SECONDS = 1.0  # due retries are looked for this often (new deliveries wake at once)
LEASE_SECONDS = 30.0  # at least; a holder renews its lease with every delivery it marks
BATCH = 100  # deliveries read at once, in order
PRUNE_SECONDS = 60.0
PRUNE_BATCH = 10_000
ERROR_MAX = 200  # characters of a receiver's failure kept on the delivery
USER_AGENT = "quorum-signer-webhooks"


def signature(secret: str, body: bytes) -> str:
    """The `X-QSigner-Signature` header's value: HMAC-SHA256 of the body under the secret (the
    whole `whsec_…` text, as UTF-8), hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_wait(failures: int, retry_max: float) -> float:
    """Seconds a webhook waits after `failures` failed deliveries in a row: 1, 2, 4, ... at most
    `retry_max`, with a tenth of jitter so that replicas and webhooks do not retry in step."""
    wait = min(float(retry_max), 2.0 ** max(failures - 1, 0))
    return wait * (0.9 + 0.2 * random.random())  # noqa: S311 (jitter, not a secret)


# Commands (CLI): add, list, remove.


@dataclass(frozen=True)
class NewWebhook:
    id: str
    secret: str


def parse_events(text: str | None) -> list[str]:
    if text is None:
        return list(EVENTS)
    events = [e.strip() for e in text.split(",") if e.strip()]
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise BadInput(f"--events takes a comma-separated list of {', '.join(EVENTS)}"
                       + (f" (not {', '.join(unknown)})" if unknown else ""))  # fmt: skip
    return sorted(set(events), key=EVENTS.index)


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("the webhook URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise BadInput("the webhook URL must not carry credentials: deliveries are signed "
                       "instead (X-QSigner-Signature)")  # fmt: skip


async def add(pool: asyncpg.Pool, audit: AuditLog, organisation: str, url: str,
              events: Sequence[str]) -> NewWebhook:  # fmt: skip
    check_url(url)
    webhook = NewWebhook("wh_" + secrets.token_hex(8), "whsec_" + secrets.token_urlsafe(32))
    async with pool.acquire() as conn, conn.transaction():
        org_id = await conn.fetchval("SELECT id FROM organisations WHERE name = $1", organisation)
        if org_id is None:
            raise BadInput(f"no organisation {organisation!r}")
        await conn.execute(
            "INSERT INTO webhooks (id, organisation_id, url, events, secret) "
            "VALUES ($1, $2, $3, $4, $5)", webhook.id, org_id, url, list(events), webhook.secret,
        )  # fmt: skip
        await security_event(audit, conn, organisation, None, "webhook_added",
                             {"webhook_id": webhook.id, "url": mask_url(url),
                              "events": list(events)})  # fmt: skip
    return webhook


async def listing(pool: asyncpg.Pool, organisation: str | None) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        if organisation is not None and await conn.fetchval(
            "SELECT 1 FROM organisations WHERE name = $1", organisation
        ) is None:  # fmt: skip
            raise BadInput(f"no organisation {organisation!r}")
        rows: list[asyncpg.Record] = await conn.fetch(
            """SELECT w.id, o.name AS organisation, w.url, w.events, w.failures, w.paused_until,
                      (SELECT count(*) FROM webhook_deliveries d
                        WHERE d.webhook_id = w.id AND d.state = 'pending') AS pending,
                      (SELECT count(*) FROM webhook_deliveries d
                        WHERE d.webhook_id = w.id AND d.state = 'delivered') AS delivered,
                      (SELECT d.last_error FROM webhook_deliveries d
                        WHERE d.webhook_id = w.id AND d.last_error IS NOT NULL
                        ORDER BY d.id DESC LIMIT 1) AS last_error
                 FROM webhooks w JOIN organisations o ON o.id = w.organisation_id
                WHERE w.removed_at IS NULL AND ($1::text IS NULL OR o.name = $1)
                ORDER BY o.name, w.created_at""",
            organisation,
        )  # fmt: skip
        return rows


async def remove(pool: asyncpg.Pool, audit: AuditLog, webhook_id: str) -> None:
    """No more deliveries: pending ones are dropped (`removed`)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE webhooks w SET removed_at = now() FROM organisations o
                WHERE w.id = $1 AND w.removed_at IS NULL AND o.id = w.organisation_id
                RETURNING o.name AS organisation""",
            webhook_id,
        )  # fmt: skip
        if row is None:
            raise BadInput(f"no webhook with id {webhook_id!r}")
        await conn.execute("UPDATE webhook_deliveries SET state = 'removed' "
                           "WHERE webhook_id = $1 AND state = 'pending'", webhook_id)  # fmt: skip
        await security_event(audit, conn, row["organisation"], None, "webhook_removed",
                             {"webhook_id": webhook_id})  # fmt: skip


# Delivery (every replica runs one).


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "qsigner_webhook_deliveries", "webhook deliveries by outcome (delivered, failed: "
            "retried later, expired: given up)", ["outcome"], registry=registry,
        )  # fmt: skip
        self.delay = Histogram(
            "qsigner_webhook_delivery_delay_seconds",
            "from an event to its delivery's 2xx answer", registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
        )  # fmt: skip
        for outcome in ("delivered", "failed", "expired"):
            self.deliveries.labels(outcome)


@dataclass
class _Lease:
    webhook_id: str
    url: str
    secret: str
    token: int
    failures: int


class WebhookDeliverer:
    def __init__(self, db: BoundedPool, events: TransactionEvents, metrics: WebhookMetrics, *,
                 timeout: float, retry_max: float, give_up: float,
                 retention: float) -> None:  # fmt: skip
        self._db = db
        self._events = events
        self._metrics = metrics
        self._timeout = timeout
        self._retry_max = retry_max
        self._give_up = give_up
        self._retention = retention
        self._owner = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        # A holder renews its lease with every delivery marked: longer than a POST may take.
        self._lease_seconds = max(LEASE_SECONDS, 3.0 * timeout)
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._delivering: dict[str, asyncio.Task[None]] = {}
        self._pruned_at = 0.0
        self._closing = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": USER_AGENT},
        )
        self._runner = asyncio.create_task(self._run(), name="webhooks")

    async def close(self) -> None:
        # The flag too, not only the cancel: a cancel can be swallowed on its way (Python 3.11's
        # wait_for returns the event when a cancel meets its setting; a database call may eat
        # one), and the loop then ran on while close() waited for it forever.
        self._closing = True
        tasks = [t for t in (self._runner, *self._delivering.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._runner = None
        # Leases given back, so that another replica goes on at once rather than after their
        # expiry (a POST cut short here may have arrived: it is sent again, at least once).
        with contextlib.suppress(Exception):
            await self._db.execute("UPDATE webhooks SET lease_owner = NULL, lease_until = NULL "
                                   "WHERE lease_owner = $1", self._owner)  # fmt: skip
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        due = self._events.webhooks_due
        failing = False
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(due.wait(), POLL_SECONDS)
            due.clear()
            try:
                await self._expire_and_prune()
                for lease in await self._lease():
                    self._start_delivering(lease)
                if failing:
                    logs.event("webhooks: looking for deliveries again")
                failing = False
            except Exception as exc:  # the loop outlives a database outage (said once)
                if not failing:
                    logs.event("webhooks: cannot look for deliveries", logging.WARNING,
                               error=type(exc).__name__)  # fmt: skip
                failing = True

    def _start_delivering(self, lease: _Lease) -> None:
        task = asyncio.create_task(self._deliver(lease), name=f"webhook {lease.webhook_id}")
        self._delivering[lease.webhook_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._delivering.get(lease.webhook_id) is task:
                del self._delivering[lease.webhook_id]

        task.add_done_callback(done)

    async def _lease(self) -> list[_Lease]:
        """Lease the webhooks with pending deliveries that nobody holds and that do not wait."""
        rows = await self._db.fetch(
            """UPDATE webhooks w
                  SET lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                      lease_token = w.lease_token + 1
                WHERE w.id IN (
                    SELECT h.id FROM webhooks h
                     WHERE h.removed_at IS NULL
                       AND (h.paused_until IS NULL OR h.paused_until <= now())
                       AND (h.lease_until IS NULL OR h.lease_until < now())
                       AND NOT (h.id = ANY ($3::text[]))
                       AND EXISTS (SELECT 1 FROM webhook_deliveries d
                                    WHERE d.webhook_id = h.id AND d.state = 'pending')
                     FOR UPDATE SKIP LOCKED)
            RETURNING w.id, w.url, w.secret, w.lease_token, w.failures""",
            self._owner, self._lease_seconds, list(self._delivering),
        )  # fmt: skip
        return [_Lease(r["id"], r["url"], r["secret"], r["lease_token"], r["failures"])
                for r in rows]  # fmt: skip

    async def _deliver(self, lease: _Lease) -> None:
        """POST the webhook's pending deliveries in order while the lease holds."""
        try:
            while True:
                rows = await self._db.fetch(
                    """SELECT d.id AS delivery_id, e.*
                          FROM webhook_deliveries d JOIN ledger_events e ON e.id = d.event_id
                         WHERE d.webhook_id = $1 AND d.state = 'pending'
                         ORDER BY d.id LIMIT $2""",
                    lease.webhook_id, BATCH,
                )  # fmt: skip
                if not rows:
                    if await self._release(lease):
                        return
                    continue  # one arrived meanwhile
                for row in rows:
                    if not await self._post(lease, row):
                        return
        except Exception as exc:  # the lease expires; another round (or replica) goes on
            logs.event("webhooks: delivery interrupted", logging.WARNING,
                       webhook=lease.webhook_id, error=type(exc).__name__)  # fmt: skip

    async def _post(self, lease: _Lease, row: Any) -> bool:
        """One delivery; whether the lease still holds and the next one may go."""
        session = self._session
        if session is None:
            return False  # closing
        body = rpc.dumps(event_body(row))
        headers = {
            "Content-Type": "application/json",
            "X-QSigner-Event-Id": str(row["id"]),
            "X-QSigner-Signature": signature(lease.secret, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            async with session.post(lease.url, data=body, headers=headers,
                                           allow_redirects=False) as response:  # fmt: skip
                status = response.status
                with contextlib.suppress(Exception):
                    await response.content.read(64 * 1024)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except TimeoutError:
            error = f"no answer within {self._timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            # The kind and the system's reason only: an exception's text may quote the URL,
            # whose path or query may hold a token.
            cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
            reason = cause.strerror if isinstance(cause, OSError) else None
            error = (type(exc).__name__ + (f": {reason}" if reason else ""))[:ERROR_MAX]
        if error is None:
            # Marked only while the lease holds (a holder that stalled past it writes nothing,
            # and stops); a delivery dropped meanwhile (its webhook removed) stays as it is.
            held = await self._db.fetchval(
                """WITH lease AS (
                       UPDATE webhooks SET lease_until = now() + make_interval(secs => $4),
                                           failures = 0, paused_until = NULL
                        WHERE id = $1 AND lease_token = $2 AND lease_owner = $5
                       RETURNING id),
                   marked AS (
                       UPDATE webhook_deliveries d
                          SET state = 'delivered', delivered_at = now(),
                              attempts = d.attempts + 1, last_status = $6
                         FROM lease
                        WHERE d.id = $3 AND d.state = 'pending'
                       RETURNING d.id)
                   SELECT EXISTS (SELECT 1 FROM lease)""",
                lease.webhook_id, lease.token, row["delivery_id"], self._lease_seconds, self._owner,
                status,
            )  # fmt: skip
            if not held:
                return False
            self._metrics.deliveries.labels("delivered").inc()
            created: datetime = row["created_at"]
            self._metrics.delay.observe(max(0.0, time.time() - created.timestamp()))
            lease.failures = 0
            return True
        lease.failures += 1
        wait = retry_wait(lease.failures, self._retry_max)
        await self._db.execute(
            """WITH lease AS (
                   UPDATE webhooks
                      SET failures = failures + 1,
                          paused_until = now() + make_interval(secs => $4),
                          lease_owner = NULL, lease_until = NULL
                    WHERE id = $1 AND lease_token = $2 AND lease_owner = $5
                   RETURNING id)
               UPDATE webhook_deliveries d
                  SET attempts = d.attempts + 1, last_status = $6, last_error = $7
                 FROM lease
                WHERE d.id = $3""",
            lease.webhook_id, lease.token, row["delivery_id"], wait, self._owner, status, error,
        )  # fmt: skip
        self._metrics.deliveries.labels("failed").inc()
        logs.event("webhook delivery failed", logging.WARNING, webhook=lease.webhook_id,
                   event_id=row["id"], error=error, retry_seconds=round(wait, 1))  # fmt: skip
        return False

    async def _release(self, lease: _Lease) -> bool:
        """Give the lease back, unless a delivery arrived since the last read (then go on)."""
        released = await self._db.fetchval(
            """UPDATE webhooks SET lease_owner = NULL, lease_until = NULL
                WHERE id = $1 AND lease_token = $2 AND lease_owner = $3
                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                   WHERE d.webhook_id = $1 AND d.state = 'pending')
               RETURNING id""",
            lease.webhook_id, lease.token, self._owner,
        )  # fmt: skip
        if released is not None:
            return True
        still_ours = await self._db.fetchval(
            "SELECT 1 FROM webhooks WHERE id = $1 AND lease_token = $2 AND lease_owner = $3",
            lease.webhook_id, lease.token, self._owner,
        )  # fmt: skip
        return still_ours is None

    async def _expire_and_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_SECONDS:
            return
        self._pruned_at = now
        expired = await self._db.fetchval(
            """WITH expired AS (
                   UPDATE webhook_deliveries d SET state = 'expired'
                     FROM ledger_events e
                    WHERE d.state = 'pending' AND e.id = d.event_id
                      AND e.created_at < now() - make_interval(secs => $1)
                   RETURNING d.id)
               SELECT count(*) FROM expired""",
            float(self._give_up),
        )  # fmt: skip
        if expired:
            self._metrics.deliveries.labels("expired").inc(expired)
            logs.event("webhook deliveries given up", logging.WARNING, deliveries=expired)
        await self._db.execute(
            # The oldest events first, by id (the primary key's order, about the time order).
            """DELETE FROM ledger_events e
                WHERE e.id IN (SELECT o.id
                                 FROM (SELECT id, created_at FROM ledger_events
                                        ORDER BY id LIMIT $2) o
                                WHERE o.created_at < now() - make_interval(secs => $1)
                                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                                   WHERE d.event_id = o.id
                                                     AND d.state = 'pending'))""",
            float(self._retention), PRUNE_BATCH,
        )  # fmt: skip
