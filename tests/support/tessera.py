"""A stand-in for Tessera, written here because no registry reachable from these machines ships
Tessera. It implements, from Tessera's published OpenAPI specification, only what the proxy uses:
the third-party API's `POST /storeraw` ({"payload": base64, "from"?: base64 key} ->
{"key": base64 of the 64-byte hash}), `GET /upcheck`, and the Quorum-to-Tessera API's
`GET /transaction/{hash}` ({"payload": base64}), through which a test reads what was stored.

What it does not do, and tests here therefore do not verify: encryption, distribution to the
recipients' Tessera nodes, and a GoQuorum node's use of the hash. A test that relies on it says
so in its name or docstring.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.anvil import free_port


def tessera_key() -> str:
    """A fresh Tessera-style public key (32 random bytes, base64)."""
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class Stored:
    payload: bytes
    sender: str


@dataclass
class TesseraStandIn:
    keys: list[str]  # the keys this Tessera holds; the first is its default sender
    port: int = field(default_factory=free_port)
    mode: str = "serve"  # or "fail" (HTTP 500), "hang" (never answers)
    stored: dict[bytes, Stored] = field(default_factory=dict)
    basic_auth: str | None = None  # "user:pass" the requests must carry, when set
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/storeraw", self._store_raw)
        app.router.add_get("/upcheck", self._upcheck)
        app.router.add_get("/transaction/{hash}", self._receive)
        self._runner = web.AppRunner(app, shutdown_timeout=1, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def payload_of(self, key: bytes) -> Stored:
        return self.stored[key]

    async def _upcheck(self, request: web.Request) -> web.Response:
        return web.Response(text="I'm up!")

    async def _store_raw(self, request: web.Request) -> web.Response:
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="Unauthorized")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            return web.Response(status=500, text="Internal Server Error")
        body = await request.json()
        try:
            payload = base64.b64decode(body["payload"], validate=True)
        except (KeyError, ValueError):
            return web.Response(status=400, text="Invalid payload")
        sender = body.get("from") or self.keys[0]
        if sender not in self.keys:
            return web.Response(status=404, text=f"Key {sender} not found")
        # Tessera's hash is SHA3-512 over the encrypted payload, which is never the same twice.
        key = hashlib.sha3_512(os.urandom(24) + payload).digest()
        self.stored[key] = Stored(payload, sender)
        return web.json_response({"key": base64.b64encode(key).decode()})

    async def _receive(self, request: web.Request) -> web.Response:
        try:
            key = base64.b64decode(request.match_info["hash"].replace("-", "+").replace("_", "/"))
        except ValueError:
            return web.Response(status=400)
        found = self.stored.get(key)
        if found is None:
            return web.Response(status=404, text="Message with hash not found")
        return web.json_response({"payload": base64.b64encode(found.payload).decode()})


@contextlib.asynccontextmanager
async def tessera(keys: list[str] | None = None) -> AsyncIterator[TesseraStandIn]:
    standin = TesseraStandIn(keys or [tessera_key()])
    await standin.start()
    try:
        yield standin
    finally:
        await standin.stop()
