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

from policy.parse import is_tessera_key
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
FLOOR_TOKEN_GAS = 10  # EIP-7623 (Prague): the least a transaction pays per calldata token
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
# GoQuorum's private-transaction fields (CONTRACT 4.4): such a request is signed as a private
# transaction through the organisation's Tessera, never as a public one (which would publish
# the private payload in clear).
PRIVATE_FIELDS = ("privateFor", "privateFrom", "privacyFlag", "mandatoryFor", "privateTxType")
# GoQuorum's privacyFlag: standard private, party protection, mandatory recipients (with
# mandatoryFor), private state validation.
PRIVACY_FLAGS = (0, 1, 2, 3)
MANDATORY_RECIPIENTS = 2
TESSERA_HASH_BYTES = 64


@dataclass(frozen=True)
class Private:
    """A private transaction's GoQuorum fields, validated (keys are Tessera public keys)."""

    private_for: tuple[str, ...]
    private_from: str | None
    privacy_flag: int
    mandatory_for: tuple[str, ...]

    def send_args(self) -> dict[str, Any]:
        """eth_sendRawPrivateTransaction's second parameter."""
        args: dict[str, Any] = {"privateFor": list(self.private_for),
                                "privacyFlag": self.privacy_flag}  # fmt: skip
        if self.mandatory_for:
            args["mandatoryFor"] = list(self.mandatory_for)
        return args


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
    private: Private | None = None  # GoQuorum private transaction (privateFor given)


def _tessera_keys(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidParams(f'"{name}" must be an array of Tessera public keys (base64)')
    keys: list[str] = []
    for key in value:
        if not isinstance(key, str) or not is_tessera_key(key):
            shown = key[:60] if isinstance(key, str) else type(key).__name__
            raise InvalidParams(f'"{name}": {shown!r} is not a Tessera public key (32 bytes, '
                                "base64)")  # fmt: skip
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _private(given: Mapping[str, Any]) -> Private | None:
    """GoQuorum's private fields, as GoQuorum checks them (None: a public transaction)."""
    named = [name for name in PRIVATE_FIELDS if name in given]
    if not named:
        return None
    if "privateFor" not in given:
        raise InvalidParams(f'"{named[0]}" is for private transactions: give "privateFor" (the '
                            "recipients' Tessera public keys) as well")  # fmt: skip
    private_for = _tessera_keys("privateFor", given["privateFor"])
    private_from = given.get("privateFrom")
    if private_from is not None and (not isinstance(private_from, str)
                                     or not is_tessera_key(private_from)):  # fmt: skip
        raise InvalidParams('"privateFrom" must be a Tessera public key (32 bytes, base64)')
    tx_type = given.get("privateTxType", "restricted")
    if tx_type != "restricted":
        raise InvalidParams('"privateTxType": Tessera supports only "restricted"')
    flag_given = given.get("privacyFlag", 0)
    try:
        flag = (flag_given if isinstance(flag_given, int) and not isinstance(flag_given, bool)
                else parse_optional_quantity("privacyFlag", flag_given))  # fmt: skip
    except InvalidTransaction:
        flag = None
    if flag not in PRIVACY_FLAGS:
        raise InvalidParams('"privacyFlag" must be 0 (standard private), 1 (party protection), '
                            "2 (mandatory recipients) or 3 (private state validation)")  # fmt: skip
    mandatory = _tessera_keys("mandatoryFor", given.get("mandatoryFor", []))
    if flag == MANDATORY_RECIPIENTS and not mandatory:
        raise InvalidParams('privacyFlag 2 (mandatory recipients) needs "mandatoryFor"')
    if mandatory and flag != MANDATORY_RECIPIENTS:
        raise InvalidParams('"mandatoryFor" goes with privacyFlag 2 (mandatory recipients) only')
    outside = [key for key in mandatory if key not in private_for]
    if outside:
        raise InvalidParams(f'"mandatoryFor": {outside[0]} is not among "privateFor"')
    return Private(private_for, private_from, flag, mandatory)


def parse_request(params: Any) -> Request:
    if not isinstance(params, Mapping):
        raise InvalidParams("the first parameter must be a transaction object")
    # A field given as null is absent, as nodes read it.
    given = {k: v for k, v in params.items() if v is not None}
    private = _private(given)
    unknown = sorted(set(given) - TRANSACTION_FIELDS - IGNORED_FIELDS - set(PRIVATE_FIELDS))
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
    if private is not None:
        _check_private(fields, tx_type, wants_1559, data)
    return Request(sender, fields, tx_type, nonce, gas, wants_1559, wants_legacy, to, data,
                   private)  # fmt: skip


def _check_private(fields: Mapping[str, Any], tx_type: int | None, wants_1559: bool,
                   data: bytes) -> None:  # fmt: skip
    """What GoQuorum accepts in a private transaction: legacy, value 0, a payload."""
    if wants_1559 or tx_type not in (None, 0) or fields.get("accessList"):
        raise InvalidParams("a GoQuorum private transaction is legacy (type 0, gasPrice): "
                            "maxFeePerGas, accessList and other types are refused")  # fmt: skip
    if parse_optional_quantity("value", fields.get("value")):
        raise InvalidParams("a GoQuorum private transaction carries no value (value must be 0)")
    if not data:
        raise InvalidParams('a private transaction needs "data": the payload Tessera keeps '
                            "for its recipients")  # fmt: skip


def uses_fee_market(request: Request, base_fee: int | None) -> bool:
    """Whether the filled transaction is EIP-1559 (type 2)."""
    if request.private is not None:
        return False
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


def private_at(tx: Transaction, tessera_hash: bytes) -> Transaction:
    """The private transaction GoQuorum takes for `tx` (from `build`, over the caller's payload):
    its `data` replaced by the payload's Tessera hash, signed without chain id (v 37/38). Gas
    stays as estimated over the payload (the private execution's), and covers at least the
    public transaction's own intrinsic cost (with EIP-7623's calldata floor, which chains past
    Prague charge)."""
    if len(tessera_hash) != TESSERA_HASH_BYTES:
        raise InvalidParams("a Tessera hash is 64 bytes")
    zeros = tessera_hash.count(0)
    floor = TX_GAS + FLOOR_TOKEN_GAS * (zeros + 4 * (len(tessera_hash) - zeros))
    gas = max(tx.gas, intrinsic_gas(tessera_hash, tx.to is None, None), floor)
    try:
        return dataclasses.replace(tx, data=tessera_hash, chain_id=None, private=True, gas=gas)
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
