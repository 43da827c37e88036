"""One node's JSON-RPC over HTTP: posts one request, returns its `result`, and classifies each
failure: the node's own error, no connection free or no answer in time, or a transport failure
that surely never left or may have been delivered. What to do about it is the pool's business.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import (
    NodeAnswerTooLarge,
    NodeBusy,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    SettingsError,
)

_URL_PARTS = re.compile(r"^(?:(?P<scheme>[^:/?#]+)://)?(?P<authority>[^/?#]*)(?P<rest>.*)$", re.S)


def mask_url(url: str) -> str:
    """`url` fit to show in /readyz, /metrics, logs and errors: scheme, host and port only.

    User info, path, query and fragment may all hold a secret (`user:pass@`, Infura's
    `/v3/<key>`, `?apikey=`): each is replaced by `***`.
    """
    # Parsed by hand rather than with urlsplit: a URL missing its scheme ("user:pw@host") would
    # otherwise read as scheme "user" and show the password as a path.
    parts = _URL_PARTS.match(url)
    if parts is None:  # pragma: no cover - the pattern matches every string
        return "***"
    authority = parts["authority"]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    rest = "" if parts["rest"] in ("", "/") else "/***"
    scheme = f"{parts['scheme']}://" if parts["scheme"] else ""
    return f"{scheme}{authority}{rest}"


class NodeTransport:
    """JSON-RPC requests to one node: its URL (credentials moved to a header), its requests in
    flight and its caps on connections and answer size. Raises NodeError for the node's own
    JSON-RPC error, NodeBusy when no connection came free in time (nothing sent), NodeTimeout
    when no answer came in time, NodeAnswerTooLarge over the size cap, NodeUnreachable for a
    transport failure."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        connect_timeout: float,
        max_connections: int,
        max_response_bytes: int,
    ) -> None:
        self.masked = mask_url(url)
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise SettingsError(f"QSIGNER_UPSTREAMS: {self.masked} is not an http(s) URL")
        # Credentials travel as a header, never in the URL aiohttp sees: its exceptions and
        # logs quote the URL.
        self.endpoint = parsed.with_user(None).with_fragment(None)
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if parsed.user is not None:
            user_pass = f"{parsed.user}:{parsed.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
        # Requests sent or waiting for a connection: the pool sends new ones to the least busy.
        self.in_flight = 0
        self._session = session
        # Only the socket connect has an aiohttp timeout: a node that never accepted the
        # connection surely never got the request (safe to retry a send elsewhere). The whole
        # request's deadline is the caller's, below, and is not a transport failure.
        self._connect_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        # Requests to this node at once, hence its connections: one slow node holds at most
        # this many, however many callers wait on it.
        self._connections = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._request_ids = itertools.count(1)

    async def request(
        self,
        method: str,
        params: Any = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float,
        capped: bool = True,
    ) -> Any:
        """Post one request and return its `result`, within `timeout` seconds (waiting for a
        connection included). `capped=False` is for health probes: a node busy with slow
        requests still shows whether it answers."""
        request: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": next(self._request_ids),
            "method": method,
        }
        if params is not None:
            request["params"] = params
        request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        request_headers.update(self.headers)
        self.in_flight += 1
        sending = False
        try:
            async with (
                asyncio.timeout(timeout),
                self._connections if capped else contextlib.nullcontext(),
            ):
                sending = True
                try:
                    async with self._session.post(
                        self.endpoint,
                        data=json.dumps(request, separators=(",", ":")).encode(),
                        headers=request_headers,
                        timeout=self._connect_timeout,
                    ) as response:
                        status = response.status
                        body = await self._read_capped(response, method)
                except aiohttp.ClientError as exc:
                    delivered = not _surely_not_sent(exc)
                    raise NodeUnreachable(_describe(exc), delivered=delivered) from None
        except TimeoutError:
            if not sending:  # still waiting for a connection: not a byte left
                raise NodeBusy(
                    f"no connection to the node came free within {timeout:g} s "
                    f"({self._max_connections} requests under way)"
                ) from None
            # The node took the request (or has `max_connections` under way) but did not answer
            # in time: a fault of this request, not a sign that the node is down.
            raise NodeTimeout(f"no answer from the node within {timeout:g} s") from None
        finally:
            self.in_flight -= 1
        return _json_rpc_result(status, body)

    async def _read_capped(self, response: aiohttp.ClientResponse, method: str) -> bytearray:
        cap = self._max_response_bytes
        # Counted as it arrives too, after decompression: a chunked or gzipped answer has no
        # length to check beforehand.
        body = bytearray()
        if (response.content_length or 0) <= cap:
            async for chunk in response.content.iter_any():
                body += chunk
                if len(body) > cap:
                    break
        if len(body) > cap or (response.content_length or 0) > cap:
            raise NodeAnswerTooLarge(
                f"{method}: the node's answer is larger than {cap} bytes "
                "(QSIGNER_MAX_RESPONSE_BYTES); ask for less (e.g. a narrower block range)"
            )
        return body


def _json_rpc_result(status: int, body: bytes | bytearray) -> Any:
    """The `result` of a node's answer; its JSON-RPC error as NodeError; else a node failure."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            message = error.get("message")
            raise NodeError(
                error["code"],
                message if isinstance(message, str) else "",
                error.get("data"),
                http_status=status if status >= 400 else 200,
            )
        if "result" in answer and 200 <= status < 300:
            return answer["result"]
    # A proxy in front of the node answering 502 with an HTML page, a truncated body: the request
    # reached something, so a send cannot be retried safely, but the node is not usable.
    raise NodeUnreachable(f"HTTP {status}, not a JSON-RPC answer", delivered=True)


def _surely_not_sent(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return True
    # A keep-alive connection that the node closed while it sat idle in the pool (the node
    # restarted): aiohttp refuses the write of headers and body, which `request` hands it as one
    # buffer, so not a byte of the request left. Only the cause's message tells this from a
    # connection lost after writing; should that wording change, we fall back to "maybe sent".
    return any(
        isinstance(error, aiohttp.ClientConnectionResetError) and "closing transport" in str(error)
        for error in (exc, exc.__cause__)
    )


def _describe(exc: BaseException) -> str:
    """Why a request failed, in words that never quote the URL (it may hold credentials)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return "could not connect"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timed out connecting"
    if _surely_not_sent(exc):
        return "connection closed by the node while idle"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "connection closed before the answer"
    return f"transport error ({type(exc).__name__})"
