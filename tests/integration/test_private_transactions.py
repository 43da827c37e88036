"""GoQuorum private transactions through the proxy (CONTRACT 4.4), end to end with real SoftHSM,
PostgreSQL and anvil, in front of two stand-ins (no GoQuorum or Tessera binary can be installed
here): tests/support/tessera.py, which follows Tessera's OpenAPI for storeraw, partyinfo/keys and
sendsignedtx, and tests/support/quorum.py, a GoQuorum node stand-in that checks what GoQuorum
checks in eth_sendRawPrivateTransaction (v 37/38, pre-EIP-155 sender, value 0, a 64-byte hash its
Tessera holds, known recipients) and has anvil take the transaction's nonce on the public chain.

Verified here: what the proxy stores in Tessera and from which key, the signed bytes (legacy,
v 37/38, pre-EIP-155 hash, low-s, data = the Tessera hash), the eth_sendRawPrivateTransaction
arguments, one nonce space shared with public transactions, Idempotency-Key, the refusals
(privateFrom, unknown recipients, Tessera failures, policy) and that none takes a nonce, and
recovery resending a private transaction as a private one. Not verified: GoQuorum's private
execution and private receipts, which need GoQuorum itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rlp

from proxy import store
from proxy.guard import admin
from proxy.identity import Identity
from tests.support.anvil import rpc, run_anvil
from tests.support.checks import assert_signed_by
from tests.support.ledger import fetch
from tests.support.proxy_client import Proxy
from tests.support.quorum import QuorumStandIn, quorum_node
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process
from tests.support.tessera import TesseraStandIn, tessera, tessera_key

# A contract's init code: returns a 1-byte runtime (STOP). What it is matters only to Tessera.
INIT_CODE = "0x600a600c600039600a6000f3" + "00" * 10
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


@dataclass
class Private:
    proxy: Proxy
    tessera: TesseraStandIn
    node: QuorumStandIn
    own: list[str]  # the organisation's Tessera keys (default first)
    peers: list[str]  # keys of other parties the Tessera network knows

    @property
    def stack(self) -> Stack:
        return self.proxy.stack

    def tx(self, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"from": self.stack.address, "data": INIT_CODE,
                                "privateFor": [self.peers[0]]}  # fmt: skip
        base.update(fields)
        return {k: v for k, v in base.items() if v is not None}

    async def ledger(self) -> list[dict[str, Any]]:
        sql = "SELECT nonce, state, tx_hash, private_args FROM ledger_transactions ORDER BY id"
        return [dict(row) for row in await fetch(self.stack.database_url, sql)]

    async def audited(self) -> list[dict[str, Any]]:
        rows = await fetch(
            self.stack.database_url, "SELECT content FROM audit_log ORDER BY at, seq"
        )
        return [json.loads(row["content"]) for row in rows]


async def _set_tessera(stack: Stack, url: str, keys: list[str]) -> None:
    pool = await store.connect(stack.database_url, max_size=2)
    try:
        await Identity(pool, stack.settings).set_tessera("acme", url, keys)
    finally:
        await pool.close()


async def _set_policy(stack: Stack, text: str) -> None:
    pool = await store.connect(stack.database_url, max_size=2)
    try:
        identity = Identity(pool, stack.settings)
        await admin.install(identity, identity.audit, "acme", text)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _network(database_url: str, softhsm_module: str, *,
                   quorum_like: bool = True) -> AsyncIterator[Private]:  # fmt: skip
    own, peers = [tessera_key(), tessera_key()], [tessera_key(), tessera_key()]
    with run_anvil(chain_id=CHAIN_ID, quorum_like=quorum_like) as anvil_url:
        async with (tessera(own, peers) as standin,
                    quorum_node(anvil_url, standin, pre_london=quorum_like) as node):  # fmt: skip
            stack = await build_stack(anvil_url, database_url, softhsm_module,
                                      upstreams=(node.url,), resend_seconds=1)  # fmt: skip
            await _set_tessera(stack, standin.url, own)
            async with in_process(stack.settings) as (url, session):
                yield Private(Proxy(url, session, stack), standin, node, own, peers)


@pytest.fixture
async def private(database_url: str, softhsm_conf: Path,
                  softhsm_module: str) -> AsyncIterator[Private]:  # fmt: skip
    async with _network(database_url, softhsm_module) as network:
        yield network


async def test_goquorum_rules_on_fees_apply_before_a_node_refuses(private: Private) -> None:
    """Toward GoQuorum (blocks without baseFeePerGas, eth_gasPrice 0): no type 2 transaction,
    and no gas price, public or private; what is filled is legacy at price 0."""
    public = {"from": private.stack.address, "to": RECIPIENT, "value": "0x1"}
    for fields in ({**public, "maxFeePerGas": "0x1"}, {**public, "type": "0x2"},
                   {**public, "gasPrice": "0x3b9aca00"}, private.tx(gasPrice="0x1")):  # fmt: skip
        _, answer = await private.proxy.call("eth_sendTransaction", [fields])
        assert answer.get("error", {}).get("code") == -32602, (fields, answer)
    assert private.node.private_sends == [] and await private.ledger() == []
    for fields in ({**public, "gasPrice": "0x0"}, public):
        tx_hash = await private.proxy.result("eth_sendTransaction", [fields])
        mined = rpc(private.stack.anvil_url, "eth_getTransactionByHash", [tx_hash])
        assert mined["type"] == "0x0" and mined["gasPrice"] == "0x0"


async def test_on_a_fee_market_chain_a_private_transaction_is_legacy_and_priced(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    async with _network(database_url, softhsm_module, quorum_like=False) as private:
        tx_hash = await private.proxy.result("eth_sendTransaction", [private.tx(to=RECIPIENT)])
        (sent,) = private.node.private_sends
        _, gas_price, _, _, value, _, v, _, _ = rlp.decode(sent.raw)
        assert int.from_bytes(gas_price, "big") > 0 and int.from_bytes(v, "big") in (37, 38)
        assert value == b""
        assert (await _receipt(private.proxy, tx_hash))["transactionHash"] == tx_hash
        # A type 2 request with privateFor is refused: GoQuorum's private transactions are legacy.
        _, answer = await private.proxy.call("eth_sendTransaction", [
            private.tx(to=RECIPIENT, maxFeePerGas="0x77359400")])  # fmt: skip
        assert answer["error"]["code"] == -32602 and "legacy" in answer["error"]["message"]


async def _receipt(proxy: Proxy, tx_hash: str) -> dict[str, Any]:
    for _ in range(100):
        receipt = await proxy.result("eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            return dict(receipt)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{tx_hash} was not mined")


def _b64(hex_data: str) -> bytes:
    return bytes.fromhex(hex_data.removeprefix("0x"))


async def test_a_private_deployment_goes_through_tessera_and_is_mined(private: Private) -> None:
    """A private transaction's life as a user sees it: eth_sendTransaction with privateFor and
    privateFrom answers a hash; the node got eth_sendRawPrivateTransaction with a GoQuorum
    private transaction; Tessera holds the payload from the key named; the receipt arrives."""
    proxy, address = private.proxy, bytes.fromhex(private.stack.address[2:])
    tx_hash = await proxy.result("eth_sendTransaction",
                                 [private.tx(privateFrom=private.own[1])])  # fmt: skip
    assert len(private.node.private_sends) == 1
    sent = private.node.private_sends[0]
    assert sent.tx_hash == tx_hash and sent.sender == address and sent.nonce == 0
    assert sent.args == {"privateFor": [private.peers[0]], "privacyFlag": 0}
    # The bytes: legacy, pre-EIP-155 signing hash, v 37/38, low-s, value 0, data = the hash.
    assert_signed_by(sent.raw, address, chain_id=None, private=True)
    *_, value, data, v, _, _ = rlp.decode(sent.raw)
    assert int.from_bytes(v, "big") in (37, 38) and value == b"" and data == sent.tessera_hash
    stored = private.tessera.payload_of(sent.tessera_hash)
    assert stored.payload == _b64(INIT_CODE) and stored.sender == private.own[1]
    assert private.tessera.distributed[sent.tessera_hash].recipients == [private.peers[0]]
    receipt = await _receipt(proxy, tx_hash)
    assert receipt["transactionHash"] == tx_hash
    assert await proxy.result("eth_getTransactionCount", [private.stack.address, "latest"]) == "0x1"
    (row,) = await private.ledger()
    assert row["nonce"] == 0 and row["tx_hash"] == _b64(tx_hash)
    assert json.loads(row["private_args"]) == sent.args
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "quorum-signer"), "tx", "show", tx_hash],
        env={**os.environ, "QSIGNER_DATABASE_URL": private.stack.database_url},
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"private: for {private.peers[0]} (privacy flag 0)" in shown.splitlines()
    allowed = [d for d in await private.audited() if d.get("kind") == "decision"]
    assert allowed and allowed[-1]["detail"]["private"] == {"private_for": [private.peers[0]],
                                                            "privacy_flag": 0}  # fmt: skip
    # The payload is in the decision (the policy saw the code), not the Tessera hash.
    assert allowed[-1]["detail"]["data"] == INIT_CODE


async def test_the_default_key_sends_when_private_from_is_absent(private: Private) -> None:
    await private.proxy.result("eth_sendTransaction", [private.tx(
        privateFor=private.peers, privacyFlag=2, mandatoryFor=[private.peers[1]])])  # fmt: skip
    sent = private.node.private_sends[0]
    assert private.tessera.payload_of(sent.tessera_hash).sender == private.own[0]
    assert sent.args == {"privateFor": private.peers, "privacyFlag": 2,
                         "mandatoryFor": [private.peers[1]]}  # fmt: skip
    assert private.tessera.distributed[sent.tessera_hash].mandatory == [private.peers[1]]


async def test_public_and_private_transactions_share_one_nonce_space(private: Private) -> None:
    proxy = private.proxy
    public = {"from": private.stack.address, "to": RECIPIENT, "value": "0x1"}
    hashes = await asyncio.gather(*(
        proxy.result("eth_sendTransaction", [private.tx() if i % 2 else public])
        for i in range(12)))  # fmt: skip
    for tx_hash in hashes:
        assert (await _receipt(proxy, tx_hash))["status"] in ("0x1", "0x0")
    private_nonces = {send.nonce for send in private.node.private_sends}
    assert len(private.node.private_sends) == 6 and len(private_nonces) == 6
    sent_privately = {send.tx_hash for send in private.node.private_sends}
    public_nonces = {int(rpc(private.stack.anvil_url, "eth_getTransactionByHash", [h])["nonce"], 16)
                     for h in hashes if h not in sent_privately}  # fmt: skip
    assert len(public_nonces) == 6 and not public_nonces & private_nonces
    assert public_nonces | private_nonces == set(range(12))
    assert await proxy.result("eth_getTransactionCount", [private.stack.address, "latest"]) == "0xc"


async def test_a_private_send_carries_the_organisations_private_state(private: Private) -> None:
    """Multi-tenancy: the organisation's single PSI goes with the private send; another's PSI
    is refused (4100) before Tessera is asked anything."""
    pool = await store.connect(private.stack.database_url, max_size=2)
    try:
        identity = Identity(pool, private.stack.settings)
        await identity.set_private_states("acme", ["PS-ACME"])
        await identity.set_private_states("globex", ["PS-GLOBEX"])
    finally:
        await pool.close()
    await asyncio.sleep(1.1)  # every replica sees the change within a second
    headers = {**private.proxy.jwt(True), "Quorum-PSI": "PS-GLOBEX"}
    _, answer = await private.proxy.call("eth_sendTransaction", [private.tx()], headers=headers)
    assert answer["error"]["code"] == 4100 and private.tessera.calls == []
    await private.proxy.result("eth_sendTransaction", [private.tx()])
    assert [send.psi for send in private.node.private_sends] == ["PS-ACME"]


async def test_sign_transaction_returns_the_signed_private_transaction(private: Private) -> None:
    """eth_signTransaction with privateFor stores the payload and signs, without sending; the
    caller's own eth_sendRawPrivateTransaction through the proxy then settles the reservation."""
    proxy, address = private.proxy, bytes.fromhex(private.stack.address[2:])
    signed = await proxy.result("eth_signTransaction", [private.tx(to=RECIPIENT)])
    assert private.node.private_sends == []
    raw = _b64(signed["raw"])
    assert_signed_by(raw, address, chain_id=None, private=True)
    tx = signed["tx"]
    assert tx["v"] in ("0x25", "0x26") and tx["chainId"] is None and tx["value"] == "0x0"
    assert private.tessera.payload_of(_b64(tx["input"])).payload == _b64(INIT_CODE)
    tx_hash = await proxy.result("eth_sendRawPrivateTransaction",
                                 [signed["raw"], {"privateFor": [private.peers[0]]}])  # fmt: skip
    assert tx_hash == tx["hash"]
    await _receipt(proxy, tx_hash)
    for _ in range(50):
        (row,) = await private.ledger()
        if row["state"] == "mined":
            break
        await asyncio.sleep(0.1)
    assert row["state"] == "mined" and row["nonce"] == 0


