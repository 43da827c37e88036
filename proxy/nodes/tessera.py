"""Organisations' Tessera nodes: storing a private transaction's payload (GoQuorum privacy).

Tessera's third-party API:
- `POST /storeraw` with `{"payload": base64, "from": base64 key}` answers `{"key": base64}`: the
  64-byte hash that replaces the transaction's `data`. The payload is encrypted and kept by the
  organisation's Tessera; the node that later gets the signed transaction
  (`eth_sendRawPrivateTransaction`) has its own Tessera send it to the recipients.
- `GET /partyinfo/keys` answers `{"keys": [{"key": base64}, ...]}`: every public key the
  Tessera network knows. A recipient outside it is refused before any nonce is taken (GoQuorum
  would refuse the transaction only once signed, at its own Tessera).
Each Tessera URL gets keep-alive clients of its own (proxy/nodes/http.py), credentials in the
URL moving to a header as for nodes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import string
import time
from collections.abc import Iterable

import orjson

from proxy.errors import (
    NodeAnswerTooLarge,
    NodeTimeout,
    NodeUnreachable,
    SettingsError,
    TesseraError,
)
from proxy.nodes.http import NodeHttp, http_endpoint
from proxy.nodes.transport import mask_url

MAX_ANSWER = 1024 * 1024  # a storeraw answer is one key; party info, every key of the network
PARTY_KEYS_FRESH = 10.0  # seconds the network's keys are taken as known without asking again
_SHOWN = set(string.printable) - set("\r\n\t\x0b\x0c")


class Tessera:
    """`store_raw` and `check_recipients` against any organisation's Tessera, connections
    kept per URL."""

    def __init__(self, *, timeout: float, connect_timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._clients: dict[tuple[str, str], NodeHttp] = {}
        self._party: dict[str, tuple[float, frozenset[str]]] = {}

    async def store_raw(self, url: str, payload: bytes, sender: str | None) -> bytes:
        """Stores `payload` (sent from Tessera key `sender`, or Tessera's default key) and
        returns its 64-byte hash; TesseraError when it is not stored."""
        request: dict[str, str] = {"payload": base64.b64encode(payload).decode()}
        if sender is not None:
            request["from"] = sender
        body = await self._call(url, "storeraw", orjson.dumps(request), "refused the private "
                                "payload")  # fmt: skip
        try:
            key = base64.b64decode(orjson.loads(body)["key"], validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error):
            key = b""
        if len(key) != 64:
            raise TesseraError(f"Tessera at {mask_url(url)} answered storeraw without a 64-byte "
                               "key; nothing was signed")  # fmt: skip
        return key

    async def check_recipients(self, url: str, keys: Iterable[str]) -> None:
        """TesseraError naming the first of `keys` the Tessera network does not know (its party
        info, read again when a key is missing from what was read over PARTY_KEYS_FRESH ago)."""
        wanted = list(keys)
        if not wanted:
            return
        known = self._party.get(url)
        now = time.monotonic()
        if known is None or (now - known[0] > PARTY_KEYS_FRESH
                             and any(key not in known[1] for key in wanted)):  # fmt: skip
            known = (now, await self._party_keys(url))
            self._party[url] = known
        unknown = [key for key in wanted if key not in known[1]]
        if unknown:
            raise TesseraError(
                f"Tessera at {mask_url(url)} knows no recipient with key {unknown[0]} (not in "
                "its party info); nothing was signed"
            )

    async def _party_keys(self, url: str) -> frozenset[str]:
        body = await self._call(url, "partyinfo/keys", b"", "refused to list its party keys")
        try:
            return frozenset(str(entry["key"]) for entry in orjson.loads(body)["keys"])
        except (ValueError, TypeError, KeyError):
            raise TesseraError(f"Tessera at {mask_url(url)} answered partyinfo/keys without "
                               "keys; nothing was signed") from None  # fmt: skip

    async def _call(self, url: str, path: str, body: bytes, refused: str) -> bytes:
        shown = f"Tessera at {mask_url(url)}"
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            status, answer = await self._client(url, path).post(body, None, deadline)
        except NodeUnreachable as failure:
            raise TesseraError(
                f"{shown} is unreachable ({failure.reason}); nothing was signed"
            ) from None
        except NodeTimeout:
            raise TesseraError(f"{shown} did not answer within {self._timeout:g} s; nothing "
                               "was signed") from None  # fmt: skip
        except NodeAnswerTooLarge:
            raise TesseraError(f"{shown} answered more than {MAX_ANSWER} bytes to {path}; "
                               "nothing was signed") from None  # fmt: skip
        if not 200 <= status < 300:
            said = "".join(c for c in answer[:200].decode("utf-8", "replace") if c in _SHOWN)
            raise TesseraError(f"{shown} {refused} (HTTP {status}"
                               + (f": {said.strip()}" if said.strip() else "")
                               + "); nothing was signed")  # fmt: skip
        return answer

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def _client(self, url: str, path: str) -> NodeHttp:
        client = self._clients.get((url, path))
        if client is None:
            found = http_endpoint(url)
            if found is None:
                raise SettingsError(f"{mask_url(url)} is not an http(s) URL of a Tessera")
            endpoint, headers = found
            headers["Accept"] = "application/json"
            if path == "storeraw":
                headers["Content-Type"] = "application/json"
            endpoint = endpoint.with_query(None)
            endpoint = endpoint.with_path(endpoint.path.rstrip("/") + "/" + path)
            client = self._clients[(url, path)] = NodeHttp(
                endpoint, headers, connect_timeout=self._connect_timeout,
                max_response_bytes=MAX_ANSWER, max_idle=8,
                method="POST" if path == "storeraw" else "GET",
            )  # fmt: skip
        return client
