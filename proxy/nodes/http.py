"""HTTP/1.1 POSTs to one node over keep-alive connections, for the node transport.

A node's JSON-RPC is one kind of request (POST, JSON, a small fixed set of headers) to one URL,
so the client does only that: each request's head is built once, bytes go straight to an
asyncio transport, and the answer is parsed by httptools (the C parser uvicorn uses). This is
what lets the proxy's passthrough outrun a bare aiohttp forwarder (bench/passthrough.py):
aiohttp's general client spends more per request than the rest of the proxy together.

Failures are the transport's own (proxy.errors): NodeUnreachable says whether the request may
have reached the node (`delivered`), which decides whether a send may be tried elsewhere;
NodeTimeout is the caller's deadline; NodeAnswerTooLarge the size cap. Whatever ends an exchange
early closes its connection: a connection goes back to the idle list only after a complete
answer that allows keep-alive.
"""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import ssl
import time
import zlib
from collections.abc import Mapping

import httptools
from yarl import URL

from proxy.errors import NodeAnswerTooLarge, NodeTimeout, NodeUnreachable

KEEPALIVE_SECONDS = 30.0  # an idle connection older than this is closed rather than reused


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one exchange at a time; httptools calls the `on_*` methods."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body = bytearray()
        self._encoding = b""
        self.closed = False
        self.idle_since = 0.0
        self._poll = select.poll()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._poll.register(transport.get_extra_info("socket").fileno(), select.POLLIN)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_lost("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(_lost("the node's answer is not valid HTTP"))
            self.close()

    # httptools
    def on_message_begin(self) -> None:
        self._body = bytearray()
        self._encoding = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-encoding":
            self._encoding = value.strip().lower()
        elif lowered == b"content-length" and value.strip().isdigit() and int(value) > self._cap:
            self._too_large()

    def on_body(self, data: bytes) -> None:
        if self._waiter is None:
            return
        self._body += data
        if len(self._body) > self._cap and self._encoding in (b"", b"identity"):
            self._too_large()

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if not self._parser.should_keep_alive():
            self.close()
        try:
            body = _decoded(bytes(self._body), self._encoding, self._cap)
        except NodeAnswerTooLarge as exc:
            waiter.set_exception(exc)
            self.close()
            return
        except zlib.error:
            body = bytes(self._body)  # left as it came: it will not read as JSON-RPC
        waiter.set_result((self._parser.get_status_code(), body))

    # ours
    def usable(self, now: float) -> bool:
        """Whether an idle connection may carry the next request. One that the node closed
        while it sat idle (a node restart) is readable (its end of file) even when the loop
        has not yet seen it: writing to it would leave unknown whether the node got the
        request, so it is dropped here, where nothing has been sent yet."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if now - self.idle_since >= KEEPALIVE_SECONDS:
            return False
        return not self._poll.poll(0)

    async def exchange(self, request: bytes, deadline: float) -> tuple[int, bytes]:
        """The answer to `request`; NodeTimeout at `deadline` (the loop's clock)."""
        if self.transport is None:  # pragma: no cover - connections are made connected
            raise NodeUnreachable("not connected", delivered=False)
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        # A timer of the loop's rather than asyncio.timeout: it costs a tenth as much per call.
        timer = loop.call_at(deadline, self._expire)
        try:
            self.transport.write(request)
            return await self._waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _expire(self) -> None:
        self._fail(NodeTimeout("no answer in time"))

    def _too_large(self) -> None:
        self._fail(NodeAnswerTooLarge("the node's answer is over the size cap"))
        self.close()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _lost(reason: str) -> NodeUnreachable:
    return NodeUnreachable(reason, delivered=True)


def _decoded(body: bytes, encoding: bytes, cap: int) -> bytes:
    """The body without its gzip / deflate content encoding (asked for or not), within `cap`."""
    if encoding in (b"", b"identity"):
        return body
    if encoding not in (b"gzip", b"x-gzip", b"deflate"):
        return body
    try:
        inflater = zlib.decompressobj(47)  # gzip or zlib headers, told apart by their magic
        out = inflater.decompress(body, cap + 1)
    except zlib.error:
        if encoding != b"deflate":
            raise
        inflater = zlib.decompressobj(-15)  # some servers send a raw deflate stream
        out = inflater.decompress(body, cap + 1)
    if len(out) > cap or inflater.unconsumed_tail:
        raise NodeAnswerTooLarge("the node's answer is over the size cap")
    return out


class NodeHttp:
    """POSTs of JSON to one URL (or GETs, with `method`), over connections kept alive between
    requests."""

    def __init__(self, url: URL, headers: Mapping[str, str], *, connect_timeout: float,
                 max_response_bytes: int, max_idle: int, method: str = "POST") -> None:  # fmt: skip
        self._host = url.raw_host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._cap = max_response_bytes
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        lines = [f"{method} {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {url.raw_authority}"]
        lines += [f"{name}: {_header_value(value)}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def post(self, body: bytes, headers: Mapping[str, str] | None, deadline: float
                   ) -> tuple[int, bytes]:  # fmt: skip
        """(HTTP status, body) of the node's answer; NodeUnreachable, NodeAnswerTooLarge, or
        NodeTimeout at `deadline` (the loop's clock)."""
        head = self._head
        if headers:
            head += "".join(f"{name}: {_header_value(value)}\r\n"
                            for name, value in headers.items()).encode("latin-1")  # fmt: skip
        request = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        connection = self._reuse() or await self._connect(deadline)
        finished = False
        try:
            answer = await connection.exchange(request, deadline)
            finished = True
            return answer
        finally:
            if finished and not connection.closed and len(self._idle) < self._max_idle:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely closed
            if connection.usable(now):
                return connection
            connection.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connect_by = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(min(deadline, connect_by)):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._cap), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )  # fmt: skip
        except TimeoutError:
            if deadline < connect_by:  # the caller's time ran out, not the node's
                raise NodeTimeout("no connection in time") from None
            raise NodeUnreachable("timed out connecting", delivered=False) from None
        except socket.gaierror:
            raise NodeUnreachable("host name not found", delivered=False) from None
        except ConnectionRefusedError:
            raise NodeUnreachable("connection refused", delivered=False) from None
        except ssl.SSLError:
            raise NodeUnreachable("TLS handshake with the node failed", delivered=False) from None
        except OSError:
            raise NodeUnreachable("could not connect", delivered=False) from None
        return connection


def http_endpoint(url: str) -> tuple[URL, dict[str, str]] | None:
    """`url` without its credentials, and the header that carries them instead (HTTP Basic), so
    that no exception or log can quote them; None when `url` is not an http(s) URL."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    headers: dict[str, str] = {}
    if parsed.user is not None:
        user_pass = f"{parsed.user}:{parsed.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
    return parsed.with_user(None).with_fragment(None), headers


def _header_value(value: str) -> str:
    """A header value as sent; one holding a line break would forge headers, and is refused."""
    if "\r" in value or "\n" in value:
        raise ValueError("a header value may not hold a line break")
    return value