async def _refused(private: Private, fields: dict[str, Any]) -> dict[str, Any]:
    """The error of a private send that must take no nonce, send nothing and store nothing."""
    _, answer = await private.proxy.call("eth_sendTransaction", [fields])
    assert "error" in answer, answer
    assert private.node.private_sends == [] and private.tessera.stored == {}
    assert [row for row in await private.ledger() if row["state"] != "released"] == []
    return dict(answer["error"])


async def _next_public_nonce_is_zero(private: Private) -> None:
    tx_hash = await private.proxy.result("eth_sendTransaction", [
        {"from": private.stack.address, "to": RECIPIENT, "value": "0x1"}])  # fmt: skip
    await _receipt(private.proxy, tx_hash)
    assert rpc(private.stack.anvil_url, "eth_getTransactionByHash", [tx_hash])["nonce"] == "0x0"


async def test_a_private_from_the_organisation_does_not_own_is_4100(private: Private) -> None:
    error = await _refused(private, private.tx(privateFrom=private.peers[1]))
    assert error["code"] == 4100 and private.peers[1] in error["message"]
    assert private.tessera.calls == []  # refused before Tessera was asked anything
    await _next_public_nonce_is_zero(private)


async def test_an_unknown_recipient_is_a_clear_error_and_takes_no_nonce(private: Private) -> None:
    stranger = tessera_key()
    error = await _refused(private, private.tx(privateFor=[private.peers[0], stranger]))
    assert error["code"] == -32603
    assert "Tessera" in error["message"] and stranger in error["message"]
    await _next_public_nonce_is_zero(private)


