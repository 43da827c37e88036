"""Organisations' Tessera nodes: storing a private transaction's payload (GoQuorum privacy).

Tessera's third-party API, `POST /storeraw` with `{"payload": base64, "from": base64 key}`,
answers `{"key": base64}`: the 64-byte hash that replaces the transaction's `data`. The payload
is encrypted and kept by the organisation's Tessera; the node that later gets the signed
transaction (`eth_sendRawPrivateTransaction`) has its own Tessera send it to the recipients.
Each Tessera URL gets a keep-alive client of its own (proxy/nodes/http.py), credentials in the
URL moving to a header as for nodes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import string

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

MAX_ANSWER = 64 * 1024  # a storeraw answer is one base64 key
_SHOWN = set(string.printable) - set("\r\n\t\x0b\x0c")


class Tessera:
    """`store_raw` against any organisation's Tessera, one connection pool per URL."""

    def __init__(self, *, timeout: float, connect_timeout: float = 2.0) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._clients: dict[str, NodeHttp] = {}

    async def store_raw(self, url: str, payload: bytes, sender: str | None) -> bytes:
        """Stores `payload` (sent from Tessera key `sender`, or Tessera's default key) and
        returns its 64-byte hash; TesseraError when it is not stored."""
        shown = f"Tessera at {mask_url(url)}"
        request: dict[str, str] = {"payload": base64.b64encode(payload).decode()}
        if sender is not None:
            request["from"] = sender
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            status, body = await self._client(url).post(orjson.dumps(request), None, deadline)
        except NodeUnreachable as failure:
            raise TesseraError(
                f"{shown} is unreachable ({failure.reason}); nothing was signed"
            ) from None
        except NodeTimeout:
            raise TesseraError(f"{shown} did not answer within {self._timeout:g} s; nothing "
                               "was signed") from None  # fmt: skip
        except NodeAnswerTooLarge:
            raise TesseraError(f"{shown} answered more than {MAX_ANSWER} bytes to storeraw; "
                               "nothing was signed") from None  # fmt: skip
        if not 200 <= status < 300:
            said = "".join(c for c in body[:200].decode("utf-8", "replace") if c in _SHOWN)
            raise TesseraError(f"{shown} refused the private payload (HTTP {status}"
                               + (f": {said.strip()}" if said.strip() else "")
                               + "); nothing was signed")  # fmt: skip
        try:
            key = base64.b64decode(orjson.loads(body)["key"], validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error):
            key = b""
        if len(key) != 64:
            raise TesseraError(f"{shown} answered storeraw without a 64-byte key; nothing was "
                               "signed")  # fmt: skip
        return key

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def _client(self, url: str) -> NodeHttp:
        client = self._clients.get(url)
        if client is None:
            found = http_endpoint(url)
            if found is None:
                raise SettingsError(f"{mask_url(url)} is not an http(s) URL of a Tessera")
            endpoint, headers = found
            headers.update({"Content-Type": "application/json", "Accept": "application/json"})
            endpoint = endpoint.with_query(None)
            endpoint = endpoint.with_path(endpoint.path.rstrip("/") + "/storeraw")
            client = self._clients[url] = NodeHttp(
                endpoint, headers, connect_timeout=self._connect_timeout,
                max_response_bytes=MAX_ANSWER, max_idle=8,
            )  # fmt: skip
        return client
