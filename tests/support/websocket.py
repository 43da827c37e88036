"""A JSON-RPC client of the proxy over WebSocket (aiohttp), as a dApp's socket reaches it:
answers matched by id, notifications gathered per subscription id, the close seen as it came."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

WAIT_SECONDS = 30.0  # bound on any wait of a test: a hung proxy fails the test, never hangs it


class Socket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._answers: dict[Any, asyncio.Future[Any]] = {}
        self.unmatched: list[Any] = []  # answers without an id we wait for (id null errors)
        self.notifications: dict[str, asyncio.Queue[Any]] = {}
        self.order: list[tuple[str, Any]] = []  # ("answer", id) / ("notification", sub id)
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # as the proxy's CLOSE frame gave them
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message.type != aiohttp.WSMsgType.TEXT:
                    if message.type == aiohttp.WSMsgType.CLOSE:
                        self.close_code, self.close_reason = message.data, message.extra or ""
                    break
                self._received(json.loads(message.data))
        finally:
            self.closed.set()
            for waiting in self._answers.values():
                if not waiting.done():
                    waiting.set_exception(ConnectionError("the socket closed"))

    def _received(self, decoded: Any) -> None:
        if isinstance(decoded, list):
            key = tuple(item.get("id") for item in decoded)
            self.order.append(("answer", key))
            waiting = self._answers.get(key)
            if waiting is not None and not waiting.done():
                waiting.set_result(decoded)
            else:
                self.unmatched.append(decoded)
            return
        if decoded.get("method") == "eth_subscription":
            params = decoded["params"]
            self.order.append(("notification", params["subscription"]))
            self.queue(params["subscription"]).put_nowait(params["result"])
            return
        self.order.append(("answer", decoded.get("id")))
        waiting = self._answers.get(decoded.get("id"))
        if waiting is not None and not waiting.done():
            waiting.set_result(decoded)
        else:
            self.unmatched.append(decoded)

    def queue(self, subscription: str) -> asyncio.Queue[Any]:
        return self.notifications.setdefault(subscription, asyncio.Queue())

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def request(self, method: str, params: Any = None) -> dict[str, Any]:
        """The whole answer (result or error) to one request."""
        request_id = next(self._ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        waiting = self._expect(request_id)
        await self.ws.send_str(json.dumps(body))
        async with asyncio.timeout(WAIT_SECONDS):
            answer: dict[str, Any] = await waiting
        return answer

    async def result(self, method: str, params: Any = None) -> Any:
        answer = await self.request(method, params)
        assert "result" in answer, answer
        return answer["result"]

    async def batch(self, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        ids = [next(self._ids) for _ in calls]
        body = [{"jsonrpc": "2.0", "id": n, "method": m, "params": p}
                for n, (m, p) in zip(ids, calls, strict=True)]  # fmt: skip
        waiting = self._expect(tuple(ids))
        await self.ws.send_str(json.dumps(body))
        async with asyncio.timeout(WAIT_SECONDS):
            answers: list[dict[str, Any]] = await waiting
        return answers

    async def next_unmatched(self) -> Any:
        """The next answer nobody waited for by id (an error to a message that was not a
        request)."""
        async with asyncio.timeout(WAIT_SECONDS):
            while not self.unmatched:
                if self.closed.is_set():
                    raise ConnectionError("the socket closed")
                await asyncio.sleep(0.01)
        return self.unmatched.pop(0)

    async def notification(self, subscription: str) -> Any:
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.queue(subscription).get()

    def _expect(self, key: Any) -> asyncio.Future[Any]:
        waiting: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._answers[key] = waiting
        return waiting

    async def wait_closed(self, timeout: float = WAIT_SECONDS) -> tuple[int | None, str]:
        """(close code, reason) once the proxy closed the socket."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code, self.close_reason

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def connect(session: aiohttp.ClientSession, url: str,
                  **kwargs: Any) -> AsyncIterator[Socket]:  # fmt: skip
    """A socket to `url` (http(s) URL of the proxy, turned ws(s)), closed afterwards."""
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    ws = await session.ws_connect(ws_url, **kwargs)
    socket = Socket(ws)
    try:
        yield socket
    finally:
        await socket.close()