@pytest.mark.parametrize("failure", ["fail", "down"])
async def test_tessera_failing_is_a_clear_error_and_takes_no_nonce(
    private: Private, failure: str
) -> None:
    # Party info is read once and kept: a failure at storeraw is the one that shows.
    await private.proxy.result("eth_sendTransaction", [private.tx()])
    private.node.private_sends.clear()
    private.tessera.stored.clear()
    rows = await private.ledger()
    if failure == "fail":
        private.tessera.mode = "fail"
    else:
        await private.tessera.stop()
    _, answer = await private.proxy.call("eth_sendTransaction", [private.tx()])
    error = answer["error"]
    assert error["code"] == -32603 and "Tessera at http://127.0.0.1:" in error["message"]
    assert ("HTTP 500" if failure == "fail" else "unreachable") in error["message"]
    assert private.node.private_sends == [] and await private.ledger() == rows


async def test_a_node_refusing_is_answered_and_the_nonce_given_back(private: Private) -> None:
    """GoQuorum's own Tessera refusing the recipients (it may know fewer parties than ours):
    the node's error, unchanged, and the nonce is free again."""
    private.node.refuse_private = f"404 status: Recipient not found for key: {private.peers[0]}"
    _, answer = await private.proxy.call("eth_sendTransaction", [private.tx()])
    assert answer["error"] == {"code": -32000, "message": private.node.refuse_private}
    assert [row["state"] for row in await private.ledger()] == ["released"]
    await _next_public_nonce_is_zero(private)


