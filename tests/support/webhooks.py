"""A webhook receiver as a user writes one: an HTTP server on a loopback port, in a thread of its
own (so that a test blocking on the chain or the CLI never stalls it), that checks each POST's
signature as docs/events.md says, records what came and when, and can be taken down and brought
back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from tests.support.anvil import free_port
from tests.support.servers import serve_on_loopback, stop_serving


@dataclass(frozen=True)
class Delivery:
    event: dict[str, Any]
    event_id_header: str
    genuine: bool  # the signature checks under the secret
    received: float  # time.time()

    @property
    def delay(self) -> float:
        """Seconds from the event (as the ledger recorded it) to its arrival here."""
        happened = datetime.fromisoformat(self.event["time"].replace("Z", "+00:00"))
        return self.received - happened.timestamp()


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.secret = ""  # set once `webhook add` printed it
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="receiver",
                                        daemon=True)  # fmt: skip
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/qsigner?token=not-shown"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        given = request.headers.get("X-QSigner-Signature", "")
        delivery = Delivery(json.loads(body), request.headers.get("X-QSigner-Event-Id", ""),
                            hmac.compare_digest(expected, given), time.time())  # fmt: skip
        with self._lock:
            self.deliveries.append(delivery)
        return web.Response(status=204)

    def up(self) -> None:
        async def start() -> None:
            app = web.Application()
            app.router.add_post("/hooks/qsigner", self._handle)
            self._runner = await serve_on_loopback(app, self.port)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)

    def down(self) -> None:
        runner, self._runner = self._runner, None
        asyncio.run_coroutine_threadsafe(stop_serving(runner), self._loop).result(timeout=10)

    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def events(self, account: str) -> list[dict[str, Any]]:
        return [d.event for d in self.received() if d.event["account"] == account]

    def duplicates(self) -> int:
        counts = Counter(d.event["id"] for d in self.received())
        return sum(n - 1 for n in counts.values())

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        self._thread.start()
        try:
            self.up()
            yield self
        finally:
            with contextlib.suppress(Exception):
                self.down()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
