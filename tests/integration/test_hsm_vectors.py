"""Known-answer vectors signed inside SoftHSM: random k, so each signature must be low-s,
verify, recover the vector's address, and sit on exactly the vector's unsigned transaction."""

from __future__ import annotations

from typing import Any

from signer.messages import sign_personal_message, sign_typed_data
from signer.pkcs11 import HsmKey
from signer.transactions import Transaction, sign_transaction, unsigned_payload
from tests.conftest import SoftHsmToken
from tests.support.checks import (
    assert_signed_by,
    check_message_signature,
    check_raw_transaction,
)
from tests.support.hsm import import_private_key
from tests.support.vectors import hexbytes, load


def _keys(token: SoftHsmToken, cases: list[dict[str, Any]]) -> dict[str, HsmKey]:
    keys: dict[str, HsmKey] = {}
    for case in cases:
        pk = case.get("privateKey")
        if pk and pk not in keys:
            keys[pk] = import_private_key(token.token, hexbytes(pk))
    return keys


def test_transaction_vectors_through_the_hsm(hsm_token: SoftHsmToken) -> None:
    cases = load("tx_signing.json")
    keys = _keys(hsm_token, cases)
    for case in cases:
        key = keys[case["privateKey"]]
        assert key.address == hexbytes(case["sender"]), case["name"]
        tx = Transaction.from_dict(case["tx"], unprotected=case["scheme"] == "legacy-pre155")
        signed = sign_transaction(tx, key)
        chain_id = None if case["scheme"] == "legacy-pre155" else int(case["tx"]["chainId"], 16)
        checked = assert_signed_by(signed.raw, key.address, chain_id=chain_id)
        assert checked.hash == signed.hash
        # Same transaction as the vector's: only the signature (random k) differs.
        assert unsigned_payload(tx) == hexbytes(case["unsignedTx"])
        expected = check_raw_transaction(hexbytes(case["signedRaw"]), chain_id=chain_id)
        assert checked.fields == expected.fields and checked.type == expected.type


def test_private_transaction_vectors_through_the_hsm(hsm_token: SoftHsmToken) -> None:
    cases = [c for c in load("quorum_private_tx.json") if c["privateKey"]]
    keys = _keys(hsm_token, cases)
    for case in cases:
        key = keys[case["privateKey"]]
        signed = sign_transaction(Transaction.from_dict(case["tx"], private=True), key)
        assert_signed_by(signed.raw, hexbytes(case["sender"]), chain_id=None, private=True)


def test_message_vectors_through_the_hsm(hsm_token: SoftHsmToken) -> None:
    personal = [c for c in load("personal_sign.json") if c["privateKey"]]
    typed = [c for c in load("eip712.json") if c["privateKey"]]
    keys = _keys(hsm_token, personal + typed)
    for case in personal:
        key = keys[case["privateKey"]]
        signed = sign_personal_message(hexbytes(case["messageHex"]), key)
        assert signed.digest == hexbytes(case["digest"])
        check_message_signature(signed.digest, signed.signature_bytes, key.address)
    for case in typed:
        key = keys[case["privateKey"]]
        signed = sign_typed_data(case["typedData"], key)
        assert signed.digest == hexbytes(case["digest"])
        check_message_signature(signed.digest, signed.signature_bytes, key.address)
