"""JSON-RPC over WebSocket (CONTRACT 3 and 4.6): the proxy in process behind a real HTTP server,
in front of a real anvil (`--block-time 1`, its own WebSocket), PostgreSQL and SoftHSM. Reads,
batches and signing as over HTTP; authentication and origins at the upgrade; subscriptions to
new heads, filtered logs and pending transactions under the proxy's own ids; the limits."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_abi.abi import encode
from sha3 import keccak_256

from policy.abi import encode_call, parse_signature
from tests.support.anvil import rpc, run_anvil
from tests.support.checks import assert_signed_by
from tests.support.contracts import deploy, dev_account, send
from tests.support.forwarder import forwarder
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, build_stack, in_process
from tests.support.websocket import Socket, connect

INCREMENT = parse_signature("increment(uint256 by)")
INCREMENTED = "0x" + keccak_256(b"Incremented(address,uint256)").hexdigest()


@pytest.fixture
def chain() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as url:
        yield url


async def _proxy(chain: str, database_url: str, softhsm_module: str,
                 **overrides: Any) -> AsyncIterator[Proxy]:  # fmt: skip
    stack = await build_stack(chain, database_url, softhsm_module, **overrides)
    async with in_process(stack.settings) as (url, session):
        yield Proxy(url, session, stack)


@pytest.fixture
async def proxy(chain: str, database_url: str, softhsm_conf: Path,
                softhsm_module: str) -> AsyncIterator[Proxy]:  # fmt: skip
    async for running in _proxy(chain, database_url, softhsm_module):
        yield running


def _bearer(proxy: Proxy, password: bool = True) -> dict[str, str]:
    return proxy.jwt(password=password)


async def _mined(proxy: Proxy, tx_hash: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while (receipt := rpc(proxy.stack.anvil_url, "eth_getTransactionReceipt",
                              [tx_hash])) is None:  # fmt: skip
            await asyncio.sleep(0.1)
    return dict(receipt)


async def test_reads_batch_and_signing_over_a_socket(proxy: Proxy) -> None:
    sender = bytes.fromhex(proxy.stack.address[2:])
    async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
        assert await socket.result("eth_chainId") == hex(CHAIN_ID)
        assert (await socket.result("eth_blockNumber")).startswith("0x")
        assert await socket.result("eth_accounts") == [proxy.stack.address]
        answers = await socket.batch([("eth_chainId", []), ("net_version", []),
                                      ("eth_getBalance", [proxy.stack.address, "latest"]),
                                      ("eth_accounts", []), ("admin_peers", [])])  # fmt: skip
        assert [a["id"] for a in answers] == [1 + n for n in range(3, 8)]
        assert answers[0]["result"] == hex(CHAIN_ID) and answers[1]["result"] == str(CHAIN_ID)
        assert int(answers[2]["result"], 16) == 10**21
        assert answers[3]["result"] == [proxy.stack.address]
        assert answers[4]["error"]["code"] == -32601  # refused as over HTTP
        # Signing: the API key alone unlocks, as over HTTP.
        tx_hash = await socket.result("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": "0x000000000000000000000000000000000000dEaD",
             "value": "0x5"}])  # fmt: skip
        assert (await _mined(proxy, tx_hash))["status"] == "0x1"
        raw = rpc(proxy.stack.anvil_url, "eth_getRawTransactionByHash", [tx_hash])
        assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)
        # A message that is not JSON, and a batch with a bad item: errors, and the socket serves.
        await socket.send_raw("{not json")
        assert (await socket.next_unmatched())["error"]["code"] == -32700
        answers = await socket.batch([("eth_chainId", []), ("", [])])
        assert answers[0]["result"] == hex(CHAIN_ID)
        assert answers[1]["error"]["code"] == -32600
    # A JWT with X-Signer-Password at the upgrade: the password holds for the connection.
    async with connect(proxy.session, proxy.url, headers=_bearer(proxy)) as socket:
        signature = await socket.result("personal_sign", ["0x68656c6c6f", proxy.stack.address])
        assert len(bytes.fromhex(signature[2:])) == 65
        tx_hash = await socket.result("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": proxy.stack.address}])  # fmt: skip
        raw = rpc(proxy.stack.anvil_url, "eth_getRawTransactionByHash", [tx_hash])
        assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)
    # Without the password, reads work and signing is refused, as over HTTP.
    async with connect(proxy.session, proxy.url, headers=_bearer(proxy, False)) as socket:
        assert await socket.result("eth_chainId") == hex(CHAIN_ID)
        answer = await socket.request("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": proxy.stack.address}])  # fmt: skip
        assert answer["error"]["code"] == 4100


async def _refused(proxy: Proxy, path: str = "/", **kwargs: Any) -> tuple[int, Any]:
    """The HTTP answer to an upgrade the proxy refuses."""
    ws_url = (proxy.url + path).replace("http://", "ws://")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.session.ws_connect(ws_url, **kwargs)
    # aiohttp's handshake error has the status; the body is read with a plain GET upgrade.
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
               **kwargs.get("headers", {})}  # fmt: skip
    if kwargs.get("protocols"):
        headers["Sec-WebSocket-Protocol"] = ", ".join(kwargs["protocols"])
    if kwargs.get("origin"):
        headers["Origin"] = kwargs["origin"]
    async with proxy.session.get(proxy.url + path, headers=headers) as response:
        assert response.status == refused.value.status
        return response.status, json.loads(await response.read())


async def test_authentication_at_the_upgrade(proxy: Proxy) -> None:
    status, body = await _refused(proxy)
    assert status == 401 and body["error"]["code"] == 4100
    for headers in ({"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"},
                    {"Authorization": "Bearer qsk_0000000000000000_" + "a" * 43}):  # fmt: skip
        status, body = await _refused(proxy, headers=headers)
        assert status == 401 and body["error"]["code"] == 4100
    status, _ = await _refused(proxy, "/rpc/qsk_nope")
    assert status == 401
    # A GET without the upgrade is not a route of its own.
    async with proxy.session.get(proxy.url + "/") as response:
        assert response.status == 405
    # Over HTTP, eth_subscribe is -32601, as a node answers it there.
    status, answer = await proxy.call("eth_subscribe", ["newHeads"])
    assert status == 200 and answer["error"]["code"] == -32601


async def test_browsers_authenticate_with_the_protocol_header(proxy: Proxy) -> None:
    """A browser cannot set headers on a WebSocket: `new WebSocket(url, ["qsigner",
    "bearer.<JWT>", "password.<base64url>"])`; the proxy answers with the `qsigner` protocol."""
    password = base64.urlsafe_b64encode(proxy.stack.password.encode()).decode().rstrip("=")
    protocols = ("qsigner", f"bearer.{proxy.stack.jwt}", f"password.{password}")
    async with connect(proxy.session, proxy.url, protocols=protocols) as socket:
        assert socket.ws.protocol == "qsigner"
        tx_hash = await socket.result("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": proxy.stack.address}])  # fmt: skip
        assert (await _mined(proxy, tx_hash))["status"] == "0x1"
    protocols = ("qsigner", f"bearer.{proxy.stack.api_key}")
    async with connect(proxy.session, proxy.url, protocols=protocols) as socket:
        assert await socket.result("eth_accounts") == [proxy.stack.address]
    status, body = await _refused(proxy, protocols=("qsigner", "bearer.nonsense"))
    assert status == 401 and body["error"]["code"] == 4100


async def test_origins_are_checked_at_the_upgrade(chain: str, database_url: str,
                                                  softhsm_conf: Path,
                                                  softhsm_module: str) -> None:  # fmt: skip
    async for proxy in _proxy(chain, database_url, softhsm_module,
                              cors_origins=("https://dapp.example",)):  # fmt: skip
        url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
        async with connect(proxy.session, url, origin="https://dapp.example") as socket:
            assert await socket.result("eth_chainId") == hex(CHAIN_ID)
        async with connect(proxy.session, url) as socket:  # no Origin: not a browser
            assert await socket.result("eth_chainId") == hex(CHAIN_ID)
        status, body = await _refused(proxy, f"/rpc/{proxy.stack.api_key}",
                                      origin="https://evil.example")  # fmt: skip
        assert status == 403 and body["error"]["code"] == 4100
        # Without QSIGNER_CORS_ORIGINS, no web page may open a socket.
        settings = dataclasses.replace(proxy.stack.settings, cors_origins=())
        async with in_process(settings) as (url, session):
            status, _ = await _refused(Proxy(url, session, proxy.stack),
                                       f"/rpc/{proxy.stack.api_key}",
                                       origin="https://dapp.example")  # fmt: skip
            assert status == 403


async def _subscribe(socket: Socket, *params: Any) -> str:
    subscription = await socket.result("eth_subscribe", list(params))
    assert isinstance(subscription, str) and subscription.startswith("0x")
    return subscription


async def test_new_heads_arrive_in_order_under_the_proxys_id(proxy: Proxy) -> None:
    async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
        first = await _subscribe(socket, "newHeads")
        second = await _subscribe(socket, "newHeads")
        assert first != second
        heads = [await socket.notification(first) for _ in range(3)]
        numbers = [int(head["number"], 16) for head in heads]
        assert numbers == list(range(numbers[0], numbers[0] + 3))
        for head in heads:
            block = rpc(proxy.stack.anvil_url, "eth_getBlockByNumber", [head["number"], False])
            assert block["hash"] == head["hash"]
        # The answer naming an id comes before any notification under it.
        assert socket.order.index(("answer", 1)) < socket.order.index(("notification", first))
        # Unsubscribed: no notification under that id after the answer.
        assert await socket.result("eth_unsubscribe", [first]) is True
        seen = len(socket.order)
        await socket.notification(second)
        while socket.queue(second).qsize() < 2:  # two more heads
            await socket.notification(second)
        assert ("notification", first) not in socket.order[seen:]
        answer = await socket.request("eth_unsubscribe", [first])
        assert answer["error"]["code"] == -32602  # no longer ours


async def test_logs_with_a_filter(proxy: Proxy) -> None:
    anvil = proxy.stack.anvil_url
    # The chain's helpers block: on a thread of their own, while the proxy serves on this loop.
    counter = await asyncio.to_thread(deploy, anvil, "Counter")
    other = await asyncio.to_thread(deploy, anvil, "Counter")
    mine = "0x" + encode(["address"], [proxy.stack.address]).hex()
    async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
        wanted = await _subscribe(socket, "logs", {"address": counter.lower(),
                                                   "topics": [INCREMENTED, mine]})  # fmt: skip
        everything = await _subscribe(socket, "logs", {"address": [counter, other]})
        # What the filter leaves out: the other contract, and another sender.
        await asyncio.to_thread(send, anvil, other, encode_call(INCREMENT, [1]))
        await asyncio.to_thread(send, anvil, counter, encode_call(INCREMENT, [1]),
                                dev_account(anvil, 1))  # fmt: skip
        tx_hash = await socket.result("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": counter,
             "data": "0x" + encode_call(INCREMENT, [5]).hex()}])  # fmt: skip
        log = await socket.notification(wanted)
        assert log["transactionHash"] == tx_hash and log["address"].lower() == counter.lower()
        assert log["topics"] == [INCREMENTED, mine]
        assert int(log["data"], 16) == 6
        assert [(await socket.notification(everything))["address"].lower()
                for _ in range(3)] == [other.lower(), counter.lower(), counter.lower()]  # fmt: skip
        for bad in (["logs", {"fromBlock": "0x0"}], ["logs", {"address": "0x12"}],
                    ["logs", {"topics": ["nope"]}], ["syncing"], ["nonsense"], [],
                    ["newHeads", {"x": 1}], [7]):  # fmt: skip
            answer = await socket.request("eth_subscribe", bad)
            assert answer["error"]["code"] == -32602, (bad, answer)
        assert await socket.result("eth_chainId") == hex(CHAIN_ID)  # still serving


async def test_pending_transactions(proxy: Proxy) -> None:
    async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
        pending = await _subscribe(socket, "newPendingTransactions")
        tx_hash = await socket.result("eth_sendTransaction", [
            {"from": proxy.stack.address, "to": proxy.stack.address}])  # fmt: skip
        seen = [await socket.notification(pending)]
        while seen[-1] != tx_hash:
            seen.append(await socket.notification(pending))
        assert tx_hash in seen


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def _metrics(proxy: Proxy) -> str:
    async with proxy.session.get(proxy.url + "/metrics") as response:
        return await response.text()


async def test_metrics_count_sockets_and_subscriptions(proxy: Proxy) -> None:
    url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
    async with connect(proxy.session, url) as one, connect(proxy.session, url) as two:
        await _subscribe(one, "newHeads")
        await _subscribe(two, "newHeads")
        await _subscribe(two, "logs", {"address": proxy.stack.address})
        text = await _metrics(proxy)
        assert _metric(text, "qsigner_ws_connections") == 2
        assert _metric(text, 'qsigner_ws_subscriptions{kind="newHeads"}') == 2
        assert _metric(text, 'qsigner_ws_subscriptions{kind="logs"}') == 1
        # Two clients of newHeads share one subscription on the node.
        assert _metric(text, 'qsigner_ws_upstream_subscriptions{kind="newHeads"}') == 1
    async with asyncio.timeout(10):
        while _metric(await _metrics(proxy), "qsigner_ws_connections") != 0:
            await asyncio.sleep(0.05)
    text = await _metrics(proxy)
    assert _metric(text, 'qsigner_ws_subscriptions{kind="newHeads"}') == 0
    async with asyncio.timeout(10):
        while _metric(await _metrics(proxy),
                      'qsigner_ws_upstream_subscriptions{kind="newHeads"}') != 0:  # fmt: skip
            await asyncio.sleep(0.05)


async def test_a_revoked_key_closes_its_sockets_within_a_second(proxy: Proxy) -> None:
    from tests.support.identity import revoke_elsewhere

    url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
    async with connect(proxy.session, url) as keyed, \
            connect(proxy.session, proxy.url, headers=_bearer(proxy)) as other:  # fmt: skip
        subscription = await _subscribe(keyed, "newHeads")
        await keyed.notification(subscription)
        revoked_at = await revoke_elsewhere(proxy.stack.database_url, proxy.stack.settings,
                                            proxy.stack.api_key)  # fmt: skip
        code, reason = await keyed.wait_closed()
        assert time.monotonic() - revoked_at < 1.0
        assert code == 1008 and "revoked" in reason
        # The same user's JWT socket stays: only the key was revoked.
        assert await other.result("eth_chainId") == hex(CHAIN_ID)
    # And the key no longer opens one.
    status, _ = await _refused(proxy, f"/rpc/{proxy.stack.api_key}")
    assert status == 401


async def test_a_disabled_user_s_sockets_close_within_a_second(proxy: Proxy) -> None:
    from tests.support.identity import disable_elsewhere

    url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
    async with connect(proxy.session, url) as keyed, \
            connect(proxy.session, proxy.url, headers=_bearer(proxy)) as bearer, \
            connect(proxy.session, proxy.url, headers={
                "Authorization": f"Bearer {proxy.stack.viewer_jwt}"}) as viewer:  # fmt: skip
        disabled_at = await disable_elsewhere(proxy.stack.database_url, proxy.stack.settings,
                                              "alice")  # fmt: skip
        for socket in (keyed, bearer):
            code, reason = await socket.wait_closed()
            assert code == 1008 and "disabled" in reason
        assert time.monotonic() - disabled_at < 1.0
        assert await viewer.result("eth_chainId") == hex(CHAIN_ID)  # another user


async def test_subscriptions_per_connection(chain: str, database_url: str, softhsm_conf: Path,
                                            softhsm_module: str) -> None:  # fmt: skip
    async for proxy in _proxy(chain, database_url, softhsm_module, ws_max_subscriptions=2):
        url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
        async with connect(proxy.session, url) as socket, connect(proxy.session, url) as other:
            first = await _subscribe(socket, "newHeads")
            await _subscribe(socket, "logs", {})
            answer = await socket.request("eth_subscribe", ["newPendingTransactions"])
            assert answer["error"]["code"] == -32005
            assert "QSIGNER_WS_MAX_SUBSCRIPTIONS" in answer["error"]["message"]
            await _subscribe(other, "newHeads")  # counted per connection
            assert await socket.result("eth_unsubscribe", [first]) is True
            again = await _subscribe(socket, "newHeads")
            await socket.notification(again)


async def test_connections_per_user(chain: str, database_url: str, softhsm_conf: Path,
                                    softhsm_module: str) -> None:  # fmt: skip
    async for proxy in _proxy(chain, database_url, softhsm_module, ws_max_connections=2):
        url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
        async with connect(proxy.session, url), \
                connect(proxy.session, proxy.url, headers=_bearer(proxy)) as second:  # fmt: skip
            status, body = await _refused(proxy, f"/rpc/{proxy.stack.api_key}")
            assert status == 429 and body["error"]["code"] == -32005
            assert "QSIGNER_WS_MAX_CONNECTIONS" in body["error"]["message"]
            # Another user is not counted against alice.
            async with connect(proxy.session, proxy.url, headers={
                    "Authorization": f"Bearer {proxy.stack.viewer_jwt}"}) as viewer:  # fmt: skip
                assert await viewer.result("eth_chainId") == hex(CHAIN_ID)
            await second.close()
            # Once one of hers has closed, she may open another.
            async with asyncio.timeout(10):
                while True:
                    try:
                        async with connect(proxy.session, url) as third:
                            assert await third.result("eth_chainId") == hex(CHAIN_ID)
                        break
                    except aiohttp.WSServerHandshakeError as refused:
                        assert refused.status == 429
                        await asyncio.sleep(0.05)


async def test_message_size(chain: str, database_url: str, softhsm_conf: Path,
                            softhsm_module: str) -> None:  # fmt: skip
    async for proxy in _proxy(chain, database_url, softhsm_module, ws_max_message_bytes=1024):
        url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
        async with connect(proxy.session, url) as socket:
            big = json.dumps({"jsonrpc": "2.0", "id": "x" * 1500, "method": "eth_chainId"})
            await socket.send_raw(big)
            answer = await socket.next_unmatched()
            assert answer["error"]["code"] == -32600 and answer["id"] is None
            assert "QSIGNER_WS_MAX_MESSAGE_BYTES" in answer["error"]["message"]
            assert await socket.result("eth_chainId") == hex(CHAIN_ID)  # still serving
            # Beyond twice the limit a message is not even read: the socket closes with 1009.
            await socket.send_raw("x" * 3000)
            code, _ = await socket.wait_closed()
            assert code == 1009


async def test_a_slow_consumer_is_closed_with_a_reason(chain: str, database_url: str,
                                                       softhsm_conf: Path,
                                                       softhsm_module: str) -> None:  # fmt: skip
    """A client that does not read: its answers pile up past QSIGNER_WS_SEND_QUEUE once the
    kernel's buffers are full, and the proxy closes the socket (1008, with the reason) rather
    than hold them without end. Small requests with large answers fill the buffers quickly:
    eth_getCode of a contract of 24 kB (48 kB of hex an answer)."""
    async for proxy in _proxy(chain, database_url, softhsm_module, ws_send_queue=4):
        # Init code that returns 0x6000 zero bytes as the contract's code: PUSH2 0x6000
        # PUSH1 0 RETURN.
        receipt = await asyncio.to_thread(send, proxy.stack.anvil_url, None,
                                          bytes.fromhex("6160006000f3"))  # fmt: skip
        big = receipt["contractAddress"]
        ws_url = f"{proxy.url}/rpc/{proxy.stack.api_key}".replace("http://", "ws://")
        ws = await proxy.session.ws_connect(ws_url)
        try:
            for n in range(400):  # ~20 MB of answers, ~40 kB of requests
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": n, "method": "eth_getCode",
                                              "params": [big, "latest"]}))  # fmt: skip
            answered = 0
            async with asyncio.timeout(60):
                while (message := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                    answered += 1
            assert message.type == aiohttp.WSMsgType.CLOSE, message
            assert message.data == 1008 and "QSIGNER_WS_SEND_QUEUE" in message.extra
            assert answered < 400
        finally:
            await ws.close()
        # The proxy serves on.
        async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
            assert await socket.result("eth_chainId") == hex(CHAIN_ID)
        text = await _metrics(proxy)
        assert _metric(text, 'qsigner_ws_closed_total{reason="slow_consumer"}') == 1


async def test_subscriptions_move_to_another_node_with_no_gap_and_no_duplicate(
    chain: str, database_url: str, softhsm_conf: Path, softhsm_module: str,
) -> None:  # fmt: skip
    """Three nodes of one chain (forwarders in front of one anvil, each with its WebSocket
    derived from its HTTP URL). The nodes carrying the subscriptions go quiet while blocks and
    logs come, then die: the client keeps its ids, and gets every head and every log, once."""
    async with forwarder(chain) as one, forwarder(chain) as two, forwarder(chain) as three:
        nodes = (one, two, three)
        stack = await build_stack(chain, database_url, softhsm_module,
                                  upstreams=tuple(node.url for node in nodes))  # fmt: skip
        counter = await asyncio.to_thread(deploy, chain, "Counter")
        async with in_process(stack.settings) as (url, session), \
                connect(session, f"{url}/rpc/{stack.api_key}") as socket:  # fmt: skip
            heads = await _subscribe(socket, "newHeads")
            logs = await _subscribe(socket, "logs", {"address": counter})
            first = int((await socket.notification(heads))["number"], 16)
            carriers = [node for node in nodes if node.carries_subscriptions()]
            assert 1 <= len(carriers) <= 2
            increments = []
            for node in carriers:
                node.socket_mode = "mute"  # hangs: what it sends from now on is lost
            for _ in range(3):
                receipt = await asyncio.to_thread(send, chain, counter, encode_call(INCREMENT, [1]))
                increments.append(receipt["transactionHash"])
            for node in carriers:
                await node.stop()  # and dies
            for _ in range(2):
                receipt = await asyncio.to_thread(send, chain, counter, encode_call(INCREMENT, [1]))
                increments.append(receipt["transactionHash"])
            last = int(receipt["blockNumber"], 16)
            numbers = [first]
            while numbers[-1] < last + 2:
                head = await socket.notification(heads)
                numbers.append(int(head["number"], 16))
                block = rpc(chain, "eth_getBlockByNumber", [head["number"], False])
                assert head == block  # anvil's newHeads carry the whole block, and so do replays
            assert numbers == list(range(first, numbers[-1] + 1))  # no gap, no duplicate
            delivered = [(await socket.notification(logs))["transactionHash"] for _ in increments]
            assert delivered == increments
            # Nothing more: another head came, and no log after those five.
            await socket.notification(heads)
            assert socket.queue(logs).empty()
            text = await _metrics(Proxy(url, session, stack))
            assert _metric(text, 'qsigner_ws_resubscriptions_total{kind="newHeads"}') >= 1
            assert _metric(text, 'qsigner_ws_resubscriptions_total{kind="logs"}') >= 1


async def test_a_node_whose_websocket_hangs_loses_its_subscriptions(
    chain: str, database_url: str, softhsm_conf: Path, softhsm_module: str,
) -> None:  # fmt: skip
    """A node whose WebSocket goes quiet while its HTTP answers (and its blocks advance): the
    proxy notices that the socket's heads fall behind the node's height, and moves the
    subscriptions, which catch up."""
    async with forwarder(chain) as one, forwarder(chain) as two:
        stack = await build_stack(chain, database_url, softhsm_module,
                                  upstreams=(one.url, two.url))  # fmt: skip
        async with in_process(stack.settings) as (url, session), \
                connect(session, f"{url}/rpc/{stack.api_key}") as socket:  # fmt: skip
            heads = await _subscribe(socket, "newHeads")
            first = int((await socket.notification(heads))["number"], 16)
            carrier = one if one.carries_subscriptions() else two
            carrier.socket_mode = "mute"
            numbers = [first]
            while len(numbers) < 8:
                numbers.append(int((await socket.notification(heads))["number"], 16))
            assert numbers == list(range(first, first + 8))
            text = await _metrics(Proxy(url, session, stack))
            assert _metric(text, 'qsigner_ws_resubscriptions_total{kind="newHeads"}') == 1


async def test_catching_up_is_bounded(chain: str, database_url: str, softhsm_conf: Path,
                                      softhsm_module: str) -> None:  # fmt: skip
    """QSIGNER_WS_REPLAY_BLOCKS=1: a subscription moved after missing two blocks or more (its
    node's WebSocket hung) catches up on the last block only, and its heads still go out in
    increasing numbers."""
    async with forwarder(chain) as one, forwarder(chain) as two:
        stack = await build_stack(chain, database_url, softhsm_module,
                                  upstreams=(one.url, two.url), ws_replay_blocks=1)  # fmt: skip
        async with in_process(stack.settings) as (url, session), \
                connect(session, f"{url}/rpc/{stack.api_key}") as socket:  # fmt: skip
            heads = await _subscribe(socket, "newHeads")
            first = int((await socket.notification(heads))["number"], 16)
            carrier = one if _subscribed_heads(one) else two
            carrier.socket_mode = "mute"  # moved once two blocks or more went by unheard
            after = [int((await socket.notification(heads))["number"], 16) for _ in range(3)]
            assert after[0] > first + 1  # the block(s) before the last were skipped ...
            assert after == [after[0], after[0] + 1, after[0] + 2]  # ... and then none is


def _subscribed_heads(node: Any) -> bool:
    kinds = [m["params"][0] for m in node.socket_messages if m.get("method") == "eth_subscribe"]
    return kinds.count("newHeads") >= 2  # the proxy's own newHeads on each socket, and the feed


async def test_another_socket_s_subscription_cannot_be_ended(proxy: Proxy) -> None:
    url = f"{proxy.url}/rpc/{proxy.stack.api_key}"
    async with connect(proxy.session, url) as mine, connect(proxy.session, url) as other:
        heads = await _subscribe(mine, "newHeads")
        answer = await other.request("eth_unsubscribe", [heads])
        assert answer["error"]["code"] == -32602
        assert "no subscription with this id" in answer["error"]["message"]
        for bad in ([], [7], [heads, heads]):
            assert (await other.request("eth_unsubscribe", bad))["error"]["code"] == -32602
        first = int((await mine.notification(heads))["number"], 16)
        assert int((await mine.notification(heads))["number"], 16) == first + 1  # still mine
