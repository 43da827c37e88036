"""Ethereum / GoQuorum transaction serialisation around the `Signer` seam.

Four schemes: legacy pre-EIP-155 (and its GoQuorum private form, v 37/38), legacy EIP-155,
EIP-2930 (type 1) and EIP-1559 (type 2). Field layouts follow the EIPs; the RLP is the
`rlp` package's codec (`encode_raw`, Rust-backed through rusty-rlp), fed with integers already
turned into minimal big-endian bytes: `rlp.encode`'s type inference alone cost more than the
rest of the path (bench/sign.py). The unsigned fields are encoded once per signature, for both
the signing payload and the raw transaction. eth-account is the independent cross-check.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils.address import is_checksum_address
from rlp.codec import encode_raw

from signer.base import AsyncSigner, Signature, SignedTransaction, Signer
from signer.ecdsa import keccak256
from signer.errors import InvalidTransaction

UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1

AccessList = tuple[tuple[bytes, tuple[bytes, ...]], ...]


@dataclass(frozen=True, slots=True)
class Transaction:
    """An unsigned transaction with every field filled.

    `chain_id` is None only for a legacy pre-EIP-155 transaction; `private` marks a GoQuorum
    private transaction (legacy, pre-EIP-155 hash, value 0, `data` = Tessera hash, v 37/38).
    """

    type: int
    nonce: int
    gas: int
    to: bytes | None
    value: int
    data: bytes
    chain_id: int | None
    gas_price: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    access_list: AccessList = ()
    private: bool = False

    def __post_init__(self) -> None:
        _check_uint("nonce", self.nonce, UINT64_MAX)
        # Gas and chain id are uint256 in the encoding; chains set tighter limits, which the
        # proxy checks (block gas limit, the nodes' chain id) before anything is signed.
        _check_uint("gas", self.gas, UINT256_MAX)
        _check_uint("value", self.value, UINT256_MAX)
        if self.to is not None and (not isinstance(self.to, bytes) or len(self.to) != 20):
            raise InvalidTransaction("to must be a 20-byte address or null for a creation")
        if not isinstance(self.data, bytes):
            raise InvalidTransaction("data must be bytes")
        if self.chain_id is not None:
            _check_uint("chainId", self.chain_id, UINT256_MAX)
        for address, keys in self.access_list:
            if len(address) != 20 or any(len(key) != 32 for key in keys):
                raise InvalidTransaction(
                    "accessList entries need a 20-byte address and 32-byte storage keys"
                )
        if self.type in (0, 1):
            if self.gas_price is None:
                raise InvalidTransaction(f"a type {self.type} transaction needs gasPrice")
            _check_uint("gasPrice", self.gas_price, UINT256_MAX)
            if self.max_fee_per_gas is not None or self.max_priority_fee_per_gas is not None:
                raise InvalidTransaction(
                    f"a type {self.type} transaction takes gasPrice, not maxFeePerGas or "
                    "maxPriorityFeePerGas"
                )
        elif self.type == 2:
            if self.gas_price is not None:
                raise InvalidTransaction("a type 2 transaction takes maxFeePerGas, not gasPrice")
            if self.max_fee_per_gas is None or self.max_priority_fee_per_gas is None:
                raise InvalidTransaction(
                    "a type 2 transaction needs maxFeePerGas and maxPriorityFeePerGas"
                )
            _check_uint("maxFeePerGas", self.max_fee_per_gas, UINT256_MAX)
            _check_uint("maxPriorityFeePerGas", self.max_priority_fee_per_gas, UINT256_MAX)
            if self.max_priority_fee_per_gas > self.max_fee_per_gas:
                raise InvalidTransaction("maxPriorityFeePerGas must not exceed maxFeePerGas")
        else:
            raise InvalidTransaction(f"transaction type {self.type} is not supported (0, 1, 2)")
        if self.type != 0 and self.chain_id is None:
            raise InvalidTransaction(f"a type {self.type} transaction needs chainId")
        if self.type == 0 and self.access_list:
            raise InvalidTransaction("a legacy transaction has no accessList")
        if self.private:
            if self.type != 0 or self.chain_id is not None:
                raise InvalidTransaction(
                    "a GoQuorum private transaction is legacy and signed without chainId"
                )
            if self.value != 0:
                raise InvalidTransaction("a GoQuorum private transaction carries value 0")

    @classmethod
    def from_dict(
        cls, fields: Mapping[str, Any], *, private: bool = False, unprotected: bool = False
    ) -> Transaction:
        """Build from JSON-RPC style fields (hex quantities or ints, `0x` data, any-case addresses).

        Every field must be present except `type` (inferred from the fee fields), `accessList`
        and `data`/`input`; `to` absent or null means a contract creation. `chainId` may be
        absent only when asked for explicitly: `unprotected` (legacy pre-EIP-155, replayable on
        any chain) or `private` (GoQuorum private transactions are signed without it).
        """
        if fields.get("chainId") is None and not (private or unprotected):
            raise InvalidTransaction(
                "chainId is required: a transaction without it can be replayed on any chain"
            )
        try:
            fee_1559 = "maxFeePerGas" in fields or "maxPriorityFeePerGas" in fields
            tx_type = (
                parse_quantity("type", fields["type"])
                if fields.get("type") is not None
                else (2 if fee_1559 else (1 if fields.get("accessList") else 0))
            )
            gas = fields["gas"] if "gas" in fields else fields["gasLimit"]
            return cls(
                type=tx_type,
                nonce=parse_quantity("nonce", fields["nonce"]),
                gas=parse_quantity("gas", gas),
                to=parse_address("to", fields.get("to")),
                value=parse_quantity("value", fields.get("value", 0)),
                data=_data(fields),
                chain_id=(
                    parse_quantity("chainId", fields["chainId"])
                    if fields.get("chainId") is not None
                    else None
                ),
                gas_price=parse_optional_quantity("gasPrice", fields.get("gasPrice")),
                max_fee_per_gas=parse_optional_quantity("maxFeePerGas", fields.get("maxFeePerGas")),
                max_priority_fee_per_gas=parse_optional_quantity(
                    "maxPriorityFeePerGas", fields.get("maxPriorityFeePerGas")
                ),
                access_list=_access_list(fields.get("accessList") or ()),
                private=private,
            )
        except KeyError as missing:
            raise InvalidTransaction(f"missing transaction field {missing.args[0]}") from None

    def _fields(self) -> list[Any]:
        """The unsigned fields as RLP items (bytes or lists), in the scheme's order."""
        to = self.to or b""
        if self.type == 0:
            return _items(self.nonce, self.gas_price, self.gas, to, self.value, self.data)
        access = [[address, list(keys)] for address, keys in self.access_list]
        if self.type == 1:
            return _items(
                self.chain_id, self.nonce, self.gas_price, self.gas, to, self.value, self.data,
                access,
            )  # fmt: skip
        return _items(
            self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas,
            self.gas, to, self.value, self.data, access,
        )  # fmt: skip

    def _body(self) -> bytes:
        """The RLP items of the unsigned fields, concatenated (the list without its header):
        shared by the signing payload and the raw transaction, so encoded once per signature."""
        encoded = encode_raw(self._fields())
        return bytes(encoded[1:] if encoded[0] < 0xF8 else encoded[encoded[0] - 0xF6 :])


