"""One client's WebSocket: who it is, the frames waiting to be sent to it (a bounded queue: a
client that reads too slowly is closed rather than let memory grow), and its subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from proxy.metrics import Metrics

if TYPE_CHECKING:
    from proxy.context import Caller


class Subscription:
    """A subscription of the socket: one carried to a node (proxy/sockets/feeds.py) or the
    proxy's own transaction events (proxy/events/stream.py). Its id is the proxy's own; its
    notifications wait until the answer naming it is sent (`activate`)."""

    def __init__(self, session: SocketSession, on_end: Callable[[Any], None]) -> None:
        self.id = "0x" + secrets.token_hex(16)
        self.session = session
        self.active = False
        self._held: list[bytes] = []
        self._on_end = on_end  # what ends it where it came from (a feed, the events stream)

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def end(self) -> None:
        """Unsubscribe: no notification under this id follows (eth_unsubscribe, or the socket
        closed)."""
        self._on_end(self)

    def notify(self, result_json: bytes) -> None:
        frame = (b'{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"%s",'
                 b'"result":%s}}' % (self.id.encode(), result_json))  # fmt: skip
        if self.active:
            self.session.send(frame)
        else:
            self._held.append(frame)

    def activate(self) -> None:
        self.active = True
        held, self._held = self._held, []
        for frame in held:
            self.session.send(frame)


_SESSION_IDS = itertools.count(1)
# A close waits this long for its frame to go out and the client's answer; a client that reads
# nothing (and may still be sending) does not hold the connection any longer.
CLOSE_SECONDS = 5.0


class SocketSession:
    """A client's open socket. `send` queues a frame (never waits); the writer task sends them
    in order. `close_soon` closes the socket with a code and a reason, once."""

    def __init__(self, ws: web.WebSocketResponse, caller: Caller, credential: str,
                 api_key_id: str | None, *, send_queue: int, max_subscriptions: int,
                 metrics: Metrics, abort: Callable[[], None]) -> None:  # fmt: skip
        self.id = next(_SESSION_IDS)
        self.ws = ws
        self.caller = caller  # as authenticated at the upgrade; each message gets its own copy
        self.credential = credential  # kept to check it again when it may have been revoked
        self.api_key_id = api_key_id
        self.max_subscriptions = max_subscriptions
        self.subscriptions: dict[str, Subscription] = {}
        self.closing: str | None = None  # why the proxy closes it, once it does
        self._metrics = metrics
        self._abort = abort  # drops the connection without a word
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(send_queue)
        self._send_queue = send_queue
        self._pending: dict[str, list[Subscription]] = {}
        self._writer = asyncio.create_task(self._write(), name=f"socket {self.id} writer")
        self._closer: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.caller.principal.user_id

    def send(self, frame: bytes) -> None:
        """Queue `frame`; a full queue closes the socket (the client does not keep up)."""
        if self.closing is not None:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close_soon(WSCloseCode.POLICY_VIOLATION, "slow_consumer",
                            f"too slow: {self._send_queue} messages waited to be sent "
                            "(QSIGNER_WS_SEND_QUEUE)")  # fmt: skip

    def hold_until_answered(self, subscription: Subscription, request_id: str) -> None:
        """A subscription whose notifications wait until the answer to message `request_id`,
        which names its id, is sent: a client learns the id before it sees notifications."""
        self._pending.setdefault(request_id, []).append(subscription)

    def answered(self, request_id: str) -> None:
        """The answer to message `request_id` was queued: the subscriptions it named start
        delivering."""
        for subscription in self._pending.pop(request_id, ()):
            subscription.activate()

    def close_soon(self, code: int, reason: str, message: str) -> None:
        """Close the socket with `code` and `message` (at most 123 bytes, as RFC 6455 allows),
        counted under `reason`; later calls do nothing."""
        if self.closing is not None:
            return
        self.closing = reason
        self._metrics.ws_closed.labels(reason).inc()
        self._closer = asyncio.create_task(self._close(code, message.encode()[:123]),
                                           name=f"socket {self.id} close")  # fmt: skip

    async def _close(self, code: int, message: bytes) -> None:
        # What is queued is dropped: the reason to close goes out now (after what the kernel
        # already holds).
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.ws.close(code=code, message=message)
        except Exception:
            self._abort()

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                frame = await self._queue.get()
                await self.ws.send_frame(frame, WSMsgType.TEXT)

    async def finish(self) -> None:
        """After the socket ended: stop the writer and wait for a close under way."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        closer = self._closer
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer
