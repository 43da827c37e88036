"""Filling rules (CONTRACT 4.2), pure: what is respected, what is filled, what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import InvalidParams
from proxy.filling import build, intrinsic_gas, parse_request, uses_fee_market

FROM = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
TO = "0x000000000000000000000000000000000000dEaD"


def fill(fields: dict[str, Any], *, base_fee: int | None, **overrides: Any) -> Any:
    request = parse_request({"from": FROM, **fields})
    facts: dict[str, Any] = dict(chain_id=1337, nonce=5, gas=request.gas or 21_000,
                                 block_gas_limit=30_000_000, base_fee=base_fee,
                                 gas_price=7, tip=3)  # fmt: skip
    facts.update(overrides)
    return build(request, fee_market=uses_fee_market(request, base_fee), **facts)


def test_legacy_on_a_zero_fee_network() -> None:
    for base_fee in (None, 0):
        tx = fill({"to": TO, "value": "0x1"}, base_fee=base_fee)
        assert tx.type == 0 and tx.gas_price == 7 and tx.chain_id == 1337 and tx.nonce == 5


def test_eip1559_with_a_base_fee() -> None:
    tx = fill({"to": TO}, base_fee=100)
    assert tx.type == 2 and tx.max_priority_fee_per_gas == 3 and tx.max_fee_per_gas == 203


def test_caller_fields_are_respected() -> None:
    tx = fill({"to": TO, "gasPrice": "0x9", "gas": "0x6000", "nonce": "0x2"}, base_fee=100,
              nonce=2)  # fmt: skip
    assert tx.type == 0 and tx.gas_price == 9 and tx.gas == 0x6000
    tx = fill({"to": TO, "maxFeePerGas": "0x10"}, base_fee=100)
    assert tx.type == 2 and tx.max_fee_per_gas == 16 and tx.max_priority_fee_per_gas == 3
    tx = fill({"to": TO, "maxFeePerGas": "0x2"}, base_fee=100)
    assert tx.max_priority_fee_per_gas == 2  # the tip never exceeds the given max fee


def test_input_and_data_and_lowercase_addresses() -> None:
    tx = fill({"to": TO.lower(), "input": "0xab", "data": "0xab", "gas": "0x6000"}, base_fee=None)
    assert tx.data == b"\xab"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"gasPrice": "0x1", "maxFeePerGas": "0x1"}, "not both"),
        ({"type": "0x2", "gasPrice": "0x1"}, "takes maxFeePerGas"),
        ({"type": "0x0", "maxFeePerGas": "0x1"}, "takes gasPrice"),
        ({"type": "0x5"}, "not supported"),
        ({"to": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"}, "EIP-55"),
        ({"value": "12"}, "hex quantity"),
    ],
)
def test_refused_requests(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParams, match=match):
        fill({"to": TO, **fields}, base_fee=None)


def test_from_is_required() -> None:
    with pytest.raises(InvalidParams, match='"from" is required'):
        parse_request({"to": TO})


def test_wrong_chain_and_gas_bounds() -> None:
    with pytest.raises(InvalidParams, match="not this network's"):
        fill({"to": TO, "chainId": "0x1"}, base_fee=None)
    with pytest.raises(InvalidParams, match="below the intrinsic cost"):
        fill({"to": TO, "gas": "0x5207"}, base_fee=None)
    with pytest.raises(InvalidParams, match="above the block gas limit"):
        fill({"to": TO, "gas": hex(40_000_000)}, base_fee=None)


def test_intrinsic_gas() -> None:
    assert intrinsic_gas(b"", False, None) == 21_000
    assert intrinsic_gas(b"\x00\x01", False, None) == 21_000 + 4 + 16
    assert intrinsic_gas(b"\x01" * 33, True, None) == 21_000 + 32_000 + 33 * 16 + 2 * 2
    assert intrinsic_gas(b"", False, [{"address": TO, "storageKeys": ["0x" + "00" * 32]}]) == (
        21_000 + 2_400 + 1_900
    )


def test_type_2_on_a_network_without_fee_market_is_detected() -> None:
    request = parse_request({"from": FROM, "to": TO, "type": "0x2"})
    assert uses_fee_market(request, None) is True  # the handler refuses it with -32602


@pytest.mark.parametrize(
    "field",
    ["blobVersionedHashes", "maxFeePerBlobGas", "authorizationList", "blobs", "hash", "v", "r",
     "s", "yParity", "privacyGroupId", "callbackUrl", "madeUp"],
)  # fmt: skip
def test_unknown_fields_are_refused_by_name(field: str) -> None:
    with pytest.raises(InvalidParams, match=f'unsupported transaction field "{field}"'):
        parse_request({"from": FROM, "to": TO, field: "0x01"})


def test_what_real_clients_send_is_understood() -> None:
    # cast send: every field, `input` and `data` both present and equal, lowercase addresses.
    cast = {"from": FROM, "to": TO.lower(), "value": "0x1", "gas": "0x5208",
            "maxFeePerGas": "0x10", "maxPriorityFeePerGas": "0x1", "nonce": "0x3",
            "chainId": "0x539", "type": "0x2", "input": "0xab", "data": "0xab"}  # fmt: skip
    request = parse_request(cast)
    assert request.nonce == 3 and request.gas == 0x5208 and request.tx_type == 2
    # ethers v5 style gasLimit, web3.js's local-signing hints, and nulls as absent.
    request = parse_request({"from": FROM, "to": TO, "gasLimit": "0x5208", "chain": "mainnet",
                             "hardfork": "london", "networkId": 1, "privateFor": None,
                             "accessList": []})  # fmt: skip
    assert request.gas == 0x5208 and "chain" not in request.fields
    assert "privateFor" not in request.fields


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"input": "0xab", "data": "0xac"}, '"data" and "input" are both given and differ'),
        ({"gas": "0x5208", "gasLimit": "0x5209"}, '"gas" and "gasLimit"'),
        ({"accessList": "0x"}, "accessList"),
    ],
)
def test_conflicting_or_malformed_fields_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParams, match=match):
        parse_request({"from": FROM, "to": TO, **fields})
