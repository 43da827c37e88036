"""Transaction fields: what is accepted, and a clear InvalidTransaction for what is not."""

from __future__ import annotations

from typing import Any

import pytest

from signer.errors import InvalidTransaction
from signer.transactions import Transaction

BASE: dict[str, Any] = {
    "nonce": "0x1",
    "gas": "0x5208",
    "to": "0x3535353535353535353535353535353535353535",
    "value": "0x0",
    "chainId": "0x539",
    "gasPrice": "0x0",
}


def tx(**changes: Any) -> Transaction:
    fields = {**BASE, **changes}
    return Transaction.from_dict({k: v for k, v in fields.items() if v is not ...})


def test_type_is_inferred_from_fee_fields() -> None:
    assert tx().type == 0
    assert tx(gasPrice=..., maxFeePerGas="0x2", maxPriorityFeePerGas="0x1").type == 2
    assert tx(accessList=[{"address": BASE["to"], "storageKeys": []}]).type == 1


def test_addresses_in_any_case_but_mixed_case_must_be_checksummed() -> None:
    lower = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
    assert tx(to=lower).to == tx(to=lower.upper().replace("0X", "0x")).to
    assert tx(to="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").to == bytes.fromhex(lower[2:])
    with pytest.raises(InvalidTransaction, match="EIP-55"):
        tx(to="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD")


def test_input_and_data_may_both_be_given_when_equal() -> None:
    assert tx(data="0xabcd", input="0xabcd").data == b"\xab\xcd"
    assert tx(input="0xabcd").data == b"\xab\xcd"
    with pytest.raises(InvalidTransaction, match="differ"):
        tx(data="0xabcd", input="0xabce")


def test_creation_has_no_to() -> None:
    assert tx(to=None).to is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nonce": "12"}, "nonce must be a 0x-prefixed hex quantity"),
        ({"nonce": "0x"}, "nonce must be"),
        ({"nonce": hex(2**64)}, "nonce must be an integer"),
        ({"value": hex(2**256)}, "value must be an integer"),
        ({"value": -1}, "value must be an integer"),
        ({"to": "0x1234"}, "20-byte address"),
        ({"data": "0xabc"}, "whole bytes"),
        ({"nonce": ...}, "missing transaction field nonce"),
        ({"type": "0x3"}, "type 3 is not supported"),
        ({"maxFeePerGas": "0x1"}, "takes maxFeePerGas, not gasPrice"),
        ({"gasPrice": ..., "maxFeePerGas": "0x1"}, "needs maxFeePerGas and maxPriorityFeePerGas"),
        (
            {"gasPrice": ..., "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x2"},
            "must not exceed",
        ),
        ({"chainId": ...}, "chainId is required"),
        ({"chainId": None}, "chainId is required"),
        ({"to": ""}, "0x-prefixed hex"),
        ({"type": "0x0", "accessList": [{"address": BASE["to"]}]}, "no accessList"),
        ({"accessList": [{"storageKeys": []}]}, "accessList entries"),
    ],
)
def test_bad_fields_are_refused_clearly(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTransaction, match=message):
        tx(**changes)


def test_unprotected_only_when_asked_for() -> None:
    fields = {k: v for k, v in BASE.items() if k != "chainId"}
    assert Transaction.from_dict(fields, unprotected=True).chain_id is None
    with pytest.raises(InvalidTransaction, match="needs chainId"):
        Transaction.from_dict({**fields, "type": "0x1"}, unprotected=True)


def test_private_transaction_rules() -> None:
    private = Transaction.from_dict({**BASE, "chainId": None}, private=True)
    assert private.private and private.chain_id is None
    with pytest.raises(InvalidTransaction, match="without chainId"):
        Transaction.from_dict(BASE, private=True)
    with pytest.raises(InvalidTransaction, match="value 0"):
        Transaction.from_dict({**BASE, "chainId": None, "value": "0x1"}, private=True)