def _items(*values: Any) -> list[Any]:
    """Integers as minimal big-endian bytes (RLP's scalar form); bytes and lists as they are."""
    return [
        value.to_bytes((value.bit_length() + 7) // 8, "big") if isinstance(value, int) else value
        for value in values
    ]


# The list around a body and the three signature integers are written out here (the Yellow
# Paper's appendix B); the tests check every scheme byte for byte against known-answer vectors
# and eth-account.


def _rlp_list(body: bytes) -> bytes:
    length = len(body)
    if length <= 55:
        return bytes((0xC0 + length,)) + body
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0xF7 + len(size),)) + size + body


def _rlp_int(value: int) -> bytes:
    """A scalar of at most 32 bytes: one byte below 0x80, else the short string form."""
    if value < 0x80:
        return bytes((value,)) if value else b"\x80"
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes((0x80 + len(raw),)) + raw


def _check_uint(name: str, value: object, maximum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise InvalidTransaction(f"{name} must be an integer from 0 to {maximum:#x}")


def parse_quantity(name: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) > 2:
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise InvalidTransaction(f"{name} must be a 0x-prefixed hex quantity")


def parse_optional_quantity(name: str, value: object) -> int | None:
    return None if value is None else parse_quantity(name, value)


def parse_hex(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) % 2 == 0:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise InvalidTransaction(f"{name} must be 0x-prefixed hex of whole bytes")


# EIP-55 checks cost a Keccak-256 each, and callers send the same few addresses again and again.
_checksum_valid = functools.lru_cache(maxsize=4096)(is_checksum_address)


def parse_address(name: str, value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        raw = value
    else:
        raw = parse_hex(name, value)
        text = str(value)[2:]
        if text != text.lower() and text != text.upper() and not _checksum_valid(str(value)):
            raise InvalidTransaction(f"{name} is a mixed-case address with a wrong EIP-55 checksum")
    if len(raw) != 20:
        raise InvalidTransaction(f"{name} must be a 20-byte address")
    # The 20 bytes are the canonical address already: eth_utils' to_canonical_address would
    # turn them into hex and back (~3 us, three times per eth_sendTransaction).
    return bytes(raw)


def _data(fields: Mapping[str, Any]) -> bytes:
    data = fields.get("data")
    given_input = fields.get("input")
    if data is not None and given_input is not None:
        if parse_hex("data", data) != parse_hex("input", given_input):
            raise InvalidTransaction("data and input are both given and differ")
    chosen = given_input if given_input is not None else data
    return b"" if chosen is None else parse_hex("data", chosen)


def _access_list(entries: Iterable[Any]) -> AccessList:
    result = []
    for entry in entries:
        if not isinstance(entry, Mapping) or "address" not in entry:
            raise InvalidTransaction("accessList entries are {address, storageKeys}")
        address = parse_address("accessList address", entry["address"])
        if address is None:
            raise InvalidTransaction("accessList entries need an address")
        keys = tuple(
            parse_hex("accessList storage key", key) for key in entry.get("storageKeys") or ()
        )
        result.append((address, keys))
    return tuple(result)


def _enveloped(tx: Transaction, body: bytes) -> bytes:
    """The list around `body`, behind the type byte for a typed (EIP-2718) transaction."""
    return _rlp_list(body) if tx.type == 0 else bytes((tx.type,)) + _rlp_list(body)


def _signing_payload(tx: Transaction, body: bytes) -> bytes:
    if tx.type == 0 and tx.chain_id is not None:  # EIP-155: chainId, 0, 0 appended
        return _enveloped(tx, body + _rlp_int(tx.chain_id) + b"\x80\x80")
    return _enveloped(tx, body)


def unsigned_payload(tx: Transaction) -> bytes:
    """The exact bytes whose keccak256 is signed."""
    return _signing_payload(tx, tx._body())


def signing_digest(tx: Transaction) -> bytes:
    return keccak256(unsigned_payload(tx))


def v_value(tx: Transaction, signature: Signature) -> int:
    """The `v` written in the raw transaction for this scheme."""
    if tx.type != 0:
        return signature.v
    if tx.private:
        return 37 + signature.v
    if tx.chain_id is None:
        return 27 + signature.v
    return tx.chain_id * 2 + 35 + signature.v


def encode_signed(tx: Transaction, signature: Signature) -> bytes:
    """The raw signed transaction for `eth_sendRawTransaction` / `eth_sendRawPrivateTransaction`."""
    return _encode_signed(tx, tx._body(), signature)


def _encode_signed(tx: Transaction, body: bytes, signature: Signature) -> bytes:
    v = _rlp_int(v_value(tx, signature))
    return _enveloped(tx, body + v + _rlp_int(signature.r) + _rlp_int(signature.s))


def _signed(tx: Transaction, body: bytes, signature: Signature, sender: bytes) -> SignedTransaction:
    raw = _encode_signed(tx, body, signature)
    return SignedTransaction(raw=raw, hash=keccak256(raw), sender=sender, signature=signature)


def sign_transaction(tx: Transaction, signer: Signer) -> SignedTransaction:
    body = tx._body()
    digest = keccak256(_signing_payload(tx, body))
    return _signed(tx, body, signer.sign_digest(digest), signer.address)


async def sign_transaction_async(tx: Transaction, signer: AsyncSigner) -> SignedTransaction:
    body = tx._body()
    digest = keccak256(_signing_payload(tx, body))
    return _signed(tx, body, await signer.sign_digest_async(digest), signer.address)
