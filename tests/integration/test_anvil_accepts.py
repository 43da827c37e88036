"""Transactions signed inside SoftHSM are mined by a real node (anvil), in every scheme, in a
Quorum-like zero-fee chain and in a normal fee market; what the node stores is re-checked
strictly (anvil itself would accept a high-s signature)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from signer.base import checksum
from signer.transactions import Transaction, sign_transaction
from tests.conftest import SoftHsmToken
from tests.support.anvil import rpc, run_anvil
from tests.support.checks import assert_signed_by

CHAIN_ID = 1337
RECIPIENT = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture(params=["quorum-like", "fee-market"])
def anvil(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    quorum_like = request.param == "quorum-like"
    with run_anvil(chain_id=CHAIN_ID, quorum_like=quorum_like) as url:
        yield url, quorum_like


def _wait_receipt(url: str, tx_hash: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        receipt = rpc(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt:
            return dict(receipt)
        time.sleep(0.05)
    raise AssertionError(f"{tx_hash} not mined")


def test_every_scheme_is_mined(hsm_token: SoftHsmToken, anvil: tuple[str, bool]) -> None:
    url, quorum_like = anvil
    key = hsm_token.token.generate_key(os.urandom(16), "anvil")
    rpc(url, "anvil_setBalance", [checksum(key.address), hex(10**20)])
    # anvil's eth_gasPrice says 1 gwei even with --gas-price 0; a Quorum network prices at 0.
    price = 0 if quorum_like else int(rpc(url, "eth_gasPrice"), 16)
    assert price > 0 or quorum_like
    base: dict[str, Any] = {"gas": "0x5208", "to": RECIPIENT, "value": "0x1"}
    legacy = {"gasPrice": hex(price)}
    fee_1559 = {"maxFeePerGas": hex(2 * price + 1), "maxPriorityFeePerGas": "0x1"}
    schemes: list[tuple[str, dict[str, Any], int | None]] = [
        ("legacy-pre155", legacy, None),
        ("legacy-eip155", {**legacy, "chainId": hex(CHAIN_ID)}, CHAIN_ID),
        ("eip2930", {**legacy, "chainId": hex(CHAIN_ID), "type": "0x1",
                     "accessList": [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 32]}],
                     "gas": "0x7000"}, CHAIN_ID),
        ("eip1559", {**fee_1559, "chainId": hex(CHAIN_ID)}, CHAIN_ID),
    ]  # fmt: skip
    for nonce, (name, fields, chain_id) in enumerate(schemes):
        tx = Transaction.from_dict(
            {**base, **fields, "nonce": hex(nonce)}, unprotected=chain_id is None
        )
        signed = sign_transaction(tx, key)
        assert_signed_by(signed.raw, key.address, chain_id=chain_id)
        tx_hash = rpc(url, "eth_sendRawTransaction", ["0x" + signed.raw.hex()])
        assert tx_hash == "0x" + signed.hash.hex(), name
        receipt = _wait_receipt(url, tx_hash)
        assert receipt["status"] == "0x1", name
        assert receipt["from"].lower() == "0x" + key.address.hex(), name
        # Read back what the node stored and check it as GoQuorum would.
        stored = rpc(url, "eth_getRawTransactionByHash", [tx_hash])
        assert bytes.fromhex(stored[2:]) == signed.raw, name
    assert int(rpc(url, "eth_getTransactionCount", [checksum(key.address), "latest"]), 16) == 4
