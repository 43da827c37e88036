"""Filling an `eth_sendTransaction` / `eth_signTransaction` request into a full transaction.

Pure rules over the caller's fields and the facts read from the nodes (CONTRACT 4.2): fields the
caller gives are respected and validated; chain id from the nodes; fees EIP-1559 when the latest
block has a non-zero base fee (maxFeePerGas = 2 x baseFee + tip, as geth does), else legacy with
the node's gas price (a zero-fee network such as GoQuorum takes legacy transactions only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.errors import InvalidParams
from signer.base import SignedTransaction, checksum
from signer.errors import InvalidTransaction
from signer.transactions import (
    Transaction,
    parse_address,
    parse_hex,
    parse_optional_quantity,
    v_value,
)

TX_GAS = 21_000
TX_CREATE_GAS = 32_000
ZERO_BYTE_GAS, NONZERO_BYTE_GAS = 4, 16
ACCESS_ADDRESS_GAS, ACCESS_KEY_GAS = 2_400, 1_900
INITCODE_WORD_GAS = 2
FEE_1559 = ("maxFeePerGas", "maxPriorityFeePerGas")
# Every field of an `eth_sendTransaction` / `eth_signTransaction` object that the proxy
# understands; any other field is refused, so that nothing that changes the transaction's
# meaning is dropped silently.
TRANSACTION_FIELDS = frozenset({
    "from", "to", "value", "gas", "gasLimit", "gasPrice", "maxFeePerGas", "maxPriorityFeePerGas",
    "nonce", "data", "input", "chainId", "type", "accessList",
})  # fmt: skip
# Accepted and ignored on purpose (README): web3.js / ethereumjs options for signing locally
# (which chain rules to apply); no node reads them and they change nothing in the transaction.
IGNORED_FIELDS = frozenset({"chain", "hardfork", "common", "networkId"})
# GoQuorum's private-transaction fields: signing such a request as a public transaction would
# publish the private payload in clear.
PRIVATE_FIELDS = ("privateFor", "privateFrom", "privacyFlag", "mandatoryFor", "privateTxType")


@dataclass(frozen=True)
class Request:
    """The caller's fields, validated; None where the proxy must fill."""

    sender: bytes
    fields: dict[str, Any]  # normalised JSON-RPC fields, without `from`
    tx_type: int | None
    nonce: int | None
    gas: int | None
    wants_1559: bool
    wants_legacy: bool
    to: bytes | None = None  # `to`, parsed (None: a contract creation)
    data: bytes = b""  # `data` (or `input`), parsed