async def test_idempotency_key_covers_private_sends(private: Private) -> None:
    headers = {**private.proxy.jwt(True), "Idempotency-Key": "private-order-7"}
    answers = await asyncio.gather(*(
        private.proxy.result("eth_sendTransaction", [private.tx()], headers=headers)
        for _ in range(4)))  # fmt: skip
    assert len(set(answers)) == 1
    assert [send.tx_hash for send in private.node.private_sends] == [answers[0]]


async def test_policy_restricts_recipients_deployments_and_flags(private: Private) -> None:
    await _set_policy(
        private.stack,
        f"""\
version: 1
default: allow
parties:
  bank-b: "{private.peers[0]}"
rules:
  - name: only-bank-b
    action: deny
    match: {{private_for_not_in: [bank-b]}}
  - name: no-private-deployments
    action: deny
    match: {{private: true, deploy: true}}
  - name: standard-privacy-only
    action: deny
    match: {{privacy_flag_not_in: [0]}}
""",
    )
    await asyncio.sleep(1.2)  # every replica takes a new policy within a second
    cases = [
        (private.tx(to=RECIPIENT, privateFor=private.peers), "only-bank-b"),
        (private.tx(), "no-private-deployments"),
        (private.tx(to=RECIPIENT, privacyFlag=1), "standard-privacy-only"),
    ]
    for fields, rule in cases:
        error = await _refused(private, fields)
        assert error["code"] == -32003 and error["data"]["rule"] == rule, error
        assert error["data"]["reason"] == "denied"
    refusals = await private.audited()
    assert {d.get("rule") for d in refusals if d.get("action") == "deny"} >= {
        "only-bank-b",
        "no-private-deployments",
        "standard-privacy-only",
    }
    # What the policy allows goes through.
    await private.proxy.result("eth_sendTransaction", [private.tx(to=RECIPIENT)])
    assert len(private.node.private_sends) == 1


