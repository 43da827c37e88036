"""JSON-RPC framing: every malformed shape gets its own clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidRequest, ParseError, ProxyError
from proxy.rpc import MAX_BATCH, BadItem, RpcRequest, error, parse_body, result


def test_single_request_and_params_forms() -> None:
    req = parse_body(b'{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}')
    assert req == RpcRequest("eth_chainId", None, 7)
    assert isinstance(req, RpcRequest) and req.positional == []
    req = parse_body(b'{"jsonrpc":"2.0","id":"a","method":"m","params":{"k":1}}')
    assert isinstance(req, RpcRequest) and req.positional == [{"k": 1}]


def test_notification_has_no_id() -> None:
    req = parse_body(b'{"jsonrpc":"2.0","method":"m"}')
    assert isinstance(req, RpcRequest) and req.notification


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"not json", ParseError),
        (b"[" * 100_000, ParseError),
        (b"[]", InvalidRequest),
        (b"42", InvalidRequest),
        (b'{"jsonrpc":"1.0","id":1,"method":"m"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"m"}', InvalidRequest),
        (b'{"jsonrpc":"2.0","id":true,"method":"m"}', InvalidRequest),
    ],
)
def test_bad_bodies(body: bytes, kind: type[ProxyError]) -> None:
    with pytest.raises(kind):
        parse_body(body)


def test_nesting_is_bounded_but_brackets_in_strings_are_text() -> None:
    with pytest.raises(ParseError, match="nested deeper"):
        parse_body(b"[" * 65 + b"]" * 65)
    deep_but_legal = (
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":' + b"[" * 60 + b"]" * 60 + b"}"
    )
    assert isinstance(parse_body(deep_but_legal), RpcRequest)
    text = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m", "params": ["[{" * 500 + '\\"']})
    assert isinstance(parse_body(text.encode()), RpcRequest)


def test_batch_items_fail_alone() -> None:
    items = parse_body(b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 5, {"id":3,"method":"b"}]')
    assert isinstance(items, list) and len(items) == 3
    assert items[0] == RpcRequest("a", None, 1)
    assert isinstance(items[1], BadItem) and items[1].id is None
    assert isinstance(items[2], BadItem) and items[2].id == 3


def test_batch_size_limit() -> None:
    batch = [{"jsonrpc": "2.0", "id": i, "method": "m"} for i in range(MAX_BATCH + 1)]
    with pytest.raises(InvalidRequest, match="at most"):
        parse_body(json.dumps(batch).encode())


def test_ids_are_echoed_exactly() -> None:
    for request_id in (0, -1, 1.5, "", "x" * 100, None, 2**70):
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "m"}).encode()
        req = parse_body(body)
        assert isinstance(req, RpcRequest)
        assert result(req.id, 1)["id"] == request_id
        assert error(req.id, InvalidRequest("x"))["id"] == request_id


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4),
                    max_leaves=20))  # fmt: skip
def test_any_json_gives_a_request_or_a_json_rpc_error(value: object) -> None:
    try:
        parsed = parse_body(json.dumps(value).encode())
    except ProxyError as exc:
        assert exc.code in (-32700, -32600)
        return
    assert isinstance(parsed, RpcRequest | list)
