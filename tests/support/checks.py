"""The strict signature checker every test applies to every signature it sees.

anvil accepts high-s signatures and GoQuorum does not (FIELD-NOTES), so a test cannot rely on a
node to catch them: r and s in range, s <= n/2 (EIP-2), the signature recovers the expected
address, and for transactions the v / yParity and chain id are the ones the scheme demands.
Written from the raw bytes alone, independently of the encoder under test.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import rlp
from coincurve import PublicKey
from eth_hash.auto import keccak
from rlp.sedes import big_endian_int

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SignatureProblem(AssertionError):
    """A signature a node following EIP-2 / EIP-155 would refuse, or one from the wrong key."""


def recover_address(digest: bytes, r: int, s: int, y_parity: int) -> bytes:
    """Address recovered from (r, s, y) over a digest, after checking range and low-s."""
    if not (0 < r < N):
        raise SignatureProblem(f"r out of range: {r:#x}")
    if not (0 < s < N):
        raise SignatureProblem(f"s out of range: {s:#x}")
    if s > N // 2:
        raise SignatureProblem(f"high s (EIP-2): {s:#x}")
    if y_parity not in (0, 1):
        raise SignatureProblem(f"recovery id must be 0 or 1, got {y_parity}")
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([y_parity])
    try:
        point = PublicKey.from_signature_and_message(sig, digest, hasher=None)
    except Exception as exc:
        raise SignatureProblem(f"public key recovery failed: {exc}") from None
    return bytes(keccak(point.format(compressed=False)[1:])[12:])


def check_digest_signature(digest: bytes, r: int, s: int, v: int, address: bytes) -> None:
    """A (r, s, v) over `digest`, v being 0/1 or 27/28, must come from `address` and be low-s."""
    y = v - 27 if v in (27, 28) else v
    got = recover_address(digest, r, s, y)
    if got != address:
        raise SignatureProblem(f"signature recovers {got.hex()}, expected {address.hex()}")


def check_message_signature(digest: bytes, signature: bytes, address: bytes) -> None:
    """65-byte r || s || v with v 27/28, as eth_sign / personal_sign / signTypedData return."""
    if len(signature) != 65:
        raise SignatureProblem(f"message signature must be 65 bytes, got {len(signature)}")
    if signature[64] not in (27, 28):
        raise SignatureProblem(f"message signature v must be 27 or 28, got {signature[64]}")
    check_digest_signature(
        digest,
        int.from_bytes(signature[:32], "big"),
        int.from_bytes(signature[32:64], "big"),
        signature[64],
        address,
    )


class CheckedTransaction(NamedTuple):
    sender: bytes
    hash: bytes
    type: int
    chain_id: int | None
    fields: list[Any]


def _int(item: Any) -> int:
    if not isinstance(item, bytes):
        raise SignatureProblem("expected an RLP string, got a list")
    try:
        return int(big_endian_int.deserialize(item))  # refuses leading zeros
    except rlp.exceptions.DeserializationError:
        raise SignatureProblem("integer with leading zeros (not canonical)") from None


def check_raw_transaction(
    raw: bytes, *, chain_id: int | None, private: bool = False
) -> CheckedTransaction:
    """Decode a raw transaction, check its signature strictly and return its sender and hash.

    `chain_id` is the network's: a protected transaction must carry it; None allows only
    unprotected (pre-EIP-155) legacy transactions. `private`: GoQuorum rule, v must be 37/38.
    """
    try:
        if raw and raw[0] < 0x80:
            tx_type, payload = raw[0], raw[1:]
            if tx_type not in (1, 2):
                raise SignatureProblem(f"unknown transaction type {tx_type}")
        else:
            tx_type, payload = 0, raw
        items = rlp.decode(payload, strict=True)
    except rlp.exceptions.DecodingError as exc:
        raise SignatureProblem(f"not canonical RLP: {exc}") from None
    if not isinstance(items, list):
        raise SignatureProblem("a transaction is an RLP list")
    expected_len = {0: 9, 1: 11, 2: 12}[tx_type]
    if len(items) != expected_len:
        raise SignatureProblem(f"type {tx_type} has {expected_len} fields, got {len(items)}")
    body, (v_raw, r_raw, s_raw) = items[:-3], items[-3:]
    v, r, s = _int(v_raw), _int(r_raw), _int(s_raw)
    tx_chain: int | None
    if tx_type == 0:
        if private:
            if v not in (37, 38):
                raise SignatureProblem(f"a GoQuorum private transaction has v 37/38, got {v}")
            tx_chain, y, unsigned = None, v - 37, rlp.encode(body)
        elif v in (27, 28):
            if chain_id is not None:
                raise SignatureProblem("unprotected (pre-EIP-155) transaction on a chain with id")
            tx_chain, y, unsigned = None, v - 27, rlp.encode(body)
        elif v >= 35:
            tx_chain, y = (v - 35) // 2, (v - 35) % 2
            unsigned = rlp.encode([*body, tx_chain, 0, 0])
        else:
            raise SignatureProblem(f"invalid legacy v {v}")
        signing = unsigned
    else:
        tx_chain, y = _int(body[0]), v
        signing = bytes([tx_type]) + rlp.encode(body)
    if tx_chain != chain_id and not private:
        raise SignatureProblem(f"chain id {tx_chain} is not the network's {chain_id}")
    sender = recover_address(bytes(keccak(signing)), r, s, y)
    return CheckedTransaction(sender, bytes(keccak(raw)), tx_type, tx_chain, body)


def assert_signed_by(
    raw: bytes, sender: bytes, *, chain_id: int | None, private: bool = False
) -> CheckedTransaction:
    checked = check_raw_transaction(raw, chain_id=chain_id, private=private)
    if checked.sender != sender:
        raise SignatureProblem(
            f"transaction sent by {checked.sender.hex()}, expected {sender.hex()}"
        )
    return checked