async def test_recovery_resends_a_private_transaction_as_a_private_one(private: Private) -> None:
    """A send whose outcome is unknown keeps its nonce and bytes; recovery later sends the same
    bytes with eth_sendRawPrivateTransaction and the same recipients."""
    private.node.refuse_private = "the node broke down"  # not a definite refusal: unknown
    _, answer = await private.proxy.call("eth_sendTransaction", [private.tx()])
    assert answer["error"]["code"] != -32003
    (row,) = await private.ledger()
    assert row["state"] == "signed" and row["private_args"] is not None
    private.node.refuse_private = None
    for _ in range(100):
        if private.node.private_sends:
            break
        await asyncio.sleep(0.1)
    (sent,) = private.node.private_sends
    assert "0x" + row["tx_hash"].hex() == sent.tx_hash
    assert sent.args == json.loads(row["private_args"])
    await _receipt(private.proxy, sent.tx_hash)


@pytest.mark.parametrize("fields", [
    {"privateFor": "not a list"}, {"privateFor": ["AAAA"]},
    {"privateFrom": "nope"}, {"privacyFlag": 5}, {"privacyFlag": 2},
    {"mandatoryFor": ["x"]}, {"value": "0x1"}, {"maxFeePerGas": "0x1"}, {"data": None},
    {"privateTxType": "unrestricted"},
])  # fmt: skip
async def test_bad_private_fields_are_refused_before_anything(
    private: Private, fields: dict[str, Any]
) -> None:
    error = await _refused(private, {**private.tx(), **fields})
    assert error["code"] == -32602, error
    assert private.tessera.calls == []


async def test_without_a_tessera_private_transactions_are_refused(
    database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    """An organisation without `org set-tessera` uses QSIGNER_TESSERA_URL (Tessera's default
    key sending); with neither, -32602: a private payload never goes out in public."""
    peers = [tessera_key()]
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True) as anvil_url:
        async with tessera(peers=peers) as standin, quorum_node(anvil_url, standin) as node:
            stack = await build_stack(anvil_url, database_url, softhsm_module,
                                      upstreams=(node.url,))  # fmt: skip
            tx = {"from": stack.address, "data": INIT_CODE, "privateFor": peers}
            async with in_process(stack.settings) as (url, session):
                _, answer = await Proxy(url, session, stack).call("eth_sendTransaction", [tx])
                assert answer["error"]["code"] == -32602 and "Tessera" in answer["error"]["message"]
                assert standin.calls == [] and node.private_sends == []
            settings = dataclasses.replace(stack.settings, tessera_url=standin.url)
            async with in_process(settings) as (url, session):
                proxy = Proxy(url, session, stack)
                await proxy.result("eth_sendTransaction", [tx])
                (sent,) = node.private_sends
                assert standin.payload_of(sent.tessera_hash).sender == standin.keys[0]
                _, answer = await proxy.call("eth_sendTransaction", [
                    {**tx, "privateFrom": standin.keys[0]}])  # fmt: skip
                assert answer["error"]["code"] == 4100  # the organisation owns no key
