"""Node failover through the proxy: a dead node in the list costs nothing, a node stopped while
reads are under way fails none of them, a slow read fails for its caller alone, with no node
left the answer is 503 / -32002, and GoQuorum's private submissions follow eth_sendRawTransaction's
safe-send rules."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account

from tests.support.anvil import free_port, rpc, run_anvil
from tests.support.forwarder import forwarder
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process


async def _call(session: aiohttp.ClientSession, url: str, stack: Stack, method: str,
                params: list[object]) -> tuple[int, dict[str, object]]:  # fmt: skip
    headers = {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}
    body = {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}
    async with session.post(url, json=body, headers=headers) as response:
        answer: dict[str, object] = await response.json()
        return response.status, answer


async def test_dead_node_in_the_list(database_url: str, softhsm_conf: Path,
                                     softhsm_module: str) -> None:  # fmt: skip
    dead = f"http://127.0.0.1:{free_port()}"
    with run_anvil(chain_id=CHAIN_ID) as live:
        stack = await build_stack(live, database_url, softhsm_module, upstreams=(dead, live))
        async with in_process(stack.settings) as (url, session):
            reads = await asyncio.gather(
                *(_call(session, url, stack, "eth_blockNumber", []) for _ in range(40))
            )
            assert all(status == 200 and "result" in r for status, r in reads)
            for _ in range(2):
                _, sent = await _call(session, url, stack, "eth_sendTransaction",
                                      [{"from": stack.address, "to": stack.address}])  # fmt: skip
                assert "result" in sent, sent
                assert rpc(live, "eth_getTransactionByHash", [sent["result"]])
            async with session.get(url + "/readyz") as response:
                nodes = (await response.json())["nodes"]
                assert [n["ok"] for n in nodes] == [False, True]


async def test_node_stopped_mid_run_fails_no_read(database_url: str, softhsm_conf: Path,
                                                  softhsm_module: str) -> None:  # fmt: skip
    with contextlib.ExitStack() as nodes:
        first = nodes.enter_context(run_anvil(chain_id=CHAIN_ID))
        second_node = contextlib.ExitStack()
        second = second_node.enter_context(run_anvil(chain_id=CHAIN_ID))
        nodes.callback(second_node.close)
        stack = await build_stack(first, database_url, softhsm_module, upstreams=(first, second))
        async with in_process(stack.settings) as (url, session):

            async def reads(count: int) -> list[tuple[int, dict[str, object]]]:
                methods = ["eth_chainId", "eth_blockNumber"] * (count // 2)
                return [await _call(session, url, stack, method, []) for method in methods]

            readers = [asyncio.create_task(reads(60)) for _ in range(4)]
            await asyncio.sleep(0.05)
            second_node.close()  # the second node goes away while reads are under way
            answers = [a for batch in await asyncio.gather(*readers) for a in batch]
            failed = [a for a in answers if a[0] != 200 or "error" in a[1]]
            assert not failed, failed[:3]
            assert len(answers) == 240


async def test_no_node_left_answers_503(database_url: str, softhsm_conf: Path,
                                        softhsm_module: str) -> None:  # fmt: skip
    with contextlib.ExitStack() as chain:
        only = chain.enter_context(run_anvil(chain_id=CHAIN_ID))
        stack = await build_stack(only, database_url, softhsm_module)
        async with in_process(stack.settings) as (url, session):
            chain.close()  # the only node goes away
            status, answer = await _call(session, url, stack, "eth_blockNumber", [])
            assert status == 503 and answer["id"] == 9
            assert answer["error"]["code"] == -32002  # type: ignore[index]
            async with session.get(url + "/readyz") as response:
                assert response.status == 503
                assert (await response.json())["ready"] is False


async def test_a_slow_read_fails_for_its_caller_alone(database_url: str, softhsm_conf: Path,
                                                      softhsm_module: str) -> None:  # fmt: skip
    with run_anvil(chain_id=CHAIN_ID) as node:
        async with forwarder(node) as first, forwarder(node) as second:
            first.held = second.held = {"eth_getLogs"}
            upstreams = (first.url, second.url)
            stack = await build_stack(
                node, database_url, softhsm_module, upstreams=upstreams, read_timeout=0.5
            )
            async with in_process(stack.settings) as (url, session):
                slow = asyncio.create_task(_call(session, url, stack, "eth_getLogs", [{}]))
                others = await asyncio.gather(
                    *(_call(session, url, stack, "eth_chainId", []) for _ in range(10))
                )
                assert all(status == 200 and "result" in r for status, r in others)
                status, answer = await slow
                assert status == 200 and answer["id"] == 9, answer
                error = answer["error"]
                assert isinstance(error, dict) and error["code"] == -32603
                assert (
                    "eth_getLogs" in error["message"] and "QSIGNER_READ_TIMEOUT" in error["message"]
                )
                async with session.get(url + "/readyz") as response:
                    assert response.status == 200
                    assert [n["ok"] for n in (await response.json())["nodes"]] == [True, True]


# A caller's own signed private transaction (GoQuorum: its data is Tessera's hash of the payload).
PRIVATE_FOR = {"privateFor": ["ROAZBWtSacxXQrOe3FGAqJDyJjFePR5ce4TSIzmJ0Bc="]}
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def signed_private() -> tuple[str, str]:
    signed = Account.sign_transaction(
        {"nonce": 0, "gasPrice": 0, "gas": 90000, "to": None, "value": 0, "data": "0x" + "ab" * 64},
        DEV_KEY,
    )  # fmt: skip
    return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()


@pytest.mark.parametrize("method", ["eth_sendRawPrivateTransaction",
                                    "eth_distributePrivateTransaction"])  # fmt: skip
async def test_a_private_submission_that_may_have_reached_a_node_is_not_retried(
    method: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:  # fmt: skip
    with run_anvil(chain_id=CHAIN_ID) as live:
        async with forwarder(live) as first, forwarder(live) as second:
            first.mode = second.mode = "drop_sends"  # read the request, then close the connection
            stack = await build_stack(live, database_url, softhsm_module,
                                      upstreams=(first.url, second.url))  # fmt: skip
            raw, tx_hash = signed_private()
            async with in_process(stack.settings) as (url, session):
                status, answer = await _call(session, url, stack, method, [raw, PRIVATE_FOR])
            assert status == 503, answer
            error = answer["error"]
            assert isinstance(error, dict) and error["code"] == -32002, answer
            assert tx_hash in error["message"] and "may still have reached" in error["message"]
            seen = [message for _, message in first.seen + second.seen]
            sent = [message for message in seen if message["method"] == method]
            assert [message["params"] for message in sent] == [[raw, PRIVATE_FOR]]  # not retried


async def test_a_private_transaction_the_node_already_holds_is_success(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:  # fmt: skip
    with run_anvil(chain_id=CHAIN_ID) as live:
        async with forwarder(live) as node:
            # GoQuorum's txpool, as geth's, on a resend of a transaction it holds.
            node.errors["eth_sendRawPrivateTransaction"] = {"code": -32000,
                                                            "message": "already known"}  # fmt: skip
            stack = await build_stack(live, database_url, softhsm_module, upstreams=(node.url,))
            raw, tx_hash = signed_private()
            async with in_process(stack.settings) as (url, session):
                status, answer = await _call(
                    session, url, stack, "eth_sendRawPrivateTransaction", [raw, PRIVATE_FOR]
                )
            assert (status, answer.get("result")) == (200, tx_hash), answer
            assert node.methods().count("eth_sendRawPrivateTransaction") == 1
