"""ethers v6 (npm, pinned) drives the running proxy as a dApp's script would."""

from __future__ import annotations

import os
from pathlib import Path

from signer.messages import personal_message_digest
from tests.acceptance.conftest import Running
from tests.support.anvil import rpc
from tests.support.checks import assert_signed_by, check_message_signature
from tests.support.node_scripts import run_client
from tests.support.stack import CHAIN_ID

ROOT = Path(__file__).resolve().parents[2]


def test_ethers_send_deploy_call_sign(product: Running) -> None:
    env = {**os.environ, "PROXY_URL": product.url, "PROXY_JWT": product.stack.jwt,
           "PROXY_PASSWORD": product.stack.password, "ACCOUNT": product.stack.address,
           "ARTIFACT": str(ROOT / "contracts" / "build" / "Counter.json")}  # fmt: skip
    report = run_client(Path(__file__).with_name("ethers_flow.mjs"), env)
    assert report["chainId"] == str(CHAIN_ID)
    assert report["accounts"] == [product.stack.address]
    assert report["count"] == "3"
    sender = bytes.fromhex(product.stack.address[2:])
    for tx_hash in report["hashes"]:
        receipt = rpc(product.stack.anvil_url, "eth_getTransactionReceipt", [tx_hash])
        assert receipt["status"] == "0x1"
        raw = rpc(product.stack.anvil_url, "eth_getRawTransactionByHash", [tx_hash])
        checked = assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)
        assert checked.type == (0 if product.quorum_like else 2)
    check_message_signature(personal_message_digest(b"hello from ethers"),
                            bytes.fromhex(report["signature"][2:]), sender)  # fmt: skip
