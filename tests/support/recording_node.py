"""A stand-in for a GoQuorum node that records what reached it: the proxy's health probes get
eth_chainId / eth_blockNumber answers, and every request's method and headers are kept so that a
test can see which `Quorum-PSI` (if any) the proxy forwarded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

CHAIN_ID = 1337
PROBES = frozenset({"eth_chainId", "eth_blockNumber"})


@dataclass
class Received:
    method: str
    headers: dict[str, str]


@dataclass
class RecordingNode:
    url: str = ""
    received: list[Received] = field(default_factory=list)

    def calls(self, method: str) -> list[Received]:
        """What reached the node for `method` (health probes are not counted unless asked)."""
        return [r for r in self.received if r.method == method]

    def clear(self) -> None:
        self.received.clear()


def _answer(method: str) -> Any:
    if method == "eth_chainId":
        return hex(CHAIN_ID)
    if method == "net_version":
        return str(CHAIN_ID)
    return "0x1"  # eth_blockNumber, eth_getBalance, ...: any quantity will do


@contextlib.asynccontextmanager
async def recording_node() -> AsyncIterator[RecordingNode]:
    node = RecordingNode()

    async def rpc(request: web.Request) -> web.Response:
        body = await request.json()
        node.received.append(Received(body["method"], dict(request.headers)))
        return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                  "result": _answer(body["method"])})  # fmt: skip

    app = web.Application()
    app.router.add_post("/", rpc)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    node.url = str(server.make_url("")).rstrip("/")
    try:
        yield node
    finally:
        await server.close()
