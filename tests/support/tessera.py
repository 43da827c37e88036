"""A stand-in for Tessera, written here because no registry reachable from these machines ships
Tessera. It implements, from Tessera's published OpenAPI specification, only what the proxy and
the GoQuorum stand-in (tests/support/quorum.py) use:
- the third-party API's `POST /storeraw` ({"payload": base64, "from"?: base64 key} ->
  {"key": base64 of the 64-byte hash}), `GET /partyinfo/keys` ({"keys": [{"key": base64}]}: its
  own keys and its peers'), and `GET /upcheck`;
- the Quorum-to-Tessera API's `POST /sendsignedtx` ({"hash": base64, "to": [keys],
  "privacyFlag"?, "mandatoryRecipients"?} -> {"key": base64}; 404 for a hash it never stored or
  a recipient it does not know), which a GoQuorum node calls for eth_sendRawPrivateTransaction,
  and `GET /transaction/{hash}` ({"payload": base64}), through which a test reads what was stored.

What it does not do, and tests here therefore do not verify: encryption, and the distribution
itself to the recipients' Tessera nodes (it records to whom a payload would go). A test that
relies on it says so in its name or docstring.
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
from tests.support.servers import serve_on_loopback, stop_serving


def tessera_key() -> str:
    """A fresh Tessera-style public key (32 random bytes, base64)."""
    return base64.b64encode(os.urandom(32)).decode()


@dataclass
class Stored:
    payload: bytes
    sender: str


@dataclass
class Distributed:
    recipients: list[str]
    privacy_flag: int
    mandatory: list[str]


@dataclass
class TesseraStandIn:
    keys: list[str]  # the keys this Tessera holds; the first is its default sender
    peers: list[str] = field(default_factory=list)  # its peers' keys (party info)
    port: int = field(default_factory=free_port)
    mode: str = "serve"  # or "fail" (HTTP 500), "hang" (never answers)
    stored: dict[bytes, Stored] = field(default_factory=dict)
    distributed: dict[bytes, Distributed] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # the paths asked for, in order
    basic_auth: str | None = None  # "user:pass" the requests must carry, when set
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/storeraw", self._store_raw)
        app.router.add_get("/partyinfo/keys", self._party_keys)
        app.router.add_post("/sendsignedtx", self._send_signed)
        app.router.add_get("/upcheck", self._upcheck)
        app.router.add_get("/transaction/{hash}", self._receive)
        self._runner = await serve_on_loopback(app, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        await stop_serving(runner)

    def payload_of(self, key: bytes) -> Stored:
        return self.stored[key]

    async def _upcheck(self, request: web.Request) -> web.Response:
        return web.Response(text="I'm up!")

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """What the stand-in answers instead of serving (its credentials, its failure modes)."""
        self.calls.append(request.path)
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="Unauthorized")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail":
            return web.Response(status=500, text="Internal Server Error")
        return None

    async def _party_keys(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        return web.json_response({"keys": [{"key": key} for key in self.keys + self.peers]})

    async def _send_signed(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        body = await request.json()
        key = base64.b64decode(body.get("hash", ""))
        if key not in self.stored:
            return web.Response(status=404, text="Transaction with hash not found")
        for recipient in body.get("to") or []:
            if recipient not in self.keys + self.peers:
                return web.Response(status=404, text=f"Recipient not found for key: {recipient}")
        self.distributed[key] = Distributed(
            list(body.get("to") or []),
            int(body.get("privacyFlag") or 0),
            list(body.get("mandatoryRecipients") or []),
        )
        return web.json_response({"key": body["hash"]})

    async def _store_raw(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
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
async def tessera(keys: list[str] | None = None,
                  peers: list[str] | None = None) -> AsyncIterator[TesseraStandIn]:  # fmt: skip
    standin = TesseraStandIn(keys or [tessera_key()], list(peers or ()))
    await standin.start()
    try:
        yield standin
    finally:
        await standin.stop()
