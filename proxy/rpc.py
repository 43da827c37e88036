"""JSON-RPC 2.0 framing: parse a body into requests, and build results and errors.

Pure functions over bytes and plain values. A batch yields one entry per item (a request or the
error that item earns), so that one bad item never spoils its neighbours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.errors import InvalidRequest, ParseError, ProxyError

MAX_BATCH = 100
# Deeper JSON is refused before parsing: CPython's C decoder can overflow the C stack on deeply
# nested input (seen here: a segfault at 100k levels) instead of raising RecursionError.
MAX_DEPTH = 64
_LONG_NUMBER = re.compile(rb"[0-9]{19}")
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(body: bytes) -> bool:
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


@dataclass(frozen=True)
class RpcRequest:
    method: str
    params: list[Any] | dict[str, Any] | None
    id: Any = None
    notification: bool = False

    @property
    def positional(self) -> list[Any]:
        """Params as a list (absent params are an empty list, as clients such as cast send)."""
        if self.params is None:
            return []
        if isinstance(self.params, list):
            return self.params
        return [self.params]


@dataclass(frozen=True)
class BadItem:
    """A batch item that is not a valid request: answered with `error` under `id`."""

    error: ProxyError
    id: Any = None


def parse_body(body: bytes) -> RpcRequest | list[RpcRequest | BadItem]:
    """One request, or a batch of items; `ParseError` / `InvalidRequest` for the whole body."""
    if _too_deep(body):
        raise ParseError(f"parse error: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        decoded = loads(body)
    except (ValueError, RecursionError):
        raise ParseError("parse error: the body is not valid JSON") from None
    if isinstance(decoded, list):
        if not decoded:
            raise InvalidRequest("invalid request: an empty batch")
        if len(decoded) > MAX_BATCH:
            raise InvalidRequest(f"invalid request: a batch holds at most {MAX_BATCH} requests")
        items: list[RpcRequest | BadItem] = []
        for item in decoded:
            try:
                items.append(parse_request(item))
            except InvalidRequest as exc:
                items.append(BadItem(exc, _valid_id(item)))
        return items
    return parse_request(decoded)


def _valid_id(item: Any) -> Any:
    if isinstance(item, dict):
        value = item.get("id")
        if value is None or isinstance(value, str) or _is_number(value):
            return value
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_request(item: Any) -> RpcRequest:
    if not isinstance(item, dict):
        raise InvalidRequest("invalid request: a JSON-RPC request is an object")
    if item.get("jsonrpc") != "2.0":
        raise InvalidRequest('invalid request: "jsonrpc" must be "2.0"')
    method = item.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest('invalid request: "method" must be a non-empty string')
    params = item.get("params")
    if params is not None and not isinstance(params, list | dict):
        raise InvalidRequest('invalid request: "params" must be an array or an object')
    if "id" not in item:
        return RpcRequest(method, params, None, notification=True)
    request_id = item["id"]
    if not (request_id is None or isinstance(request_id, str) or _is_number(request_id)):
        raise InvalidRequest('invalid request: "id" must be a string, a number or null')
    return RpcRequest(method, params, request_id)


def result(request_id: Any, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: Any, exc: ProxyError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        body["data"] = exc.data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


def loads(body: bytes) -> Any:
    """JSON exactly as the standard library reads it, read by orjson where that gives the same
    values: orjson refuses NaN and lone surrogates, which the standard library takes, and reads
    integers beyond 64 bits as floats (a body with 19 digits in a row goes the slow way)."""
    if _LONG_NUMBER.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(body)


def dumps(value: Any) -> bytes:
    """`value` as compact JSON bytes, by orjson where it can (not integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def result_bytes(id_json: bytes, result_json: bytes) -> bytes:
    """A JSON-RPC result answer built from its id and result, each already JSON."""
    return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (id_json, result_json)


def id_json(request_id: Any) -> bytes:
    """A request's id as JSON, to splice into an answer built as bytes."""
    if type(request_id) is int:
        return str(request_id).encode()
    return json.dumps(request_id).encode()
