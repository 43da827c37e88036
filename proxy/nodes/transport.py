"""One node's JSON-RPC over HTTP: posts one request, returns its `result`, and classifies each
failure: the node's own error, no connection free or no answer in time, or a transport failure
that surely never left or may have been delivered. What to do about it is the pool's business.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from proxy import rpc
from proxy.errors import (
    NodeAnswerTooLarge,
    NodeBusy,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    SettingsError,
)
from proxy.nodes.http import NodeHttp, http_endpoint

# Seconds a node that did not answer a batch as a batch is not sent batches (its reads go one by
# one meanwhile), before it is tried again.
BATCHES_REFUSED_SECONDS = 60.0
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
        *,
        connect_timeout: float,
        max_connections: int,
        max_response_bytes: int,
    ) -> None:
        self.masked = mask_url(url)
        endpoint = http_endpoint(url)
        if endpoint is None:
            raise SettingsError(f"QSIGNER_UPSTREAMS: {self.masked} is not an http(s) URL")
        # Credentials travel as a header, never in a URL that an exception or a log could quote.
        self.endpoint, headers = endpoint
        headers["Content-Type"] = "application/json"
        # Requests sent or waiting for a connection: the pool sends new ones to the least busy.
        self.in_flight = 0
        # Only the connect has a timeout of its own: a node that never accepted the connection
        # surely never got the request (safe to retry a send elsewhere). The whole request's
        # deadline is the caller's, below, and is not a transport failure. Idle connections are
        # kept for the capped requests and the two health probes.
        self._http = NodeHttp(self.endpoint, headers, connect_timeout=connect_timeout,
                              max_response_bytes=max_response_bytes,
                              max_idle=max_connections + 2)  # fmt: skip
        # Requests to this node at once, hence its connections: one slow node holds at most
        # this many, however many callers wait on it.
        self._connections = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._request_ids = itertools.count(1)
        # Until when batches are not tried (monotonic): a node (or its gateway) that answered a
        # batch other than as a batch is not asked again for a while.
        self._batches_refused_until = float("-inf")

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
        _, status, body = await self._exchange(method, params, headers, timeout, capped)
        return _json_rpc_result(status, body)

    async def forward(
        self,
        method: str,
        params: Any,
        headers: Mapping[str, str] | None,
        caller_id: bytes,
        *,
        timeout: float,
    ) -> bytes:
        """The node's whole answer to one request, as the caller is to be answered: the node's
        bytes, with the caller's id (`caller_id`, as JSON) in place of ours. The id is spliced
        in without parsing the result when the answer starts the way nodes write it (geth,
        GoQuorum, Besu, anvil); any other answer is decoded, and fails as `request` fails."""
        request_id, status, body = await self._exchange(method, params, headers, timeout, True)
        prefix = b'{"jsonrpc":"2.0","id":%d,"result":' % request_id
        if 200 <= status < 300 and body.startswith(prefix) and body.rstrip().endswith(b"}"):
            return b'{"jsonrpc":"2.0","id":%s,"result":%s' % (caller_id, body[len(prefix) :])
        return rpc.result_bytes(caller_id, rpc.dumps(_json_rpc_result(status, body)))

    async def forward_batch(
        self, calls: list[tuple[str, Any]], headers: Mapping[str, str] | None, *, timeout: float
    ) -> list[bytes | NodeError] | None:
        """`calls` (method, params) sent to the node as one JSON-RPC batch: per call, in order,
        the JSON of its result or the node's error; None when the node does not answer the batch
        as a batch (one that takes no batches answers with one error), and then for
        BATCHES_REFUSED_SECONDS without asking it."""
        if time.monotonic() < self._batches_refused_until:
            return None
        first = next(self._request_ids)
        for _ in range(len(calls) - 1):
            next(self._request_ids)
        batch = [
            {"jsonrpc": "2.0", "id": first + n, "method": method}
            | ({} if params is None else {"params": params})
            for n, (method, params) in enumerate(calls)
        ]
        _, status, body = await self._exchange("batch", batch, headers, timeout, True, raw=True)
        try:
            answers = rpc.loads(body)
        except ValueError:
            answers = None
        if not (200 <= status < 300 and isinstance(answers, list)):
            self._batches_refused_until = time.monotonic() + BATCHES_REFUSED_SECONDS
            return None
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        out: list[bytes | NodeError] = []
        for n in range(len(calls)):
            answer = by_id.get(first + n)
            if answer is None:
                return None
            try:
                out.append(rpc.dumps(_result_of(status, answer)))
            except NodeError as error:
                out.append(error)
            except NodeUnreachable:  # not an answer of JSON-RPC's
                return None
        return out

    def close(self) -> None:
        """Closes the idle connections (those under way close as their request ends)."""
        self._http.close()

    async def _exchange(
        self,
        method: str,
        params: Any,
        headers: Mapping[str, str] | None,
        timeout: float,
        capped: bool,
        *,
        raw: bool = False,
    ) -> tuple[int, int, bytes]:
        """(our request id, HTTP status, body) of one request to the node; with `raw`, `params`
        is the whole body to send (a batch) and `method` only names it in errors."""
        if raw:
            request_id, payload = 0, rpc.dumps(params)
        else:
            request_id = next(self._request_ids)
            request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
            if params is not None:
                request["params"] = params
            payload = rpc.dumps(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.in_flight += 1
        acquired = False
        try:
            if capped:
                if self._connections.locked():
                    try:
                        async with asyncio.timeout_at(deadline):
                            await self._connections.acquire()
                    except TimeoutError:  # still waiting for a connection: not a byte left
                        raise NodeBusy(
                            f"no connection to the node came free within {timeout:g} s "
                            f"({self._max_connections} requests under way)"
                        ) from None
                else:
                    await self._connections.acquire()  # free: returns at once
                acquired = True
            try:
                status, body = await self._http.post(payload, headers, deadline)
            except NodeAnswerTooLarge:
                raise NodeAnswerTooLarge(
                    f"{method}: the node's answer is larger than {self._max_response_bytes} "
                    "bytes (QSIGNER_MAX_RESPONSE_BYTES); ask for less (e.g. a narrower block "
                    "range)"
                ) from None
            except NodeTimeout:
                # The node took the request (or has `max_connections` under way) but did not
                # answer in time: a fault of this request, not a sign that the node is down.
                raise NodeTimeout(f"no answer from the node within {timeout:g} s") from None
        finally:
            if acquired:
                self._connections.release()
            self.in_flight -= 1
        return request_id, status, body


def _json_rpc_result(status: int, body: bytes | bytearray) -> Any:
    """The `result` of a node's answer; its JSON-RPC error as NodeError; else a node failure."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return _result_of(status, answer)


def _result_of(status: int, answer: Any) -> Any:
    """`_json_rpc_result` of an answer already decoded."""
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
