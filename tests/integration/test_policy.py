"""The organisation's policy on the signing path, with the proxy in process in front of real
anvil, PostgreSQL and SoftHSM: deny rules, holds and the approval flow, shadow mode, the audit
rows each decision leaves, and a dry-run of a draft against them. Limits across two replicas are
in tests/acceptance/test_policy_limits.py (two `serve` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from policy.abi import ERC20_TRANSFER, encode_call, parse_signature
from proxy import store
from proxy.audit.log import AuditLog
from proxy.errors import BadInput, Forbidden
from proxy.guard import admin
from proxy.identity import Identity
from signer.pkcs11 import Hsm
from tests.support import contracts
from tests.support.anvil import run_anvil
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process

ADMIN_PASSWORD = "admin-pw-" + "q" * 8
SINK = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(params=["gas-free", "fee-market"])
def anvil(request: pytest.FixtureRequest) -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=request.param == "gas-free") as url:
        yield url


@contextlib.asynccontextmanager
async def governed(stack: Stack) -> AsyncIterator[tuple[Identity, AuditLog]]:
    pool = await store.connect(stack.database_url, max_size=2)
    audit = AuditLog(pool)
    try:
        yield Identity(pool, stack.settings), audit
    finally:
        await audit.close()
        await pool.close()


async def _stack_with_admins(anvil: str, database_url: str, module: str) -> Stack:
    stack = await build_stack(anvil, database_url, module)
    async with governed(stack) as (identity, _audit):
        with Hsm(module, sessions_per_token=1) as hsm:
            for name in ("ada", "bob"):
                await identity.add_user("acme", name, "admin", hsm, stack.pin, ADMIN_PASSWORD,
                                        token_label=stack.token_label)  # fmt: skip
    return stack


async def _install(stack: Stack, text: str) -> int:
    async with governed(stack) as (identity, audit):
        return await admin.install(identity, audit, "acme", textwrap.dedent(text))


async def _vote(stack: Stack, approval_id: str, who: str, approve: bool = True) -> admin.Vote:
    async with governed(stack) as (identity, audit):
        return await admin.vote(identity, audit, approval_id, who, ADMIN_PASSWORD, approve)


async def _send(proxy: Proxy, to: str = SINK, value: int = 1) -> dict[str, Any]:
    status, answer = await proxy.call("eth_sendTransaction", [
        {"from": proxy.stack.address, "to": to, "value": hex(value)}])  # fmt: skip
    assert status == 200, answer
    return dict(answer)


async def _decisions(stack: Stack) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT content FROM audit_log WHERE chain = 'acme' ORDER BY seq")
    finally:
        await conn.close()
    return [c for c in (json.loads(r["content"]) for r in rows) if c["kind"] == "decision"]


async def _ledger_rows(stack: Stack) -> int:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM ledger_transactions"))
    finally:
        await conn.close()


def _refused(answer: dict[str, Any], reason: str, rule: str | None) -> dict[str, Any]:
    assert "error" in answer, answer
    assert answer["error"]["code"] == -32003, answer
    data = answer["error"]["data"]
    assert data["reason"] == reason and data["rule"] == rule, data
    assert isinstance(data["policy_version"], int), data
    return dict(data)


async def test_a_deny_rule_refuses_takes_no_nonce_and_is_audited(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    version = await _install(stack, f"""
        version: 1
        default: allow
        rules:
          - name: only-the-sink
            action: deny
            match: {{to_not_in: ["{SINK}"]}}
          - name: no-eth-sign
            action: deny
            match: {{method: [eth_sign]}}
        """)  # fmt: skip
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        data = _refused(await _send(proxy, to=stack.other_address), "denied", "only-the-sink")
        assert data["policy_version"] == version
        assert await _ledger_rows(stack) == 0
        _, answer = await proxy.call("eth_sign", [stack.address, "0x68656c6c6f"])
        _refused(answer, "denied", "no-eth-sign")
        assert "result" in await _send(proxy)  # the sink is allowed
        _, answer = await proxy.call("personal_sign", ["0x68656c6c6f", stack.address])
        assert "result" in answer, answer
        async with session.get(url + "/metrics") as response:
            metrics = await response.text()
        assert 'qsigner_policy_decisions_total{action="deny",reason="denied"} 2.0' in metrics
        assert 'qsigner_policy_decisions_total{action="allow",reason="none"} 2.0' in metrics
    decisions = await _decisions(stack)
    assert [(d["method"], d["action"], d["rule"]) for d in decisions] == [
        ("eth_sendTransaction", "deny", "only-the-sink"), ("eth_sign", "deny", "no-eth-sign"),
        ("eth_sendTransaction", "allow", None), ("personal_sign", "allow", None)]  # fmt: skip
    assert all(d["policy_version"] == version and d["user"] == "alice" for d in decisions)


async def test_a_held_request_goes_through_once_approved(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    await _install(
        stack,
        """
        version: 1
        rules:
          - name: big-transfers
            action: hold
            match: {value: {gt: "1 ether"}}
        approvals: {approvers: 1, expire: 1h}
        """,
    )
    big = 2 * 10**18
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        held = _refused(await _send(proxy, value=big), "approval_required", "big-transfers")
        approval = held["approval_id"]
        # Asking again before anyone decided: the same approval.
        again = _refused(await _send(proxy, value=big), "approval_required", "big-transfers")
        assert again["approval_id"] == approval
        assert await _ledger_rows(stack) == 0
        with pytest.raises(Forbidden):  # alice is no admin, let alone her own approver
            async with governed(stack) as (identity, audit):
                await admin.vote(identity, audit, approval, "alice", stack.password, True)
        assert (await _vote(stack, approval, "ada")).state == "approved"
        with pytest.raises(BadInput):
            await _vote(stack, approval, "bob")  # decided already
        # Another body is another request: held on its own.
        other = _refused(await _send(proxy, value=big + 1), "approval_required", "big-transfers")
        assert other["approval_id"] != approval
        sent = await _send(proxy, value=big)
        assert "result" in sent, sent
        # Exactly once: the next repeat needs a new approval.
        third = _refused(await _send(proxy, value=big), "approval_required", "big-transfers")
        assert third["approval_id"] != approval
        assert (await _vote(stack, third["approval_id"], "bob", approve=False)).state == "rejected"
        _refused(await _send(proxy, value=big), "approval_rejected", "big-transfers")
    decisions = await _decisions(stack)
    assert [d["action"] for d in decisions].count("allow") == 1


async def test_shadow_mode_refuses_nothing_and_audits_what_it_would_have(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    draft = f"""
        version: 1
        mode: shadow
        rules:
          - name: only-the-sink
            action: deny
            match: {{to_not_in: ["{SINK}"]}}
        """
    await _install(stack, draft)
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        assert "result" in await _send(proxy, to=stack.other_address)
        assert "result" in await _send(proxy)
    decisions = await _decisions(stack)
    assert [(d["action"], d["rule"]) for d in decisions] == [
        ("shadow-deny", "only-the-sink"), ("allow", None)]  # fmt: skip
    # A dry-run of the same rules enforced shows the one decision that would change.
    async with governed(stack) as (identity, _audit):
        changed = await admin.dry_run(identity, "acme", textwrap.dedent(draft).replace(
            "mode: shadow", "mode: enforce"), 1000)  # fmt: skip
    assert len(changed) == 1, changed
    assert "shadow-deny" in changed[0] and "deny(only-the-sink)" in changed[0], changed


async def test_an_approval_expires(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    await _install(
        stack,
        """
        version: 1
        rules:
          - name: every-transfer
            action: hold
            match: {value: {gt: 0}}
        approvals: {approvers: 2, expire: 4s}
        """,
    )
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        first = _refused(await _send(proxy), "approval_required", "every-transfer")
        vote = await _vote(stack, first["approval_id"], "ada")
        assert (vote.state, vote.votes, vote.needed) == ("pending", 1, 2)  # one of two
        await asyncio.sleep(4.2)
        with pytest.raises(BadInput, match="expired"):
            await _vote(stack, first["approval_id"], "bob")
        _refused(await _send(proxy), "approval_expired", "every-transfer")
        # Told once: the next repeat asks anew, and two admins let it through.
        again = _refused(await _send(proxy), "approval_required", "every-transfer")
        assert again["approval_id"] != first["approval_id"]
        await _vote(stack, again["approval_id"], "ada")
        assert (await _vote(stack, again["approval_id"], "bob")).state == "approved"
        assert "result" in await _send(proxy)
        assert await _ledger_rows(stack) == 1


async def test_a_gas_limit_counts_the_gas_used_once_mined(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    reverter = contracts.deploy(anvil, "Reverter")
    await _install(
        stack,
        """
        version: 1
        limits:
          - {name: gas-per-hour, per: user, window: 1h, max_gas: 350000}
        """,
    )
    tx = {
        "from": stack.address,
        "to": reverter,
        "gas": hex(300_000),
        "data": "0x" + encode_call(parse_signature("succeed(uint256 x)"), [5]).hex(),
    }
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        _, answer = await proxy.call("eth_sendTransaction", [tx])
        assert "result" in answer, answer
        deadline = asyncio.get_running_loop().time() + 20
        while (receipt := contracts.rpc(anvil, "eth_getTransactionReceipt",
                                        [answer["result"]])) is None:  # fmt: skip
            assert asyncio.get_running_loop().time() < deadline, "not mined"
            await asyncio.sleep(0.1)
        used = int(receipt["gasUsed"], 16)
        assert used < 50_000, used
        # Counted as its gas limit (300000), then as what it used once mined: room for one more.
        deadline = asyncio.get_running_loop().time() + 20
        while await _usage(stack) != [used]:
            assert asyncio.get_running_loop().time() < deadline, await _usage(stack)
            await asyncio.sleep(0.3)
        _, answer = await proxy.call("eth_sendTransaction", [tx])
        assert "result" in answer, answer
        _, answer = await proxy.call("eth_sendTransaction", [tx])
        _refused(answer, "limit_exceeded", "gas-per-hour")


async def _usage(stack: Stack) -> list[int]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT amount FROM policy_usage WHERE state = 'reserved' "
                                "ORDER BY id")  # fmt: skip
    finally:
        await conn.close()
    return [int(r["amount"]) for r in rows]


async def test_a_request_the_node_refuses_gives_its_count_back(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    await _install(
        stack,
        """
        version: 1
        limits:
          - {name: one-a-day, per: account, window: 24h, max_transactions: 1}
        """,
    )
    base_fee = int(contracts.rpc(anvil, "eth_getBlockByNumber", ["latest", False])
                   .get("baseFeePerGas") or "0x0", 16)  # fmt: skip
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        if base_fee:
            # Below the base fee: the node refuses it, so it never counted.
            _, answer = await proxy.call("eth_sendTransaction", [
                {"from": stack.address, "to": SINK, "value": "0x1",
                 "maxFeePerGas": hex(base_fee - 1), "maxPriorityFeePerGas": "0x0"}])  # fmt: skip
            assert "base fee" in answer["error"]["message"], answer  # the node's own refusal
            assert await _usage(stack) == []
        assert "result" in await _send(proxy)
        _refused(await _send(proxy), "limit_exceeded", "one-a-day")


async def test_a_token_limit_in_the_tokens_own_units(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    token = contracts.token(anvil, decimals=2, mint_to={stack.address: 10**6})
    await _install(stack, f"""
        version: 1
        contracts:
          ACME: {{address: "{token}", standard: erc20}}
        limits:
          - {{name: acme-per-day, per: user, window: 24h, token: ACME, max_amount: "100 ACME"}}
        """)  # fmt: skip

    def transfer(amount: int) -> dict[str, Any]:
        data = encode_call(ERC20_TRANSFER, [bytes.fromhex(SINK[2:]), amount])
        return {"from": stack.address, "to": token, "data": "0x" + data.hex()}

    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        _, answer = await proxy.call("eth_sendTransaction", [transfer(9_999)])  # 99.99 ACME
        assert "result" in answer, answer
        _, answer = await proxy.call("eth_sendTransaction", [transfer(2)])  # past 100.00 ACME
        data = _refused(answer, "limit_exceeded", "acme-per-day")
        assert "ACME" in data["detail"], data
        _, answer = await proxy.call("eth_sendTransaction", [transfer(1)])  # exactly 100 ACME
        assert "result" in answer, answer


async def test_a_repeat_with_the_same_idempotency_key_is_not_decided_again(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    await _install(
        stack,
        """
        version: 1
        limits:
          - {name: one-a-day, per: account, window: 24h, max_transactions: 1}
        """,
    )
    tx = [{"from": stack.address, "to": SINK, "value": "0x1"}]
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        keyed = {**proxy.jwt(True), "Idempotency-Key": "payment-42"}
        _, first = await proxy.call("eth_sendTransaction", tx, headers=keyed)
        assert "result" in first, first
        # The limit is full now, yet the repeat gets the first transaction's hash.
        _, again = await proxy.call("eth_sendTransaction", tx, headers=keyed)
        assert again.get("result") == first["result"], again
        _refused(await _send(proxy), "limit_exceeded", "one-a-day")
    decisions = await _decisions(stack)
    assert [d["action"] for d in decisions] == ["allow", "deny"]  # the repeat decided nothing


async def test_an_approval_used_by_a_request_that_never_reached_the_chain_is_usable_again(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=False) as node:  # a base fee to fall short of
        stack = await _stack_with_admins(node, database_url, softhsm_module)
        await _install(
            stack,
            """
            version: 1
            rules:
              - {name: every-transfer, action: hold, match: {value: {gt: 0}}}
            """,
        )
        base_fee = int(contracts.rpc(node, "eth_getBlockByNumber", ["latest", False])
                       ["baseFeePerGas"], 16)  # fmt: skip
        underpriced = [
            {
                "from": stack.address,
                "to": SINK,
                "value": "0x1",
                "maxFeePerGas": hex(base_fee - 1),
                "maxPriorityFeePerGas": "0x0",
            }
        ]
        async with in_process(stack.settings) as (url, session):
            proxy = Proxy(url, session, stack)
            _, held = await proxy.call("eth_sendTransaction", underpriced)
            approval = _refused(held, "approval_required", "every-transfer")["approval_id"]
            await _vote(stack, approval, "ada")
            for _ in range(2):  # the node refuses it each time; the approval is not used up
                _, answer = await proxy.call("eth_sendTransaction", underpriced)
                assert "base fee" in answer["error"]["message"], answer
        conn = await asyncpg.connect(stack.database_url)
        try:
            state = await conn.fetchval("SELECT state FROM approvals WHERE id = $1", approval)
        finally:
            await conn.close()
        assert state == "approved"


async def test_editing_a_rule_keeps_the_limits_counting(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    """A limit counts from the installation of the first version that defined it so: a new
    version that only changes a rule keeps its count; a limit defined anew starts afresh."""
    stack = await _stack_with_admins(anvil, database_url, softhsm_module)
    limit = "limits:\n  - {name: one-a-day, per: account, window: 24h, max_transactions: %d}\n"
    await _install(stack, "version: 1\n" + limit % 1)
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        assert "result" in await _send(proxy)
        await _install(stack, "version: 1\nrules:\n  - {name: no-eth-sign, action: deny, "
                       "match: {method: eth_sign}}\n" + limit % 1)  # fmt: skip
        _refused(await _send(proxy), "limit_exceeded", "one-a-day")  # still counted
        version = await _install(stack, "version: 1\n" + limit % 2)  # another limit: from now on
        # In force on the replica within a second (NOTIFY): a send refused meanwhile, under
        # the version before, took nothing, and is made again.
        async with asyncio.timeout(2):
            while "result" not in (answer := await _send(proxy)):
                assert answer["error"]["data"]["policy_version"] < version, answer
                await asyncio.sleep(0.05)
        assert "result" in await _send(proxy)
        _refused(await _send(proxy), "limit_exceeded", "one-a-day")


async def _chain(stack: Stack) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        rows = await conn.fetch("SELECT content FROM audit_log WHERE chain = 'acme' ORDER BY seq")
    finally:
        await conn.close()
    return [json.loads(r["content"]) for r in rows]


async def test_each_sent_transaction_has_its_decision_then_its_outcome_in_the_log(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    """The decision is in the log before its transaction is answered; the outcome (its hash)
    follows without making the caller wait: with the next decision, on its own shortly after,
    and in any case before the app has closed."""
    stack = await build_stack(anvil, database_url, softhsm_module)
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        hashes = [(await _send(proxy))["result"] for _ in range(3)]
        assert len(await _decisions(stack)) == 3  # each one on record once answered
        for _ in range(100):  # alone, the last outcome is appended on its own
            if hashes[-1] in [c.get("tx_hash") for c in await _chain(stack)]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the last outcome was not appended on its own")
        # A request that fails after its decision (its nonce is taken) answers once that
        # decision is on record too.
        _, used = await proxy.call("eth_sendTransaction", [
            {"from": stack.address, "to": SINK, "value": "0x1", "nonce": "0x0"}])  # fmt: skip
        assert used["error"]["code"] == -32602, used
        assert len(await _decisions(stack)) == 4
        hashes.append((await _send(proxy))["result"])  # closing the app records its outcome
    chain = await _chain(stack)
    outcomes = [c for c in chain if c["kind"] == "signed"]
    assert [(c["tx_hash"], c["action"]) for c in outcomes] == [(h, "sent") for h in hashes]
    for outcome in outcomes:
        decided = next(i for i, c in enumerate(chain) if c["kind"] == "decision"
                       and c["request_id"] == outcome["request_id"])  # fmt: skip
        assert decided < chain.index(outcome)
