"""A small HTTP server in front of a real node, as nginx or a load balancer stands in front of one
in production: it passes JSON-RPC on (over HTTP and WebSocket), records what it received, and
misbehaves on demand (502, silence, one method held back, a WebSocket that goes quiet); the
answers are still the node's own. Two forwarders in front of one node are two nodes of one
chain: same blocks, same hashes, and either can die alone (`stop`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.anvil import free_port
from tests.support.servers import serve_on_loopback, stop_serving

# Submissions of a signed transaction: what "hang_sends" and "drop_sends" act on.
SENDS = frozenset({"eth_sendRawTransaction", "eth_sendRawPrivateTransaction",
                   "eth_distributePrivateTransaction"})  # fmt: skip


class Forwarder:
    """Passes JSON-RPC on to a node and records what it received; can fail on demand."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        # or "bad_gateway", "hang" (every request), "hang_sends", "drop_sends" (read the send,
        # then close the connection without an answer and without passing it on)
        self.mode = "forward"
        self.errors: dict[str, dict[str, Any]] = {}  # method -> JSON-RPC error answered for it
        self.held: set[str] = set()  # methods answered only once released (a slow node)
        self.chunked = False  # answers streamed in pieces, with no Content-Length
        self.holding = 0  # requests held right now
        self.most_held = 0
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.paths: set[str] = set()  # request paths seen
        self.batches: list[list[dict[str, Any]]] = []  # batch requests seen (also in `seen`)
        self.takes_batches = True  # else a batch is refused, as some gateways do
        self.socket_mode = "forward"  # or "mute": the node's WebSocket messages are dropped
        self.socket_messages: list[dict[str, Any]] = []  # what clients sent over WebSocket
        self._socket_requests: list[web.BaseRequest] = []
        self._released = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def methods(self) -> list[str]:
        return [str(message["method"]) for _, message in self.seen]

    def release(self) -> None:
        """Held requests are answered, and from now on nothing is held."""
        self._released.set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = self._client or aiohttp.ClientSession()
        self._released.clear()
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)  # any path, as Infura's /v3/<key>
        app.router.add_get("/{path:.*}", self._socket)
        self._runner = await serve_on_loopback(app, self.port)

    def stop_from_thread(self) -> None:
        """`stop`, from a thread other than the forwarder's loop (fronts_in_thread)."""
        assert self._loop is not None, "not started"
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=10)

    async def stop(self) -> None:
        """The node dies: its WebSocket connections drop without a close, and it listens no
        more."""
        for request in list(self._socket_requests):
            if request.transport is not None:
                request.transport.abort()
        self._released.set()
        runner, self._runner = self._runner, None
        await stop_serving(runner)

    async def close(self) -> None:
        await self.stop()
        if self._client is not None:
            await self._client.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        message = json.loads(body)
        if isinstance(message, list):
            return await self._batch(request, body, message)
        self.seen.append((dict(request.headers), message))
        self.paths.add(request.path)
        if self.mode == "bad_gateway":
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if self.mode == "drop_sends" and message["method"] in SENDS:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never written: the connection is gone
        if message["method"] in self.errors:
            error = {"jsonrpc": "2.0", "id": message["id"], "error": self.errors[message["method"]]}
            return web.json_response(error)
        if message["method"] in self.held:
            self.holding += 1
            self.most_held = max(self.most_held, self.holding)
            try:
                await self._released.wait()
            finally:
                self.holding -= 1
        assert self._client is not None
        async with self._client.post(
            self.target, data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            answered = await answer.read()
        if self.mode == "hang" or (self.mode == "hang_sends" and message["method"] in SENDS):
            await self._released.wait()
        if self.chunked:
            streamed = web.StreamResponse(headers={"Content-Type": "application/json"})
            streamed.enable_chunked_encoding()
            await streamed.prepare(request)
            for start in range(0, len(answered), 1024):
                await streamed.write(answered[start : start + 1024])
            await streamed.write_eof()
            return streamed
        return web.Response(body=answered, content_type="application/json")

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        """A client's WebSocket, piped to the node's."""
        client = web.WebSocketResponse(max_msg_size=0)
        await client.prepare(request)
        assert self._client is not None
        self._socket_requests.append(request)
        target = self.target.replace("http://", "ws://", 1)
        try:
            async with self._client.ws_connect(target, max_msg_size=0) as node:

                async def up() -> None:
                    async for message in client:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self.socket_messages.append(json.loads(message.data))
                            await node.send_str(message.data)

                async def down() -> None:
                    async for message in node:
                        if message.type == aiohttp.WSMsgType.TEXT and self.socket_mode != "mute":
                            await client.send_str(message.data)

                pipes = [asyncio.create_task(up()), asyncio.create_task(down())]
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._socket_requests.remove(request)
        await client.close()
        return client

    def carries_subscriptions(self) -> bool:
        return any(m.get("method") == "eth_subscribe" for m in self.socket_messages)

    async def _batch(self, request: web.Request, body: bytes,
                     messages: list[dict[str, Any]]) -> web.Response:  # fmt: skip
        self.batches.append(messages)
        self.seen += [(dict(request.headers), message) for message in messages]
        if not self.takes_batches:
            refusal = {"code": -32600, "message": "batch requests are not supported"}
            return web.json_response({"jsonrpc": "2.0", "id": None, "error": refusal})
        assert self._client is not None
        async with self._client.post(
            self.target, data=body, headers={"Content-Type": "application/json"}
        ) as answer:
            return web.Response(body=await answer.read(), content_type="application/json")


@contextlib.asynccontextmanager
async def forwarder(target: str) -> AsyncIterator[Forwarder]:
    front = Forwarder(target)
    await front.start()
    try:
        yield front
    finally:
        await front.close()


@contextlib.contextmanager
def forwarder_in_thread(target: str) -> Iterator[Forwarder]:
    """A forwarder on an event loop of its own, for tests that block (a `serve` subprocess)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="forwarder", daemon=True)
    thread.start()
    front = Forwarder(target)
    try:
        asyncio.run_coroutine_threadsafe(front.start(), loop).result(timeout=10)
        yield front
    finally:
        asyncio.run_coroutine_threadsafe(front.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