def parse_request(params: Any) -> Request:
    if not isinstance(params, Mapping):
        raise InvalidParams("the first parameter must be a transaction object")
    # A field given as null is absent, as nodes read it.
    given = {k: v for k, v in params.items() if v is not None}
    for name in PRIVATE_FIELDS:
        if name in given:
            raise InvalidParams(
                f'"{name}": private transactions need QSIGNER_TESSERA_URL (a Tessera for the '
                "private payload); they are refused, never sent as public transactions"
            )
    unknown = sorted(set(given) - TRANSACTION_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise InvalidParams(f'unsupported transaction field "{unknown[0]}": refused rather than '
                            "signed without it")  # fmt: skip
    try:
        sender = parse_address("from", given.get("from"))
        if sender is None:
            raise InvalidParams('"from" is required')
        fields = {k: v for k, v in given.items() if k in TRANSACTION_FIELDS and k != "from"}
        to = parse_address("to", fields["to"]) if "to" in fields else None
        tx_type = parse_optional_quantity("type", fields.get("type"))
        nonce = parse_optional_quantity("nonce", fields.get("nonce"))
        gas = parse_optional_quantity("gas", fields.get("gas"))
        gas_limit = parse_optional_quantity("gasLimit", fields.get("gasLimit"))
        if gas is not None and gas_limit is not None and gas != gas_limit:
            raise InvalidParams('"gas" and "gasLimit" are both given and differ')
        gas = gas if gas is not None else gas_limit
        for key in ("value", "gasPrice", *FEE_1559, "chainId"):
            parse_optional_quantity(key, fields.get(key))
        payloads = {key: parse_hex(key, fields[key]) for key in ("data", "input") if key in fields}
        if len(set(payloads.values())) > 1:
            raise InvalidParams('"data" and "input" are both given and differ')
        if not isinstance(fields.get("accessList", []), list):
            raise InvalidParams('"accessList" must be an array of {address, storageKeys}')
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    wants_1559 = any(k in fields for k in FEE_1559)
    wants_legacy = "gasPrice" in fields
    if wants_1559 and wants_legacy:
        raise InvalidParams("give either gasPrice or maxFeePerGas/maxPriorityFeePerGas, not both")
    if tx_type is not None and tx_type not in (0, 1, 2):
        raise InvalidParams(f"transaction type {tx_type} is not supported (0, 1, 2)")
    if tx_type in (0, 1) and wants_1559:
        raise InvalidParams(f"a type {tx_type} transaction takes gasPrice, not maxFeePerGas")
    if tx_type == 2 and wants_legacy:
        raise InvalidParams("a type 2 transaction takes maxFeePerGas, not gasPrice")
    data = payloads["data"] if "data" in payloads else payloads.get("input", b"")
    return Request(sender, fields, tx_type, nonce, gas, wants_1559, wants_legacy, to, data)


def uses_fee_market(request: Request, base_fee: int | None) -> bool:
    """Whether the filled transaction is EIP-1559 (type 2)."""
    if request.tx_type is not None:
        return request.tx_type == 2
    if request.wants_1559:
        return True
    if request.wants_legacy or request.fields.get("accessList"):
        return False
    return bool(base_fee)


def intrinsic_gas(data: bytes, creation: bool, access_list: Any) -> int:
    zeros = data.count(0)
    gas = TX_GAS + zeros * ZERO_BYTE_GAS + (len(data) - zeros) * NONZERO_BYTE_GAS
    if creation:
        gas += TX_CREATE_GAS + INITCODE_WORD_GAS * ((len(data) + 31) // 32)
    for entry in access_list or ():
        gas += ACCESS_ADDRESS_GAS + ACCESS_KEY_GAS * len(entry.get("storageKeys") or ())
    return gas


def build(
    request: Request,
    *,
    chain_id: int,
    nonce: int,
    gas: int,
    block_gas_limit: int,
    fee_market: bool,
    base_fee: int | None,
    gas_price: int | None,
    tip: int | None,
) -> Transaction:
    """The full transaction; what no node could ever accept is refused with -32602."""
    fields = dict(request.fields)
    given_chain = parse_optional_quantity("chainId", fields.get("chainId"))
    if given_chain is not None and given_chain != chain_id:
        raise InvalidParams(f"chainId {given_chain} is not this network's ({chain_id})")
    fields.update(chainId=chain_id, nonce=nonce, gas=gas)
    fields.pop("gasLimit", None)
    if fee_market:
        fields["type"] = 2
        max_fee = parse_optional_quantity("maxFeePerGas", fields.get("maxFeePerGas"))
        priority = parse_optional_quantity(
            "maxPriorityFeePerGas", fields.get("maxPriorityFeePerGas")
        )
        if priority is None:
            priority = (tip or 0) if max_fee is None else min(tip or 0, max_fee)
            fields["maxPriorityFeePerGas"] = priority
        if max_fee is None:
            fields["maxFeePerGas"] = 2 * (base_fee or 0) + priority
    else:
        fields.setdefault("type", 1 if fields.get("accessList") else 0)
        fields.setdefault("gasPrice", gas_price or 0)
    try:
        tx = Transaction.from_dict(fields)
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    minimum = intrinsic_gas(tx.data, tx.to is None, fields.get("accessList"))
    if tx.gas < minimum:
        raise InvalidParams(
            f"gas {tx.gas} is below the intrinsic cost of this transaction ({minimum})"
        )
    if tx.gas > block_gas_limit:
        raise InvalidParams(f"gas {tx.gas} is above the block gas limit ({block_gas_limit})")
    return tx


def at_nonce(tx: Transaction, nonce: int) -> Transaction:
    """`tx` (from `build`) at another nonce: what `build` gives with that nonce, as nothing else
    in it depends on the nonce."""
    try:
        return dataclasses.replace(tx, nonce=nonce)
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None


def to_rpc(tx: Transaction, signed: SignedTransaction) -> dict[str, Any]:
    """The transaction as geth's `eth_signTransaction` shows it under `tx`."""
    v = v_value(tx, signed.signature)
    out: dict[str, Any] = {
        "type": hex(tx.type),
        "chainId": hex(tx.chain_id) if tx.chain_id is not None else None,
        "nonce": hex(tx.nonce),
        "gas": hex(tx.gas),
        "to": checksum(tx.to) if tx.to else None,
        "value": hex(tx.value),
        "input": "0x" + tx.data.hex(),
        "v": hex(v),
        "r": hex(signed.signature.r),
        "s": hex(signed.signature.s),
        "hash": "0x" + signed.hash.hex(),
        "from": checksum(signed.sender),
    }
    if tx.type == 2:
        out["maxFeePerGas"] = hex(tx.max_fee_per_gas or 0)
        out["maxPriorityFeePerGas"] = hex(tx.max_priority_fee_per_gas or 0)
    else:
        out["gasPrice"] = hex(tx.gas_price or 0)
    if tx.type != 0:
        out["accessList"] = [
            {"address": checksum(a), "storageKeys": ["0x" + k.hex() for k in keys]}
            for a, keys in tx.access_list
        ]
        out["yParity"] = hex(v)
    return out
