"""The nonce ledger with the proxy in process, in front of real anvil, PostgreSQL and SoftHSM:
concurrent sends on one account, Idempotency-Key, caller-given nonces, eth_signTransaction
reservations, nonces given back after a node's refusal, and recovery's fast-forward and fills."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy.settings import Settings
from tests.support.anvil import free_port, rpc, run_anvil
from tests.support.checks import assert_signed_by
from tests.support.forwarder import forwarder
from tests.support.proxy_client import Proxy
from tests.support.serve import serve
from tests.support.stack import CHAIN_ID, build_stack, environment, in_process


@dataclasses.dataclass
class Ledgered(Proxy):
    anvil: str = ""

    async def rows(self) -> list[Any]:
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            return list(await conn.fetch(
                "SELECT nonce, state, kind, tx_hash, user_id, request_id, node, block_number, "
                "receipt_status FROM ledger_transactions ORDER BY id"))  # fmt: skip
        finally:
            await conn.close()

    async def send(self, tx: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                   ) -> tuple[int, Any]:  # fmt: skip
        body = {"from": self.stack.address, "to": self.stack.address, "value": "0x1", **(tx or {})}
        return await self.call("eth_sendTransaction", [body], headers=headers)

    async def mined(self) -> int:
        return int(await _rpc(self.anvil, "eth_getTransactionCount",
                             [self.stack.address, "latest"]), 16)  # fmt: skip

    async def wait_mined(self, count: int, seconds: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while await self.mined() < count:
            assert asyncio.get_running_loop().time() < deadline, f"{await self.mined()} mined"
            await asyncio.sleep(0.2)


async def _rpc(url: str, method: str, params: Any) -> Any:
    return await asyncio.to_thread(rpc, url, method, params)


@contextlib.asynccontextmanager
async def ledgered(anvil: str, database_url: str, module: str, node: str | None = None,
                   **settings: Any) -> AsyncIterator[Ledgered]:  # fmt: skip
    stack = await build_stack(anvil, database_url, module)
    changed: Settings = dataclasses.replace(stack.settings, **settings)
    if node is not None:
        changed = dataclasses.replace(changed, upstreams=(node,))
    async with in_process(changed) as (url, session):
        yield Ledgered(url, session, stack, anvil)


@pytest.fixture
def anvil() -> Any:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True, extra=("--block-time", "1")) as url:
        yield url


async def test_concurrent_sends_of_one_account_get_consecutive_nonces(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        answers = await asyncio.gather(*(proxy.send() for _ in range(60)))
        hashes = [answer["result"] for status, answer in answers if status == 200]
        assert len(set(hashes)) == 60, answers[:3]
        await proxy.wait_mined(60)
        nonces = []
        sender = bytes.fromhex(proxy.stack.address[2:])
        for tx_hash in hashes:
            tx = await _rpc(anvil, "eth_getTransactionByHash", [tx_hash])
            nonces.append(int(tx["nonce"], 16))
            # Low-s and the right recovery id (anvil accepts high-s: the test checks).
            raw = await _rpc(anvil, "eth_getRawTransactionByHash", [tx_hash])
            assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)
        assert sorted(nonces) == list(range(60))
        # The tracker marks them mined, with their block and status.
        for _ in range(50):
            rows = await proxy.rows()
            if all(row["state"] == "mined" for row in rows):
                break
            await asyncio.sleep(0.2)
        assert sorted(row["nonce"] for row in rows) == list(range(60))
        assert all(row["state"] == "mined" and row["receipt_status"] == 1
                   and row["block_number"] for row in rows)  # fmt: skip
        assert {row["user_id"] for row in rows} == {"alice"}


async def test_one_idempotency_key_sends_one_transaction(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        headers = {**proxy.jwt(True), "Idempotency-Key": "order-17"}
        answers = await asyncio.gather(*(proxy.send(headers=headers) for _ in range(5)))
        assert {answer["result"] for _, answer in answers} == {answers[0][1]["result"]}
        _, other = await proxy.send({"value": "0x2"}, headers=headers)
        assert other["error"]["code"] == -32602 and "Idempotency-Key" in other["error"]["message"]
        again = await proxy.send(headers=headers)  # later, same key: the same answer
        assert again[1]["result"] == answers[0][1]["result"]
        fresh = await proxy.send(headers={**proxy.jwt(True), "Idempotency-Key": "order-18"})
        assert fresh[1]["result"] != answers[0][1]["result"]
        await proxy.wait_mined(2)
        assert len(await proxy.rows()) == 2


async def test_caller_nonces_are_checked_against_the_ledger(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        status, first = await proxy.send({"nonce": "0x0"})
        assert status == 200 and "result" in first, first
        _, same = await proxy.send({"nonce": "0x0", "value": "0x2"})
        assert same["error"]["code"] == -32602 and "already used" in same["error"]["message"]
        _, ahead = await proxy.send({"nonce": "0x5"})
        assert ahead["error"]["code"] == -32602 and "ahead" in ahead["error"]["message"]
        # A read-then-send tool gets a nonce nobody holds, even before anything is mined.
        pending = await proxy.result("eth_getTransactionCount", [proxy.stack.address, "pending"])
        assert int(pending, 16) == 1
        _, second = await proxy.send({"nonce": pending})
        assert "result" in second, second
        await proxy.wait_mined(2)


async def test_reassign_gives_caller_nonced_transactions_the_next_nonce(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module, caller_nonces="reassign") as proxy:
        answers = await asyncio.gather(*(proxy.send({"nonce": "0x0"}) for _ in range(3)))
        assert all("result" in answer for _, answer in answers), answers
        await proxy.wait_mined(3)


async def test_sign_transaction_reserves_and_its_raw_send_is_reconciled(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        tx = {"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x1"}
        signed = await proxy.result("eth_signTransaction", [tx])
        assert int(signed["tx"]["nonce"], 16) == 0
        # The reserved nonce is not handed out again: the next send gets 1.
        sent = await proxy.result("eth_sendTransaction", [tx])
        assert int((await _rpc(anvil, "eth_getTransactionByHash", [sent]))["nonce"], 16) == 1
        pending = await proxy.result("eth_getTransactionCount", [proxy.stack.address, "pending"])
        assert int(pending, 16) == 2
        await proxy.result("eth_sendRawTransaction", [signed["raw"]])
        states = {row["nonce"]: (row["kind"], row["state"]) for row in await proxy.rows()}
        assert states[0] == ("sign", "sent")
        await proxy.wait_mined(2)


async def test_a_refused_send_gives_its_nonce_to_the_next_request(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with forwarder(anvil) as node:
        async with ledgered(anvil, database_url, softhsm_module, node=node.url) as proxy:
            node.errors["eth_sendRawTransaction"] = {
                "code": -32000,
                "message": "intrinsic gas too low",
            }
            _, refused = await proxy.send()
            assert refused["error"]["message"] == "intrinsic gas too low"
            del node.errors["eth_sendRawTransaction"]
            _, sent = await proxy.send()
            tx = await _rpc(anvil, "eth_getTransactionByHash", [sent["result"]])
            assert int(tx["nonce"], 16) == 0  # reused: no gap
            states = sorted((row["nonce"], row["state"]) for row in await proxy.rows())
            assert states[0] == (0, "released")
            await proxy.wait_mined(1)


async def test_the_ledger_fast_forwards_past_transactions_sent_outside(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        first = await proxy.result(
            "eth_sendTransaction",
            [{"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x1"}],
        )
        await proxy.wait_mined(1)
        await _rpc(anvil, "anvil_impersonateAccount", [proxy.stack.address])
        for _ in range(2):
            await _rpc(
                anvil,
                "eth_sendTransaction",
                [{"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x1"}],
            )
        await proxy.wait_mined(3)
        status, answer = await proxy.send()
        assert status == 200 and "result" in answer, answer
        tx = await _rpc(anvil, "eth_getTransactionByHash", [answer["result"]])
        assert int(tx["nonce"], 16) == 3
        await proxy.wait_mined(4)
        assert first


async def test_an_unsent_signed_transaction_is_filled_after_the_timeout(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module, signed_tx_timeout=2) as proxy:
        tx = {"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x1"}
        await proxy.result("eth_signTransaction", [tx])  # nonce 0, never sent
        sent = await proxy.result("eth_sendTransaction", [tx])  # nonce 1, stuck behind 0
        await asyncio.sleep(1.5)
        assert await proxy.mined() == 0
        await proxy.wait_mined(2, seconds=15)
        assert (await _rpc(anvil, "eth_getTransactionReceipt", [sent]))["status"] == "0x1"
        states = {(row["nonce"], row["kind"], row["state"]) for row in await proxy.rows()}
        assert (0, "sign", "replaced") in states
        assert (0, "fill", "mined") in states or (0, "fill", "sent") in states


async def test_an_account_has_at_most_max_in_flight_unmined_and_as_many_waiting(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module, max_in_flight=2) as proxy:
        answers = await asyncio.gather(*(proxy.send() for _ in range(6)))
        refused = [(status, answer) for status, answer in answers if "error" in answer]
        assert len(refused) == 2, answers  # 2 in flight, 2 waiting for blocks, 2 refused
        for status, answer in refused:
            assert status == 429 and answer["error"]["code"] == -32005
            assert "QSIGNER_MAX_IN_FLIGHT" in answer["error"]["message"]
        await proxy.wait_mined(4)
        assert len(await proxy.rows()) == 4  # a refused request took no nonce


async def test_an_idempotency_key_with_a_caller_nonce_answers_the_first_transaction(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        headers = {**proxy.jwt(True), "Idempotency-Key": "cast-1"}
        answers = await asyncio.gather(*(proxy.send({"nonce": "0x0"}, headers=headers)
                                         for _ in range(3)))  # fmt: skip
        assert {answer.get("result") for _, answer in answers} == {answers[0][1]["result"]}
        _, other = await proxy.send({"nonce": "0x0", "value": "0x2"}, headers=headers)
        assert other["error"]["code"] == -32602 and "Idempotency-Key" in other["error"]["message"]
        await proxy.wait_mined(1)
        assert len(await proxy.rows()) == 1


async def test_sign_transaction_refuses_a_nonce_the_proxy_used_and_signs_one_ahead(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module) as proxy:
        await proxy.result(
            "eth_sendTransaction",
            [{"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x1"}],
        )
        tx = {"from": proxy.stack.address, "to": proxy.stack.address, "value": "0x5"}
        _, used = await proxy.call("eth_signTransaction", [{**tx, "nonce": "0x0"}])
        assert used["error"]["code"] == -32602 and "already used" in used["error"]["message"]
        ahead = await proxy.result("eth_signTransaction", [{**tx, "nonce": "0x9"}])
        assert ahead["tx"]["nonce"] == "0x9"
        assert len(await proxy.rows()) == 1  # the nonce ahead is not recorded


async def test_after_a_node_reset_the_lost_transactions_are_sent_again(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with ledgered(anvil, database_url, softhsm_module, resend_seconds=2) as proxy:
        snapshot = await _rpc(anvil, "evm_snapshot", [])
        sent = [(await proxy.send())[1]["result"] for _ in range(3)]
        await proxy.wait_mined(3)
        for _ in range(50):  # the tracker marks them mined
            if all(row["state"] == "mined" for row in await proxy.rows()):
                break
            await asyncio.sleep(0.1)
        assert await _rpc(anvil, "evm_revert", [snapshot])
        assert await proxy.mined() == 0
        _, after = await proxy.send()  # nonce 3, behind three lost transactions
        await proxy.wait_mined(4, seconds=20)
        for tx_hash in [*sent, after["result"]]:  # the same bytes, mined again
            assert (await _rpc(anvil, "eth_getTransactionReceipt", [tx_hash]))["status"] == "0x1"


async def _hsm_signs(proxy: Proxy) -> float:
    """Signatures the proxy's HSM made so far (its signing latency histogram's count)."""
    async with proxy.session.get(proxy.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("qsigner_hsm_sign_seconds_count "):
            return float(line.split()[1])
    raise AssertionError("no qsigner_hsm_sign_seconds_count in /metrics")


async def test_a_lone_request_signs_while_its_nonce_is_reserved_and_keeps_only_a_right_guess(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path
) -> None:
    """One request at a time signs at the nonce it expects while the reservation runs. When
    another replica took that nonce meanwhile, the early signature is dropped unseen: never
    stored or sent; the request signs at the nonce it got, and every nonce is used once."""
    stack = await build_stack(anvil, database_url, softhsm_module)
    env = environment(stack, softhsm_conf, f"127.0.0.1:{free_port()}")
    with contextlib.ExitStack() as replicas:
        url = await asyncio.to_thread(replicas.enter_context,
                                      serve(env, tmp_path / "second.log"))  # fmt: skip
        async with in_process(stack.settings) as (first_url, session):
            first = Ledgered(first_url, session, stack, anvil)
            second = Ledgered(url, session, stack, anvil)
            hashes = [(await first.send())[1]["result"] for _ in range(3)]
            hashes.append((await second.send())[1]["result"])  # takes the nonce `first` expects
            signs = await _hsm_signs(first)
            hashes += [(await first.send())[1]["result"] for _ in range(3)]
            # The first of these three guessed wrong (one signature thrown away), the next
            # guessed nothing (the last guess was wrong), the third guessed right again.
            assert await _hsm_signs(first) == signs + 4
            await first.wait_mined(7)
            nonces = [int((await _rpc(anvil, "eth_getTransactionByHash", [h]))["nonce"], 16)
                      for h in hashes]  # fmt: skip
            assert nonces == list(range(7))
            rows = await first.rows()
            assert sorted(row["nonce"] for row in rows) == list(range(7))
            assert {"0x" + bytes(row["tx_hash"]).hex() for row in rows} == set(hashes)
