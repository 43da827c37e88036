"""web3.py drives the running proxy as a user's script would: send a transaction, deploy a
contract and call it, sign typed data, and hardhat-style calls without gas or fee fields. Every
mined transaction is checked low-s and from the HSM account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from signer.messages import typed_data_digest
from tests.acceptance.conftest import Running
from tests.support.checks import assert_signed_by, check_message_signature
from tests.support.stack import CHAIN_ID

ARTIFACT = Path(__file__).resolve().parents[2] / "contracts" / "build" / "Counter.json"


def connect(product: Running) -> Web3:
    headers = {"Authorization": f"Bearer {product.stack.jwt}",
               "X-Signer-Password": product.stack.password}  # fmt: skip
    return Web3(Web3.HTTPProvider(product.url, request_kwargs={"headers": headers, "timeout": 30}))


def check_mined(w3: Web3, product: Running, tx_hash: Any) -> dict[str, Any]:
    receipt = dict(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30))
    assert receipt["status"] == 1
    tx_hex = tx_hash if isinstance(tx_hash, str) else Web3.to_hex(tx_hash)
    raw = w3.provider.make_request("eth_getRawTransactionByHash", [tx_hex])["result"]
    checked = assert_signed_by(bytes.fromhex(raw[2:]), bytes.fromhex(product.stack.address[2:]),
                               chain_id=CHAIN_ID)  # fmt: skip
    assert checked.type == (0 if product.quorum_like else 2)
    return receipt


def test_send_deploy_call(product: Running) -> None:
    w3 = connect(product)
    assert w3.eth.chain_id == CHAIN_ID
    assert w3.eth.accounts == [product.stack.address]
    account = product.stack.address
    dead = "0x000000000000000000000000000000000000dEaD"
    tx_hash = w3.eth.send_transaction({"from": account, "to": dead, "value": 12345})
    check_mined(w3, product, tx_hash)

    artifact = json.loads(ARTIFACT.read_text())
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = check_mined(w3, product, factory.constructor().transact({"from": account}))
    counter = w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])
    check_mined(w3, product, counter.functions.increment(5).transact({"from": account}))
    assert counter.functions.count().call() == 5
    assert counter.functions.lastCaller().call() == account
    with pytest.raises(ContractLogicError, match="increment by zero"):
        counter.functions.increment(0).transact({"from": account})


def test_typed_data_and_personal_sign(product: Running) -> None:
    w3 = connect(product)
    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"},
                                   {"name": "chainId", "type": "uint256"}],
                  "Order": [{"name": "amount", "type": "uint256"}]},
        "primaryType": "Order", "domain": {"name": "shop", "chainId": CHAIN_ID},
        "message": {"amount": "1000"},
    }  # fmt: skip
    signature = w3.eth.sign_typed_data(product.stack.address, typed)
    check_message_signature(typed_data_digest(typed), bytes(signature),
                            bytes.fromhex(product.stack.address[2:]))  # fmt: skip


def test_hardhat_style_calls(product: Running) -> None:
    """`accounts: "remote"`: eth_accounts, then eth_sendTransaction with no gas or fee fields."""
    w3 = connect(product)
    (account,) = w3.provider.make_request("eth_accounts", [])["result"]
    answer = w3.provider.make_request("eth_sendTransaction", [{
        "from": account.lower(), "to": "0x000000000000000000000000000000000000bEEF",
        "value": "0x1"}])  # fmt: skip
    check_mined(w3, product, answer["result"])


def test_api_key_in_the_url(product: Running) -> None:
    w3 = Web3(Web3.HTTPProvider(f"{product.url}/rpc/{product.stack.api_key}"))
    tx_hash = w3.eth.send_transaction({"from": product.stack.address, "to": product.stack.address,
                                       "value": 1})  # fmt: skip
    check_mined(w3, product, tx_hash)
