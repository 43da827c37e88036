"""The WebSocket's pure rules: settings, the nodes' WebSocket URLs, which subscriptions share a
feed (and which are refused), and a feed delivering each head and log once, in order."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import InvalidParams, SettingsError
from proxy.nodes.websocket import websocket_endpoint, websocket_urls
from proxy.settings import Settings
from proxy.sockets.endpoint import api_key_id, origin_allowed
from proxy.sockets.feeds import Feed, header_of, subscription_key

ADDRESS = "0x" + "Ab" * 20
TOPIC = "0x" + "Cd" * 32


def test_websocket_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.ws_max_connections, defaults.ws_max_subscriptions,
            defaults.ws_max_message_bytes, defaults.ws_send_queue,
            defaults.ws_replay_blocks) == (32, 100, 1024 * 1024, 256, 256)  # fmt: skip
    settings = Settings.from_env({"QSIGNER_UPSTREAMS": "http://a:1,http://b:2",
                                  "QSIGNER_UPSTREAMS_WS": "ws://a:2, wss://b:3",
                                  "QSIGNER_WS_SEND_QUEUE": "8"})  # fmt: skip
    assert settings.upstreams_ws == ("ws://a:2", "wss://b:3") and settings.ws_send_queue == 8
    one_node_two_sockets = {"QSIGNER_UPSTREAMS": "http://a:1",
                            "QSIGNER_UPSTREAMS_WS": "ws://a:1,ws://b:1"}  # fmt: skip
    for bad in ({"QSIGNER_WS_MAX_SUBSCRIPTIONS": "0"}, {"QSIGNER_WS_MAX_MESSAGE_BYTES": "10"},
                one_node_two_sockets):  # fmt: skip
        with pytest.raises(SettingsError, match="QSIGNER_"):
            Settings.from_env(bad)


def test_websocket_urls_are_given_or_derived() -> None:
    derived = websocket_urls(("http://n1:8545", "https://user:pw@n2/v3/key"), ())
    assert derived == ["ws://n1:8545", "wss://user:pw@n2/v3/key"]
    assert websocket_urls(("http://n1:8545",), ("ws://n1:8546",)) == ["ws://n1:8546"]
    with pytest.raises(SettingsError, match="QSIGNER_UPSTREAMS_WS") as refused:
        websocket_urls(("http://n1:8545",), ("http://user:secret@n1:8546",))
    assert "secret" not in str(refused.value)
    url, headers = websocket_endpoint("wss://user:pw@n2/v3/key")
    assert str(url) == "wss://n2/v3/key" and headers["Authorization"].startswith("Basic ")


def test_origins_and_api_key_ids() -> None:
    assert origin_allowed(None, ())  # not a browser
    assert not origin_allowed("https://a.example", ())
    assert origin_allowed("https://a.example", ("https://a.example",))
    assert origin_allowed("https://b.example", ("*",))
    # The proxy's own pages (the web console): the origin's host is the one connected to.
    assert origin_allowed("http://signer.example:8545", (), "signer.example:8545")
    assert not origin_allowed("http://evil.example", (), "signer.example:8545")
    assert not origin_allowed("http://signer.example:8545.evil.example", (), "signer.example:8545")
    assert api_key_id("qsk_0123456789abcdef_" + "s" * 43) == "0123456789abcdef"
    assert api_key_id("eyJhbGciOi.x.y") is None


def test_equal_subscriptions_share_a_feed() -> None:
    one = subscription_key("logs", [{"address": ADDRESS, "topics": [TOPIC, None]}])
    two = subscription_key("logs", [{"address": ADDRESS.lower(), "topics": [TOPIC.lower(), None]}])
    assert one == two
    assert subscription_key("logs", [{"address": [ADDRESS]}]) != one
    assert subscription_key("newHeads", []) == ("newHeads", b"[]")
    assert subscription_key("logs", []) == subscription_key("logs", [{}])
    assert subscription_key("newPendingTransactions", [True]) != subscription_key(
        "newPendingTransactions", []
    )


@pytest.mark.parametrize("kind, params", [
    ("syncing", []), ("nonsense", []), ("newHeads", [{}]), ("logs", ["x"]),
    ("logs", [{"fromBlock": "0x1"}]), ("logs", [{"address": "0x12"}]),
    ("logs", [{"topics": ["0x12"]}]), ("logs", [{"topics": [[TOPIC, 7]]}]),
    ("logs", [{"topics": [None] * 5}]), ("newPendingTransactions", ["yes"]),
])  # fmt: skip
def test_subscriptions_refused_with_what_to_fix(kind: str, params: list[Any]) -> None:
    with pytest.raises(InvalidParams):
        subscription_key(kind, params)


def test_a_replayed_head_takes_the_nodes_own_shape() -> None:
    block = {"number": "0x5", "hash": "0xaa", "transactions": [], "size": "0x1", "miner": "0x0"}
    assert header_of(block, None) == {"number": "0x5", "hash": "0xaa", "miner": "0x0"}
    assert header_of(block, frozenset({"number", "hash", "transactions"})) == {
        "number": "0x5", "hash": "0xaa", "transactions": []}  # fmt: skip


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def notify(self, encoded: bytes) -> None:
        self.frames.append(encoded)


def _feed(kind: str) -> tuple[Feed, _Recorder]:
    feed = Feed((kind, b"[]", None), kind, [kind], {})
    recorder = _Recorder()
    feed.clients["0x1"] = recorder  # type: ignore[assignment]
    return feed, recorder


async def test_heads_go_out_in_increasing_numbers_once() -> None:
    feed, recorder = _feed("newHeads")
    for number in (5, 6, 6, 4, 8, 7, 9):
        feed.deliver({"number": hex(number), "hash": f"0x{number}"})
    assert [b'"0x%d"' % n in frame for n, frame in zip((5, 6, 8, 9), recorder.frames,
                                                      strict=True)] == [True] * 4  # fmt: skip


async def test_logs_go_out_once_whichever_node_sends_them() -> None:
    feed, recorder = _feed("logs")
    log = {"transactionHash": "0xt1", "logIndex": "0x0", "blockHash": "0xb1", "removed": False}
    feed.deliver(log)
    feed.deliver({**log, "blockHash": "0xother"})  # the same log, from another node
    feed.deliver({**log, "logIndex": "0x1"})
    assert len(recorder.frames) == 2
    feed.deliver({**log, "removed": True})  # a reorganisation takes it back ...
    feed.deliver(log)  # ... and includes it again: both go out
    assert len(recorder.frames) == 4


async def test_notifications_wait_while_a_feed_catches_up() -> None:
    feed, recorder = _feed("newHeads")
    feed.head_through = 3
    feed.replaying = True
    feed.notified({"number": "0x6", "hash": "0x6"})
    feed.deliver({"number": "0x4", "hash": "0x4"})  # caught up from the node
    feed.deliver({"number": "0x5", "hash": "0x5"})
    assert len(recorder.frames) == 2
    feed.caught_up()
    assert [b'"0x%d"' % n in frame for n, frame in zip((4, 5, 6), recorder.frames,
                                                      strict=True)] == [True] * 3  # fmt: skip
