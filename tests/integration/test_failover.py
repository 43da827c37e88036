"""Node failover through the proxy: a dead node in the list costs nothing, and a node stopped
while reads are under way fails none of them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from tests.support.anvil import free_port, rpc, run_anvil
from tests.support.stack import CHAIN_ID, build_stack


async def _call(session: aiohttp.ClientSession, url: str, jwt: str, password: str,
                method: str, params: list[object]) -> dict[str, object]:  # fmt: skip
    headers = {"Authorization": f"Bearer {jwt}", "X-Signer-Password": password}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        answer: dict[str, object] = await response.json()
        return answer


async def test_dead_node_in_the_list(database_url: str, softhsm_conf: Path,
                                     softhsm_module: str) -> None:  # fmt: skip
    dead = f"http://127.0.0.1:{free_port()}"
    with run_anvil(chain_id=CHAIN_ID) as live:
        stack = await build_stack(live, database_url, softhsm_module, upstreams=(dead, live))
        server = TestServer(create_app(stack.settings), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                url = str(server.make_url("/"))
                one_read = [stack.jwt, stack.password, "eth_blockNumber", []]
                reads = await asyncio.gather(*(_call(session, url, *one_read) for _ in range(40)))
                assert all("result" in r for r in reads)
                for _ in range(2):
                    sent = await _call(session, url, stack.jwt, stack.password,
                                       "eth_sendTransaction",
                                       [{"from": stack.address, "to": stack.address}])  # fmt: skip
                    assert "result" in sent, sent
                    assert rpc(live, "eth_getTransactionByHash", [sent["result"]])
                async with session.get(str(server.make_url("/readyz"))) as response:
                    nodes = (await response.json())["nodes"]
                    assert [n["ok"] for n in nodes] == [False, True]
        finally:
            await server.close()


async def test_node_stopped_mid_run_fails_no_read(database_url: str, softhsm_conf: Path,
                                                  softhsm_module: str) -> None:  # fmt: skip
    with contextlib.ExitStack() as nodes:
        first = nodes.enter_context(run_anvil(chain_id=CHAIN_ID))
        second_stack = contextlib.ExitStack()
        second = second_stack.enter_context(run_anvil(chain_id=CHAIN_ID))
        nodes.callback(second_stack.close)
        stack = await build_stack(first, database_url, softhsm_module, upstreams=(first, second))
        server = TestServer(create_app(stack.settings), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                url = str(server.make_url("/"))

                async def reads(count: int) -> list[dict[str, object]]:
                    methods = ["eth_chainId", "eth_blockNumber"] * (count // 2)
                    return [await _call(session, url, stack.jwt, stack.password, method, [])
                            for method in methods]  # fmt: skip

                readers = [asyncio.create_task(reads(60)) for _ in range(4)]
                await asyncio.sleep(0.05)
                second_stack.close()  # the second node goes away while reads are under way
                answers = [a for batch in await asyncio.gather(*readers) for a in batch]
                failed = [a for a in answers if "error" in a]
                assert not failed, failed[:3]
                assert len(answers) == 240
        finally:
            await server.close()


async def test_no_node_left_answers_503(database_url: str, softhsm_conf: Path,
                                        softhsm_module: str) -> None:  # fmt: skip
    chain = contextlib.ExitStack()
    only = chain.enter_context(run_anvil(chain_id=CHAIN_ID))
    try:
        stack = await build_stack(only, database_url, softhsm_module)
        server = TestServer(create_app(stack.settings), host="127.0.0.1")
        await server.start_server()
        try:
            chain.close()  # the only node goes away
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Bearer {stack.jwt}"}
                body = {"jsonrpc": "2.0", "id": 9, "method": "eth_blockNumber", "params": []}
                async with session.post(str(server.make_url("/")), json=body,
                                        headers=headers) as response:  # fmt: skip
                    answer = await response.json()
                    assert response.status == 503 and answer["error"]["code"] == -32002
                    assert answer["id"] == 9
                async with session.get(str(server.make_url("/readyz"))) as response:
                    assert response.status == 503
                    assert (await response.json())["ready"] is False
        finally:
            await server.close()
    finally:
        chain.close()
