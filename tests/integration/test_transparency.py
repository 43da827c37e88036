"""Reads pass through unchanged: every forwarded answer is the node's own (byte for byte where the
node writes the id we would), single and batch, success and error, with the caller's id echoed
exactly (numbers, strings, null). The proxy in process in front of real anvil (with a token
contract, so that receipts and logs are not empty), PostgreSQL and SoftHSM."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from policy.abi import encode_call, parse_signature
from tests.support.anvil import run_anvil
from tests.support.contracts import dev_account, send, token
from tests.support.forwarder import forwarder
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process

TRANSFER = parse_signature("transfer(address to,uint256 amount)")
# Ids as callers send them: echoed exactly, each in its JSON form.
IDS = ["1", "0", "-7", "4294967297", "1180591620717411303424", "1.5", '"a"', '""',
       '"\\u00e9t\\u00e9"', '"x\\"y"', "null", '"0x1"']  # fmt: skip


class Chain:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def raw(self, url: str, body: bytes, headers: dict[str, str] | None = None
                  ) -> tuple[int, bytes]:  # fmt: skip
        async with self.session.post(url, data=body, headers={
            "Content-Type": "application/json", **(headers or {})}) as answer:  # fmt: skip
            return answer.status, await answer.read()


@pytest.fixture(scope="module")
def anvil_with_history() -> Any:
    with run_anvil(chain_id=CHAIN_ID) as url:
        holder = dev_account(url)
        asset = token(url, mint_to={holder: 10**21})
        receipt = send(url, asset, encode_call(TRANSFER, [dev_account(url, 1), 12345]), holder)
        yield url, asset, receipt


@pytest.fixture
async def setup(anvil_with_history: Any, database_url: str, softhsm_conf: Path,
                softhsm_module: str) -> AsyncIterator[tuple[str, Stack, Chain, Any]]:  # fmt: skip
    url, asset, receipt = anvil_with_history
    stack = await build_stack(url, database_url, softhsm_module)
    async with in_process(stack.settings) as (proxy_url, session):
        yield proxy_url + "/", stack, Chain(url, session), (asset, receipt)


def reads(asset: str, receipt: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """Reads of every shape: quantities, objects, arrays, long hex, null, and node errors."""
    block = receipt["blockNumber"]
    return [
        ("eth_blockNumber", []),
        ("eth_chainId", []),
        ("net_version", []),
        ("web3_clientVersion", []),
        ("eth_getBalance", [receipt["from"], "latest"]),
        ("eth_getCode", [asset, "latest"]),
        ("eth_getBlockByNumber", [block, True]),
        ("eth_getBlockByNumber", ["0xffffff", False]),  # null
        ("eth_getTransactionReceipt", [receipt["transactionHash"]]),
        ("eth_getTransactionByHash", [receipt["transactionHash"]]),
        ("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest", "address": asset}]),
        ("eth_call", [{"to": asset, "data": "0x95d89b41"}, "latest"]),  # symbol()
        ("eth_feeHistory", ["0x2", "latest", [25, 75]]),
        ("eth_getStorageAt", [asset, "0x0", "latest"]),
        ("eth_getBlockByNumber", ["not a block", False]),  # the node's error
        ("eth_call", [{"to": asset, "data": "0xa9059cbb"}, "latest"]),  # reverts: the node's error
    ]


def request(method: str, params: list[Any], request_id: str) -> bytes:
    text = f'"id":{request_id},"method":"{method}","params":{json.dumps(params)}'
    return ('{"jsonrpc":"2.0",' + text + "}").encode()


def without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "id"}


async def test_single_reads_answer_the_nodes_own_bytes(setup: Any) -> None:
    proxy, stack, chain, (asset, receipt) = setup
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    for method, params in reads(asset, receipt):
        body = request(method, params, "1")
        status, ours = await chain.raw(proxy, body, auth)
        node_status, theirs = await chain.raw(chain.url, body)
        answer = json.loads(ours)
        if "error" in answer:  # the node's error, as the node gave it
            assert without_id(answer) == without_id(json.loads(theirs)), method
        else:
            assert status == node_status == 200
            assert ours == theirs, method


async def test_ids_are_echoed_exactly_and_results_untouched(setup: Any) -> None:
    proxy, stack, chain, _ = setup
    auth = {"Authorization": f"Bearer {stack.jwt}"}
    _, direct = await chain.raw(chain.url, request("eth_getBlockByNumber", ["latest", True], "1"))
    for request_id in IDS:
        body = request("eth_getBlockByNumber", ["latest", True], request_id)
        status, ours = await chain.raw(proxy, body, auth)
        assert status == 200
        assert ours.startswith(b'{"jsonrpc":"2.0","id":%s,' % request_id.encode()), ours[:80]
        assert json.loads(ours)["id"] == json.loads(request_id)
        assert without_id(json.loads(ours)) == without_id(json.loads(direct))


async def test_a_batch_answers_each_item_as_the_node_would(setup: Any) -> None:
    proxy, stack, chain, (asset, receipt) = setup
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    items = reads(asset, receipt)
    ids = [request_id for request_id in IDS if request_id != "null"]
    ids += [str(n) for n in range(100, 100 + len(items) - len(ids))]
    body = b"[%s]" % b",".join(
        request(method, params, request_id)
        for request_id, (method, params) in zip(ids, items, strict=True)
    )
    status, ours = await chain.raw(proxy, body, auth)
    assert status == 200
    answers = {json.dumps(answer["id"]): answer for answer in json.loads(ours)}
    assert sorted(answers) == sorted(json.dumps(json.loads(i)) for i in ids)
    for request_id, (method, params) in zip(ids, items, strict=True):
        _, theirs = await chain.raw(chain.url, request(method, params, "1"))
        ours_one = answers[json.dumps(json.loads(request_id))]
        assert without_id(ours_one) == without_id(json.loads(theirs)), method


@pytest.mark.parametrize("takes_batches", [True, False], ids=["node-batch", "no-batches"])
async def test_a_batch_of_reads_is_one_request_to_a_node_that_takes_batches(
    setup: Any, takes_batches: bool
) -> None:
    _, stack, chain, (asset, receipt) = setup
    items = [
        item for item in reads(asset, receipt) if item[0] not in ("eth_chainId", "net_version")
    ]
    body = b"[%s]" % b",".join(
        request(method, params, str(n)) for n, (method, params) in enumerate(items)
    )
    async with forwarder(chain.url) as node:
        node.takes_batches = takes_batches
        settings = dataclasses.replace(stack.settings, upstreams=(node.url,))
        async with in_process(settings) as (proxy_url, _):
            status, ours = await chain.raw(proxy_url + "/", body, {
                "Authorization": f"Bearer {stack.jwt}"})  # fmt: skip
        seen = node.methods()
    assert status == 200
    answers = {answer["id"]: answer for answer in json.loads(ours)}
    for n, (method, params) in enumerate(items):
        _, theirs = await chain.raw(chain.url, request(method, params, str(n)))
        assert answers[n] == json.loads(theirs), method
    assert len(node.batches) == 1  # answered as a whole, or refused
    assert [message["method"] for message in node.batches[0]] == [method for method, _ in items]
    # Each read reached the node once, in the batch; or, refused there, once more on its own.
    methods = [method for method, _ in items]
    for method in set(methods) - {"eth_blockNumber"}:  # (also the health probes' method)
        assert seen.count(method) == methods.count(method) * (1 if takes_batches else 2), method


async def test_a_node_refusing_batches_is_not_asked_again_and_each_read_counts_once(
    setup: Any,
) -> None:
    """A node (or its gateway) that refuses a batch gets the reads one by one, and no batch for
    a while after; the caller's rate limit counts each read of the batch once."""
    _, stack, chain, _ = setup
    items = [("eth_getBalance", [stack.address, "latest"]), ("eth_gasPrice", []),
             ("eth_getCode", [stack.address, "latest"]), ("eth_getTransactionCount",
             [stack.address, "latest"])]  # fmt: skip
    body = b"[%s]" % b",".join(
        request(method, params, str(n)) for n, (method, params) in enumerate(items)
    )
    async with forwarder(chain.url) as node:
        node.takes_batches = False
        # Exactly as many reads as one batch holds, at once; none refills within the test.
        settings = dataclasses.replace(stack.settings, upstreams=(node.url,), rate_limit=1,
                                       rate_burst=len(items))  # fmt: skip
        async with in_process(settings) as (proxy_url, _):
            auth = {"Authorization": f"Bearer {stack.jwt}"}
            status, ours = await chain.raw(proxy_url + "/", body, auth)
            assert status == 200
            answers = json.loads(ours)
            assert all("result" in answer for answer in answers), answers
            status, ours = await chain.raw(proxy_url + "/", body, auth)  # over the limit now
            assert {answer["error"]["code"] for answer in json.loads(ours)} == {-32005}
        settings = dataclasses.replace(settings, rate_limit=0, rate_burst=0)
        async with in_process(settings) as (proxy_url, _):
            for _ in range(3):
                status, ours = await chain.raw(proxy_url + "/", body, auth)
                assert status == 200 and all("result" in a for a in json.loads(ours))
    assert len(node.batches) == 2  # once per proxy: refused, then not asked again
