"""The proxy in process (a real HTTP server on loopback) in front of real anvil, PostgreSQL and
SoftHSM: authentication, routing, each signing handler, each error of CONTRACT 4.5."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.messages import encode_typed_data

from signer.messages import personal_message_digest, typed_data_digest
from tests.support.anvil import rpc, run_anvil
from tests.support.checks import assert_signed_by, check_message_signature
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, build_stack, in_process


@pytest.fixture(params=["quorum-like", "fee-market"])
def chain(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    quorum_like = request.param == "quorum-like"
    with run_anvil(chain_id=CHAIN_ID, quorum_like=quorum_like) as url:
        yield url, quorum_like


@pytest.fixture
async def proxy(chain: tuple[str, bool], database_url: str, softhsm_conf: Path,
                softhsm_module: str) -> AsyncIterator[Proxy]:  # fmt: skip
    stack = await build_stack(chain[0], database_url, softhsm_module, passthrough=("txpool_*",))
    async with in_process(stack.settings) as (url, session):
        yield Proxy(url, session, stack)


async def test_every_method_needs_authentication(proxy: Proxy) -> None:
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic x"},
                    {"Authorization": "Bearer qsk_0000000000000000_" + "a" * 43}):  # fmt: skip
        status, answer = await proxy.call("eth_blockNumber", [], headers=headers)
        assert status == 401 and answer["error"]["code"] == 4100
    status, answer = await proxy.call("eth_blockNumber", [], headers={}, path="/rpc/qsk_nope")
    assert status == 401


async def test_reads_are_forwarded_with_jwt_or_api_key(proxy: Proxy) -> None:
    assert await proxy.result("eth_chainId", headers=proxy.jwt()) == hex(CHAIN_ID)
    assert await proxy.result("net_version", headers=proxy.jwt()) == str(CHAIN_ID)
    block = await proxy.result("eth_blockNumber", [], headers={},
                               path=f"/rpc/{proxy.stack.api_key}")  # fmt: skip
    assert block.startswith("0x")
    bearer = {"Authorization": f"Bearer {proxy.stack.api_key}"}
    assert await proxy.result("web3_clientVersion", [], headers=bearer)
    assert "pending" in await proxy.result("txpool_status", [], headers=bearer)  # PASSTHROUGH


@pytest.mark.parametrize(
    "method", ["admin_peers", "debug_traceTransaction", "miner_start", "personal_unlockAccount",
               "clique_getSigners", "istanbul_getValidators", "qbft_getValidatorsByBlockNumber",
               "raft_cluster", "anvil_setBalance", "evm_mine", "foo", "eth_signTypedData_v1"],
)  # fmt: skip
async def test_other_namespaces_are_refused(proxy: Proxy, method: str) -> None:
    status, answer = await proxy.call(method, [])
    assert status == 200 and answer["error"]["code"] == -32601


async def test_accounts_are_the_organisations(proxy: Proxy) -> None:
    for method in ("eth_accounts", "eth_requestAccounts", "personal_listAccounts"):
        assert await proxy.result(method, headers=proxy.jwt()) == [proxy.stack.address]


async def test_send_transaction_is_signed_low_s_and_mined(proxy: Proxy) -> None:
    recipient = "0x000000000000000000000000000000000000dEaD"
    tx_hash = await proxy.result(
        "eth_sendTransaction", [{"from": proxy.stack.address.lower(), "to": recipient,
                                 "value": "0x2"}])  # fmt: skip
    receipt = await _receipt(proxy, tx_hash)
    assert receipt["status"] == "0x1"
    raw = bytes.fromhex(rpc(proxy.stack.anvil_url, "eth_getRawTransactionByHash", [tx_hash])[2:])
    checked = assert_signed_by(raw, bytes.fromhex(proxy.stack.address[2:]), chain_id=CHAIN_ID)
    base_fee = rpc(proxy.stack.anvil_url, "eth_getBlockByNumber", ["latest", False])[
        "baseFeePerGas"]  # fmt: skip
    assert checked.type == (2 if int(base_fee, 16) else 0)
    # With an API key alone (no password), a second one gets the next nonce.
    second = await proxy.result(
        "eth_sendTransaction", [{"from": proxy.stack.address, "to": recipient}], headers={},
        path=f"/rpc/{proxy.stack.api_key}")  # fmt: skip
    details = rpc(proxy.stack.anvil_url, "eth_getTransactionByHash", [second])
    assert int(details["nonce"], 16) == 1


async def _receipt(proxy: Proxy, tx_hash: str) -> dict[str, Any]:
    import asyncio

    for _ in range(200):
        receipt = rpc(proxy.stack.anvil_url, "eth_getTransactionReceipt", [tx_hash])
        if receipt:
            return dict(receipt)
        await asyncio.sleep(0.05)
    raise AssertionError("not mined")


async def test_signing_refusals(proxy: Proxy) -> None:
    tx = {"from": proxy.stack.address, "to": proxy.stack.address}
    status, answer = await proxy.call("eth_sendTransaction", [tx], headers=proxy.jwt())
    assert status == 401 and answer["error"]["code"] == 4100  # no password
    status, answer = await proxy.call(
        "eth_sendTransaction", [tx],
        headers={**proxy.jwt(), "X-Signer-Password": "wrong"})  # fmt: skip
    assert status == 401 and answer["error"]["code"] == 4100
    assert proxy.stack.password not in json.dumps(answer)
    status, answer = await proxy.call(
        "eth_sendTransaction", [{**tx, "from": proxy.stack.other_address}]
    )
    assert status == 200 and answer["error"]["code"] == 4100  # another organisation's account
    status, answer = await proxy.call(
        "eth_sendTransaction", [tx],
        headers={"Authorization": f"Bearer {proxy.stack.viewer_jwt}",
                 "X-Signer-Password": proxy.stack.password})  # fmt: skip
    assert status == 200 and answer["error"]["code"] == 4100  # a viewer reads only
    for bad in ({**tx, "value": "12"}, {**tx, "gasPrice": "0x1", "maxFeePerGas": "0x1"},
                {**tx, "chainId": "0x1"}, {"to": proxy.stack.address}, "nope"):  # fmt: skip
        status, answer = await proxy.call("eth_sendTransaction", [bad])
        assert status == 200 and answer["error"]["code"] == -32602, (bad, answer)


async def test_sign_transaction_returns_raw_and_tx(proxy: Proxy) -> None:
    answer = await proxy.result("eth_signTransaction", [{
        "from": proxy.stack.address, "to": proxy.stack.address, "nonce": "0x7", "gas": "0x5208",
        "gasPrice": "0x3"}])  # fmt: skip
    raw = bytes.fromhex(answer["raw"][2:])
    checked = assert_signed_by(raw, bytes.fromhex(proxy.stack.address[2:]), chain_id=CHAIN_ID)
    assert answer["tx"]["nonce"] == "0x7" and answer["tx"]["gasPrice"] == "0x3"
    assert answer["tx"]["hash"] == "0x" + checked.hash.hex()
    _status, refused = await proxy.call("eth_signTransaction", [{
        "from": proxy.stack.address, "to": proxy.stack.address, "gas": "0x100"}])  # fmt: skip
    assert refused["error"]["code"] == -32602 and "intrinsic" in refused["error"]["message"]


async def test_message_signatures(proxy: Proxy) -> None:
    address = bytes.fromhex(proxy.stack.address[2:])
    for method, params, message in (
        ("personal_sign", ["0x68656c6c6f", proxy.stack.address], b"hello"),
        ("personal_sign", ["hello text", proxy.stack.address.lower()], b"hello text"),
        ("eth_sign", [proxy.stack.address, "0xdeadbeef"], b"\xde\xad\xbe\xef"),
    ):
        signature = bytes.fromhex((await proxy.result(method, params))[2:])
        check_message_signature(personal_message_digest(message), signature, address)

    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"},
                                   {"name": "chainId", "type": "uint256"}],
                  "Mail": [{"name": "contents", "type": "string"}]},
        "primaryType": "Mail", "domain": {"name": "demo", "chainId": CHAIN_ID},
        "message": {"contents": "hi"},
    }  # fmt: skip
    signature = bytes.fromhex(
        (await proxy.result("eth_signTypedData_v4", [proxy.stack.address, json.dumps(typed)]))[2:]
    )
    digest = typed_data_digest(typed)
    check_message_signature(digest, signature, address)
    eth_account_digest = encode_typed_data(full_message=typed)
    assert eth_account_digest.body  # the same structure eth-account accepts
    wrong_chain = {**typed, "domain": {"name": "demo", "chainId": 1}}
    _status, answer = await proxy.call("eth_signTypedData_v4", [proxy.stack.address, wrong_chain])
    assert answer["error"]["code"] == -32602


async def test_wallet_chain_methods(proxy: Proxy) -> None:
    assert await proxy.result("wallet_switchEthereumChain", [{"chainId": hex(CHAIN_ID)}]) is None
    _status, answer = await proxy.call("wallet_switchEthereumChain", [{"chainId": "0x1"}])
    assert answer["error"]["code"] == 4902


async def test_malformed_bodies_each_get_a_json_rpc_error(proxy: Proxy) -> None:
    auth = proxy.jwt()
    cases: list[tuple[bytes, int]] = [
        (b"not json", -32700), (b"[" * 50_000, -32700), (b'{"jsonrpc":"2.0"}', -32600),
        (b"[]", -32600), (b'"x"', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"eth_sendTransaction","params":[1]}', -32602),
    ]  # fmt: skip
    for body, code in cases:
        status, answer = await proxy.post(body, headers=auth)
        assert answer["error"]["code"] == code, (body[:40], answer)
    status, answer = await proxy.post(b"[" + b"1," * (5 * 1024 * 1024 // 2) + b"1]", headers=auth)
    assert status == 413 and answer["error"]["code"] == -32600
    # The server keeps serving.
    assert await proxy.result("eth_chainId", headers=auth) == hex(CHAIN_ID)


async def test_batches_and_notifications(proxy: Proxy) -> None:
    status, answers = await proxy.post(
        [{"jsonrpc": "2.0", "id": "a", "method": "eth_chainId"}, 7,
         {"jsonrpc": "2.0", "id": 2.5, "method": "admin_peers"},
         {"jsonrpc": "2.0", "method": "eth_blockNumber"}],
        headers=proxy.jwt())  # fmt: skip
    assert status == 200 and len(answers) == 3
    by_id = {json.dumps(a["id"]): a for a in answers}
    assert by_id['"a"']["result"] == hex(CHAIN_ID)
    assert by_id["null"]["error"]["code"] == -32600
    assert by_id["2.5"]["error"]["code"] == -32601
    status, answer = await proxy.post({"jsonrpc": "2.0", "method": "eth_chainId"},
                                      headers=proxy.jwt())  # fmt: skip
    assert status == 204 and answer is None


async def test_operations_endpoints(proxy: Proxy) -> None:
    async with proxy.session.get(proxy.url + "/healthz") as response:
        assert response.status == 200
    async with proxy.session.get(proxy.url + "/readyz") as response:
        body = await response.json()
        assert response.status == 200 and body["ready"] is True
        assert body["database"] == {"ok": True} and body["hsm"] == {"ok": True}
        assert body["nodes"][0]["ok"] is True and body["nodes"][0]["chain_id"] == CHAIN_ID
    await proxy.result("eth_chainId", headers=proxy.jwt())
    for made_up in ("eth_madeUpOne", "eth_madeUpTwo", "nonsense_x"):
        await proxy.call(made_up, [], headers=proxy.jwt())
    async with proxy.session.get(proxy.url + "/metrics") as response:
        text = await response.text()
        assert 'qsigner_rpc_requests_total{method="eth_chainId",outcome="ok"}' in text
        assert "qsigner_node_up" in text
        assert "madeUp" not in text and "nonsense" not in text
        assert 'qsigner_rpc_requests_total{method="other",outcome="error"} 3.0' in text


async def test_rate_limit_answers_429(chain: tuple[str, bool], database_url: str,
                                      softhsm_conf: Path, softhsm_module: str) -> None:  # fmt: skip
    stack = await build_stack(chain[0], database_url, softhsm_module, rate_limit=2, rate_burst=3)
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        statuses = [(await proxy.call("eth_chainId", headers=proxy.jwt()))[0] for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        _, answer = await proxy.call("eth_chainId", headers=proxy.jwt())
        assert answer["error"]["code"] == -32005
        # Another user has a bucket of their own.
        status, _ = await proxy.call("eth_chainId", headers=proxy.jwt(token=stack.viewer_jwt))
        assert status == 200


async def test_cors_for_configured_origins_only(
    chain: tuple[str, bool], database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await build_stack(
        chain[0], database_url, softhsm_module, cors_origins=("https://app.example",)
    )
    allowed, evil = "https://app.example", "https://evil.example"
    async with in_process(stack.settings) as (url, session):
        preflight = {
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        for path in ("/", f"/rpc/{stack.api_key}"):
            async with session.options(url + path, headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == allowed
                for header in ("Authorization", "Content-Type", "X-Signer-Password",
                               "Idempotency-Key", "Quorum-PSI"):  # fmt: skip
                    assert header in r.headers["Access-Control-Allow-Headers"]
        async with session.options(url + "/", headers={**preflight, "Origin": evil}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
        auth = {"Authorization": f"Bearer {stack.jwt}"}
        async with session.post(url + "/", json=body, headers={**auth, "Origin": allowed}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == allowed
        async with session.post(url + "/", json=body, headers={**auth, "Origin": evil}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers


async def test_private_and_unknown_fields_are_refused_and_nothing_is_sent(proxy: Proxy) -> None:
    """A private payload must never reach the chain as a public transaction (issue 13, item 1):
    without a Tessera for the organisation or QSIGNER_TESSERA_URL, a private request is
    refused."""
    secret_payload = "0x" + b"private payload for org B only".hex()
    count = rpc(proxy.stack.anvil_url, "eth_getTransactionCount", [proxy.stack.address, "pending"])
    base = {"from": proxy.stack.address, "to": proxy.stack.address, "data": secret_payload}
    for method in ("eth_sendTransaction", "eth_signTransaction"):
        party, own = ("ROAZBWtSacxXQrOe3FGAqJDyJjFePR5ce4TSIzmJ0Bc=",
                      "BULeR8JyUWhiuuCMU/HLA0Q5pzkYT+cHII3ZKBey3Bo=")  # fmt: skip
        for extra in ({"privateFor": [party]}, {"privateFor": [], "privateFrom": own},
                      {"privateFor": [party], "privacyFlag": 1},
                      {"privateFor": [party], "privacyFlag": 2,
                       "mandatoryFor": [party]}):  # fmt: skip
            status, answer = await proxy.call(method, [{**base, **extra}])
            assert status == 200 and answer["error"]["code"] == -32602, answer
            assert "QSIGNER_TESSERA_URL" in answer["error"]["message"]
        for alone in ({"privateFrom": party}, {"privacyFlag": 1}, {"mandatoryFor": [party]}):
            status, answer = await proxy.call(method, [{**base, **alone}])
            assert answer["error"]["code"] == -32602 and "privateFor" in answer["error"]["message"]
        status, answer = await proxy.call(method, [{**base, "blobVersionedHashes": ["0x01"]}])
        assert answer["error"]["code"] == -32602
        assert "blobVersionedHashes" in answer["error"]["message"]
        status, answer = await proxy.call(method, [{**base, "input": "0x01"}])
        assert answer["error"]["code"] == -32602 and "differ" in answer["error"]["message"]
    assert rpc(proxy.stack.anvil_url, "eth_getTransactionCount",
               [proxy.stack.address, "pending"]) == count  # fmt: skip
    # cast's shape (both input and data, equal) still sends.
    tx_hash = await proxy.result("eth_sendTransaction", [{**base, "input": secret_payload}])
    assert (await _receipt(proxy, tx_hash))["status"] == "0x1"
