"""Known-answer transaction vectors through the software signer: byte for byte."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from signer.software import SoftwareSigner
from signer.transactions import (
    Transaction,
    encode_signed,
    sign_transaction,
    signing_digest,
    unsigned_payload,
)
from tests.support.checks import assert_signed_by
from tests.support.vectors import case_id, hexbytes, load

TX_CASES = load("tx_signing.json")
PRIVATE_CASES = [c for c in load("quorum_private_tx.json") if c["privateKey"]]


def test_every_scheme_is_covered() -> None:
    assert {c["scheme"] for c in TX_CASES} == {
        "legacy-pre155", "legacy-eip155", "eip2930", "eip1559"
    }  # fmt: skip
    assert len(TX_CASES) >= 400 and len(PRIVATE_CASES) >= 6


@pytest.mark.parametrize("case", TX_CASES, ids=case_id)
def test_transaction_vector(case: dict[str, Any]) -> None:
    tx = Transaction.from_dict(case["tx"], unprotected=case["scheme"] == "legacy-pre155")
    assert unsigned_payload(tx) == hexbytes(case["unsignedTx"])
    assert signing_digest(tx) == hexbytes(case["signingHash"])

    signer = SoftwareSigner(hexbytes(case["privateKey"]))
    signed = sign_transaction(tx, signer)
    assert signed.raw == hexbytes(case["signedRaw"])
    assert signed.hash == hexbytes(case["txHash"])
    assert signed.sender == hexbytes(case["sender"])
    assert (signed.signature.r, signed.signature.s) == (int(case["r"], 16), int(case["s"], 16))

    chain_id = None if case["scheme"] == "legacy-pre155" else int(case["tx"]["chainId"], 16)
    assert_signed_by(signed.raw, signed.sender, chain_id=chain_id)


@pytest.mark.parametrize("case", TX_CASES[::7], ids=case_id)
def test_eth_account_agrees(case: dict[str, Any]) -> None:
    """An independent serialiser (eth-account) produces the same raw transaction."""
    fields = {k: v for k, v in case["tx"].items() if not (k == "to" and v is None)}
    if fields.get("type") == "0x0":
        del fields["type"]
    theirs = Account.sign_transaction(fields, case["privateKey"])
    ours = sign_transaction(
        Transaction.from_dict(case["tx"], unprotected=case["scheme"] == "legacy-pre155"),
        SoftwareSigner(hexbytes(case["privateKey"])),
    )
    assert bytes(theirs.raw_transaction) == ours.raw


@pytest.mark.parametrize("case", PRIVATE_CASES, ids=case_id)
def test_quorum_private_vector(case: dict[str, Any]) -> None:
    tx = Transaction.from_dict(case["tx"], private=True)
    assert unsigned_payload(tx) == hexbytes(case["unsignedTx"])
    assert signing_digest(tx) == hexbytes(case["signingHash"])
    signed = sign_transaction(tx, SoftwareSigner(hexbytes(case["privateKey"])))
    assert signed.raw == hexbytes(case["signedRaw"])
    assert signed.hash == hexbytes(case["txHash"])
    assert signed.sender == hexbytes(case["sender"])
    # The same signature with v 27/28 is the plain pre-EIP-155 transaction.
    public = Transaction.from_dict(case["tx"], unprotected=True)
    assert encode_signed(public, signed.signature) == hexbytes(case["publicEquivalentRaw"])
    assert_signed_by(signed.raw, signed.sender, chain_id=None, private=True)


def test_besu_private_transaction_decodes_to_its_sender() -> None:
    (case,) = [c for c in load("quorum_private_tx.json") if not c["privateKey"]]
    checked = assert_signed_by(
        hexbytes(case["signedRaw"]), hexbytes(case["sender"]), chain_id=None, private=True
    )
    assert checked.type == 0
