"""GoQuorum private transactions in the filling rules (CONTRACT 4.4), pure: the private fields as
GoQuorum checks them, and the transaction the proxy signs, checked against the GoQuorum vectors
(pre-EIP-155 signing hash, v 37/38, data = the Tessera hash)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from proxy.errors import InvalidParams
from proxy.filling import Private, build, parse_request, private_at, uses_fee_market
from signer.software import SoftwareSigner
from signer.transactions import sign_transaction
from tests.support.checks import assert_signed_by
from tests.support.vectors import case_id, hexbytes, load

FROM = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
KEYS = [base64.b64encode(os.urandom(32)).decode() for _ in range(3)]
CASES = [c for c in load("quorum_private_tx.json") if c["privateKey"]]


def parse(**fields: Any) -> Any:
    return parse_request({"from": FROM, "data": "0x6080", "privateFor": [KEYS[0]], **fields})


def test_private_fields_are_parsed_as_goquorum_reads_them() -> None:
    request = parse(privateFor=KEYS[:2], privateFrom=KEYS[2], privacyFlag="0x2",
                    mandatoryFor=[KEYS[1]], privateTxType="restricted")  # fmt: skip
    assert request.private == Private(tuple(KEYS[:2]), KEYS[2], 2, (KEYS[1],))
    assert request.private.send_args() == {"privateFor": KEYS[:2], "privacyFlag": 2,
                                           "mandatoryFor": [KEYS[1]]}  # fmt: skip
    assert parse().private == Private((KEYS[0],), None, 0, ())
    assert parse(privateFor=[]).private == Private((), None, 0, ())  # to the sender alone
    assert not uses_fee_market(parse(), base_fee=100)  # legacy, even on a fee market
    assert parse_request({"from": FROM, "to": FROM}).private is None


@pytest.mark.parametrize(("fields", "says"), [
    ({"privateFor": KEYS[0]}, "array"),
    ({"privateFor": ["AAAA"]}, "not a Tessera public key"),
    ({"privateFrom": 7}, "privateFrom"),
    ({"privacyFlag": 4}, "privacyFlag"),
    ({"privacyFlag": True}, "privacyFlag"),
    ({"privacyFlag": 2}, "needs \"mandatoryFor\""),
    ({"mandatoryFor": [KEYS[0]]}, "privacyFlag 2"),
    ({"privacyFlag": 2, "mandatoryFor": [KEYS[1]]}, "not among"),
    ({"privateTxType": "unrestricted"}, "restricted"),
    ({"value": "0x1"}, "no value"),
    ({"maxFeePerGas": "0x1"}, "legacy"),
    ({"type": "0x2"}, "legacy"),
    ({"accessList": [{"address": FROM, "storageKeys": []}]}, "legacy"),
    ({"data": "0x"}, "needs \"data\""),
])  # fmt: skip
def test_what_goquorum_would_refuse_is_refused(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidParams, match=says):
        parse(**fields)


def test_private_fields_without_private_for_are_refused() -> None:
    with pytest.raises(InvalidParams, match='give "privateFor"'):
        parse_request({"from": FROM, "data": "0x60", "privateFrom": KEYS[0]})


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_signed_private_transaction_matches_the_goquorum_vector(case: dict[str, Any]) -> None:
    """The request's path in the proxy (parse, build over the payload, then the Tessera hash in
    place of the payload) gives the vector's transaction, and its bytes once signed."""
    vector = case["tx"]
    fields = {"from": case["sender"], "to": vector["to"], "data": "0x60806040",
              "gas": vector["gas"], "gasPrice": vector["gasPrice"],
              "privateFor": [KEYS[0]]}  # fmt: skip
    request = parse_request(fields)
    public = build(request, chain_id=1337, nonce=int(vector["nonce"], 16),
                   gas=int(vector["gas"], 16), block_gas_limit=30_000_000, fee_market=False,
                   base_fee=None, gas_price=None, tip=None)  # fmt: skip
    tx = private_at(public, hexbytes(vector["data"]))
    assert tx.chain_id is None and tx.private and tx.data == hexbytes(vector["data"])
    signed = sign_transaction(tx, SoftwareSigner(hexbytes(case["privateKey"])))
    assert signed.raw == hexbytes(case["signedRaw"])
    assert signed.hash == hexbytes(case["txHash"])
    assert_signed_by(signed.raw, hexbytes(case["sender"]), chain_id=None, private=True)


def test_gas_covers_the_public_transactions_own_cost() -> None:
    """Estimated over a short payload, the gas still pays for the 64-byte hash in its place
    (with EIP-7623's calldata floor)."""
    request = parse_request({"from": FROM, "to": FROM, "data": "0x01", "privateFor": []})
    public = build(request, chain_id=1337, nonce=0, gas=21_016, block_gas_limit=30_000_000,
                   fee_market=False, base_fee=None, gas_price=0, tip=None)  # fmt: skip
    assert private_at(public, b"\x11" * 64).gas == 21_000 + 10 * 4 * 64
    with pytest.raises(InvalidParams, match="64 bytes"):
        private_at(public, b"\x11" * 32)
