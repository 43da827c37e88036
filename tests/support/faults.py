"""Faults injected after a nonce is allocated: a node that definitely rejects every n-th
submitted transaction (as a node refuses one it will never accept, before any mempool), and an
HSM whose every n-th signature fails (signer.errors.HsmError, raised where the real key would
have signed: a fault, not a faked result)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from eth_hash.auto import keccak

from proxy.settings import Settings
from signer.base import Signature
from signer.errors import HsmError
from tests.support.checks import check_raw_transaction
from tests.support.forwarder import Forwarder
from tests.support.stack import CHAIN_ID

INTRINSIC_GAS = {"code": -32000, "message": "intrinsic gas too low"}


class RejectingForwarder(Forwarder):
    """A node that answers every `every`-th eth_sendRawTransaction with `error` and never passes
    it on; the rest reach the real node. It also so refuses the first `fills` 0-value
    self-transfers it gets (the proxy's fills of holes): the same fault, met by the repair.
    `rejected` holds the hashes it turned away."""

    def __init__(self, target: str, every: int = 7, fills: int = 0,
                 error: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(target)
        self.every = every
        self.fills = fills
        self.error = error or INTRINSIC_GAS
        self.sends = 0
        self.rejected: list[str] = []
        self.rejected_fills: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        message = json.loads(await request.read())  # aiohttp keeps the body for the parent
        if isinstance(message, dict) and message.get("method") == "eth_sendRawTransaction":
            self.sends += 1
            raw = bytes.fromhex(str(message["params"][0])[2:])
            fill = self.fills > len(self.rejected_fills) and _is_fill(raw)
            if fill or (self.every and self.sends % self.every == 0):
                self.rejected.append("0x" + keccak(raw).hex())
                if fill:
                    self.rejected_fills.append(self.rejected[-1])
                self.seen.append((dict(request.headers), message))
                return web.json_response({"jsonrpc": "2.0", "id": message.get("id"),
                                          "error": self.error})  # fmt: skip
        return await super()._handle(request)


def _is_fill(raw: bytes) -> bool:
    """A 0-value transfer to its own sender with no data."""
    tx = check_raw_transaction(raw, chain_id=CHAIN_ID)
    to, value, data = (tx.fields[3], tx.fields[4], tx.fields[5]) if tx.type == 0 else (
        tx.fields[-4], tx.fields[-3], tx.fields[-2])  # fmt: skip
    return bool(to == tx.sender and value in (b"", b"\x00") and data == b"")


@contextlib.contextmanager
def fronts_in_thread(*fronts: Forwarder) -> Iterator[tuple[Forwarder, ...]]:
    """Forwarders served from an event loop of their own, so that a test that blocks (starting
    a `serve`, reading the chain) never stalls them."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fronts", daemon=True)
    thread.start()
    try:
        for front in fronts:
            asyncio.run_coroutine_threadsafe(front.start(), loop).result(timeout=10)
        yield fronts
    finally:
        for front in fronts:
            asyncio.run_coroutine_threadsafe(front.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


class HsmFaults:
    """Every `every`-th signature made with a key the proxy's keyring hands out raises
    HsmError instead of reaching the HSM; the others are the HSM's own. With `hang_at`, that
    signature (counted from 1) waits until `unhang()` before the HSM makes it: a stuck HSM
    call, or a replica paused mid-request."""

    def __init__(self, every: int = 7, hang_at: int | None = None) -> None:
        self.every = every
        self.hang_at = hang_at
        self.signatures = 0
        self.failed = 0
        self.hanging = asyncio.Event()  # set while the hung signature waits
        self._unhung = asyncio.Event()

    def unhang(self) -> None:
        self._unhung.set()

    def install(self, app: web.Application) -> None:
        from proxy.app import SERVICES

        keyring = app[SERVICES].keyring
        original = keyring.signer
        faults = self

        async def signer(*args: Any, **kwargs: Any) -> Any:
            return _FaultyKey(await original(*args, **kwargs), faults)

        keyring.signer = signer  # type: ignore[method-assign]

    def next_fails(self) -> bool:
        self.signatures += 1
        if self.every and self.signatures % self.every == 0:
            self.failed += 1
            return True
        return False

    async def maybe_hang(self) -> None:
        if self.hang_at is not None and self.signatures == self.hang_at:
            self.hanging.set()
            await self._unhung.wait()


class _FaultyKey:
    def __init__(self, key: Any, faults: HsmFaults) -> None:
        self._key = key
        self._faults = faults

    @property
    def address(self) -> bytes:
        return bytes(self._key.address)

    async def sign_digest_async(self, digest: bytes) -> Signature:
        if self._faults.next_fails():
            raise HsmError("CKR_DEVICE_ERROR (injected by the test)")
        await self._faults.maybe_hang()
        signature: Signature = await self._key.sign_digest_async(digest)
        return signature

    def sign_digest(self, digest: bytes) -> Signature:
        if self._faults.next_fails():
            raise HsmError("CKR_DEVICE_ERROR (injected by the test)")
        signature: Signature = self._key.sign_digest(digest)
        return signature

    def __getattr__(self, name: str) -> Any:
        return getattr(self._key, name)


@contextlib.asynccontextmanager
async def in_process_app(settings: Settings) -> AsyncIterator[tuple[str, web.Application]]:
    """The app behind a real HTTP server on loopback: its base URL and the app (to reach its
    services, as HsmFaults does)."""
    from aiohttp.test_utils import TestServer

    from proxy.app import create_app

    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), server.app
    finally:
        await server.close()
