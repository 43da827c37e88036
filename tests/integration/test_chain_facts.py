"""What filling reads from the nodes, shared between requests (ChainFacts), over a real node
pool in front of anvil: a balance is never reused, but the requests that arrive while one read
is under way share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from proxy.nodes.facts import ChainFacts
from proxy.nodes.pool import NodePool
from tests.support.anvil import rpc, run_anvil
from tests.support.forwarder import forwarder

ACCOUNT = bytes.fromhex("00000000000000000000000000000000000c0ffe")


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=1337) as url:
        yield url


async def test_callers_arriving_during_a_balance_read_share_the_next_one(anvil: str) -> None:
    address = "0x" + ACCOUNT.hex()
    rpc(anvil, "anvil_setBalance", [address, hex(1000)])
    async with forwarder(anvil) as node:
        pool = NodePool([node.url])
        await pool.start()
        try:
            facts = ChainFacts(pool)
            assert await facts.balance(ACCOUNT) == 1000
            node.held.add("eth_getBalance")
            first = asyncio.ensure_future(facts.balance(ACCOUNT))
            while not node.holding:
                await asyncio.sleep(0.01)
            # Arrived while that read is under way: they wait for a read of their own, one
            # for all of them, which starts once the first ends.
            rpc(anvil, "anvil_setBalance", [address, hex(2000)])
            later = [asyncio.ensure_future(facts.balance(ACCOUNT)) for _ in range(5)]
            await asyncio.sleep(0.1)
            assert node.methods().count("eth_getBalance") == 2  # the first two reads only
            node.release()
            assert await first in (1000, 2000)
            assert await asyncio.gather(*later) == [2000] * 5
            assert node.methods().count("eth_getBalance") == 3
            assert await facts.balance(ACCOUNT) == 2000  # nothing kept: read again
            assert node.methods().count("eth_getBalance") == 4
        finally:
            await pool.close()


async def test_a_plain_transfer_skips_the_estimate_except_toward_a_precompile(
    anvil: str, database_url: str, softhsm_conf: object, softhsm_module: str
) -> None:
    """A value transfer to an address without code costs 21000 gas: no eth_estimateGas, and it
    is mined. A precompile has no code either and may cost more (ecrecover, 0x01): the node's
    estimate is asked for."""
    from tests.support.proxy_client import Proxy
    from tests.support.stack import build_stack, in_process

    dead, ecrecover = ("0x000000000000000000000000000000000000dEaD",
                       "0x0000000000000000000000000000000000000001")  # fmt: skip
    async with forwarder(anvil) as node:
        stack = await build_stack(anvil, database_url, softhsm_module, upstreams=(node.url,))
        async with in_process(stack.settings) as (url, session):
            proxy = Proxy(url, session, stack)
            hashes = {}
            for to, estimated in ((dead, False), (ecrecover, True)):
                before = node.methods().count("eth_estimateGas")
                hashes[to] = await proxy.result("eth_sendTransaction", [
                    {"from": stack.address, "to": to, "value": "0x1"}])  # fmt: skip
                assert (node.methods().count("eth_estimateGas") > before) is estimated, to
    for _ in range(50):
        receipt = rpc(anvil, "eth_getTransactionReceipt", [hashes[dead]])
        if receipt is not None:
            break
        await asyncio.sleep(0.1)
    assert receipt is not None and receipt["status"] == "0x1" and receipt["gasUsed"] == "0x5208"
