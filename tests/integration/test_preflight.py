"""The checks before signing, against real anvil (gas-free like Quorum, and with a fee market),
PostgreSQL and SoftHSM: a native transfer above the balance, an ERC-20 transfer above the
balance or the allowance, and calls that revert (reason, custom error, panic) are refused with
-32003 and the reason; a refused request takes no nonce and sends nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from policy.abi import (
    ERC20_APPROVE,
    ERC20_TRANSFER,
    ERC20_TRANSFER_FROM,
    encode_call,
    parse_signature,
)
from tests.support import contracts
from tests.support.anvil import rpc, run_anvil
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, build_stack, in_process

FAIL_WITH_REASON = parse_signature("failWithReason()")
FAIL_WITH_CUSTOM = parse_signature("failWithCustom(uint256 amount)")
FAIL_WITH_PANIC = parse_signature("failWithPanic()")
SUCCEED = parse_signature("succeed(uint256 x)")


@pytest.fixture(params=["gas-free", "fee-market"])
def anvil(request: pytest.FixtureRequest) -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=request.param == "gas-free") as url:
        yield url


@contextlib.asynccontextmanager
async def proxied(anvil: str, database_url: str, module: str) -> AsyncIterator[Proxy]:
    stack = await build_stack(anvil, database_url, module)
    async with in_process(stack.settings) as (url, session):
        yield Proxy(url, session, stack)


async def _nothing_taken(proxy: Proxy, anvil: str, sent_before: int) -> None:
    """No nonce was reserved in the ledger and no transaction left for the chain."""
    conn = await asyncpg.connect(proxy.stack.database_url)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
    finally:
        await conn.close()
    assert rows == 0, f"{rows} ledger rows after a refused request"
    pending = int(rpc(anvil, "eth_getTransactionCount", [proxy.stack.address, "pending"]), 16)
    assert pending == sent_before


def _refusal(answer: dict[str, Any], reason: str) -> dict[str, Any]:
    assert "error" in answer, answer
    error = answer["error"]
    assert error["code"] == -32003, answer
    assert error["data"]["reason"] == reason, answer
    assert error["data"]["rule"] and error["data"]["detail"], answer
    return dict(error["data"])


async def _send(proxy: Proxy, method: str = "eth_sendTransaction", **tx: Any) -> dict[str, Any]:
    status, answer = await proxy.call(method, [{"from": proxy.stack.address, **tx}])
    assert status == 200, answer
    return dict(answer)


async def test_a_transfer_above_the_balance_is_refused_and_one_within_it_goes(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with proxied(anvil, database_url, softhsm_module) as proxy:
        address = proxy.stack.address
        rpc(anvil, "anvil_setBalance", [address, hex(10**18)])
        for method in ("eth_sendTransaction", "eth_signTransaction"):
            data = _refusal(await _send(proxy, method, to=contracts.dev_account(anvil),
                                        value=hex(10**18 + 1)), "insufficient_funds")  # fmt: skip
            assert str(10**18) in data["detail"], data
        await _nothing_taken(proxy, anvil, 0)
        # What the gas costs counts too: the whole balance as value leaves nothing for gas,
        # except on a gas-free network.
        gas_price = int(rpc(anvil, "eth_gasPrice", []), 16)
        answer = await _send(proxy, to=contracts.dev_account(anvil), value=hex(10**18))
        if gas_price:
            _refusal(answer, "insufficient_funds")
            await _nothing_taken(proxy, anvil, 0)
        else:
            assert "result" in answer, answer
        answer = await _send(proxy, to=contracts.dev_account(anvil), value=hex(10**17))
        assert "result" in answer, answer
    # Each refusal is a signing decision, in the audit log like a policy's.
    conn = await asyncpg.connect(proxy.stack.database_url)
    try:
        audited = [json.loads(r["content"]) for r in await conn.fetch(
            "SELECT content FROM audit_log WHERE chain = 'acme' ORDER BY seq")]  # fmt: skip
    finally:
        await conn.close()
    refused = [(a["method"], a["reason"], a["rule"]) for a in audited if a["action"] == "deny"]
    assert refused[:2] == [
        ("eth_sendTransaction", "insufficient_funds", "balance-check"),
        ("eth_signTransaction", "insufficient_funds", "balance-check"),
    ]


async def test_token_transfers_above_the_balance_or_allowance_are_refused(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with proxied(anvil, database_url, softhsm_module) as proxy:
        me, other = proxy.stack.address, contracts.dev_account(anvil, 1)
        token = contracts.token(anvil, mint_to={me: 100, other: 50})
        over = encode_call(ERC20_TRANSFER, [bytes.fromhex(other[2:]), 101]).hex()
        data = _refusal(await _send(proxy, to=token, data="0x" + over),
                        "insufficient_token_balance")  # fmt: skip
        assert "101" in data["detail"] and "100" in data["detail"], data
        # transferFrom: the owner's balance, then the allowance the owner gave us.
        contracts.send(anvil, token, encode_call(ERC20_APPROVE, [bytes.fromhex(me[2:]), 30]),
                       sender=other)  # fmt: skip
        for amount, what in ((51, "balance"), (31, "allowance")):
            owner, spender = bytes.fromhex(other[2:]), bytes.fromhex(me[2:])
            pull = encode_call(ERC20_TRANSFER_FROM, [owner, spender, amount]).hex()
            data = _refusal(await _send(proxy, to=token, data="0x" + pull),
                            "insufficient_token_balance")  # fmt: skip
            assert what in data["detail"], data
        await _nothing_taken(proxy, anvil, 0)
        within = encode_call(ERC20_TRANSFER, [bytes.fromhex(other[2:]), 100]).hex()
        assert "result" in await _send(proxy, to=token, data="0x" + within)


async def test_calls_that_revert_are_refused_with_the_decoded_reason(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with proxied(anvil, database_url, softhsm_module) as proxy:
        reverter = contracts.deploy(anvil, "Reverter")
        cases = [
            (encode_call(FAIL_WITH_REASON, []), "no reason to go on"),
            (encode_call(FAIL_WITH_PANIC, []), "panic 0x11"),
            # No policy names the custom error: its selector is shown.
            (encode_call(FAIL_WITH_CUSTOM, [7]), "0x" + parse_signature(
                "Refused(address,uint256)").selector.hex()),
        ]  # fmt: skip
        for data, expected in cases:
            for gas in (None, hex(200_000)):  # estimated, or given (then a pre-flight call)
                tx: dict[str, Any] = {"to": reverter, "data": "0x" + data.hex()}
                if gas is not None:
                    tx["gas"] = gas
                refused = _refusal(await _send(proxy, **tx), "execution_reverted")
                assert expected in refused["detail"], (expected, refused)
        await _nothing_taken(proxy, anvil, 0)
        ok = {"to": reverter, "data": "0x" + encode_call(SUCCEED, [5]).hex(), "gas": hex(100_000)}
        assert "result" in await _send(proxy, **ok)
