"""EIP-191 (`eth_sign`, `personal_sign`) and EIP-712 v4 (`eth_signTypedData_v4`) around the seam.

Hashing reuses eth-account's encoders. The EIP-712 domain is hashed with the `EIP712Domain` type
the caller gives, as MetaMask does, so domains with extra fields sign the same as in a wallet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from eth_abi.exceptions import EncodingError
from eth_account._utils.encode_typed_data.encoding_and_hashing import (
    get_primary_type,
    hash_struct,
)
from eth_account.messages import defunct_hash_message

from signer.base import AsyncSigner, SignedMessage, Signer
from signer.ecdsa import keccak256
from signer.errors import InvalidMessage

# The canonical order of the standard domain fields (EIP-712), used when `EIP712Domain` is absent.
_DOMAIN_FIELDS = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
)


def personal_message_digest(message: bytes) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message)."""
    if not isinstance(message, bytes | bytearray):
        raise InvalidMessage("a message to sign must be bytes")
    return bytes(defunct_hash_message(primitive=bytes(message)))


def parse_typed_data(typed_data: str | Mapping[str, Any]) -> dict[str, Any]:
    """Typed data given as a JSON string (viem, ethers) or an object; shape-checked."""
    if isinstance(typed_data, str):
        try:
            typed_data = json.loads(typed_data)
        except ValueError:
            raise InvalidMessage("typed data is not valid JSON") from None
    if not isinstance(typed_data, Mapping):
        raise InvalidMessage(
            "typed data must be an object with types, primaryType, domain, message"
        )
    data = dict(typed_data)
    types, primary, domain = data.get("types"), data.get("primaryType"), data.get("domain")
    if not isinstance(types, Mapping) or not all(
        isinstance(fields, list)
        and all(isinstance(f, Mapping) and {"name", "type"} <= f.keys() for f in fields)
        for fields in types.values()
    ):
        raise InvalidMessage("typed data `types` must map type names to [{name, type}] lists")
    if primary is None or primary == "":
        # As eth-account does: the one type no other type refers to.
        try:
            primary = get_primary_type({k: v for k, v in types.items() if k != "EIP712Domain"})
        except ValueError:
            raise InvalidMessage(
                "typed data has no `primaryType` and none can be inferred"
            ) from None
        data["primaryType"] = primary
    if not isinstance(primary, str) or (primary not in types and primary != "EIP712Domain"):
        raise InvalidMessage("typed data `primaryType` must name one of its `types`")
    if not isinstance(domain, Mapping):
        raise InvalidMessage("typed data `domain` must be an object")
    if primary != "EIP712Domain" and not isinstance(data.get("message"), Mapping):
        raise InvalidMessage("typed data `message` must be an object")
    return data


def typed_data_digest(typed_data: str | Mapping[str, Any]) -> bytes:
    """keccak256(0x1901 || hashStruct(domain) || hashStruct(message)) (EIP-712, MetaMask v4)."""
    data = parse_typed_data(typed_data)
    types = {name: [dict(f) for f in fields] for name, fields in data["types"].items()}
    domain = dict(data["domain"])
    if "EIP712Domain" not in types:
        types["EIP712Domain"] = [
            {"name": name, "type": kind} for name, kind in _DOMAIN_FIELDS if name in domain
        ]
    try:
        parts = [b"\x19\x01", hash_struct("EIP712Domain", types, domain)]
        if data["primaryType"] != "EIP712Domain":
            parts.append(hash_struct(data["primaryType"], types, dict(data["message"])))
    except (ValueError, TypeError, KeyError, OverflowError, EncodingError) as exc:
        raise InvalidMessage(f"typed data cannot be encoded: {exc}") from None
    return keccak256(b"".join(parts))


def sign_personal_message(message: bytes, signer: Signer) -> SignedMessage:
    digest = personal_message_digest(message)
    return SignedMessage(digest, signer.sign_digest(digest))


async def sign_personal_message_async(message: bytes, signer: AsyncSigner) -> SignedMessage:
    digest = personal_message_digest(message)
    return SignedMessage(digest, await signer.sign_digest_async(digest))


def sign_typed_data(typed_data: str | Mapping[str, Any], signer: Signer) -> SignedMessage:
    digest = typed_data_digest(typed_data)
    return SignedMessage(digest, signer.sign_digest(digest))


async def sign_typed_data_async(
    typed_data: str | Mapping[str, Any], signer: AsyncSigner
) -> SignedMessage:
    digest = typed_data_digest(typed_data)
    return SignedMessage(digest, await signer.sign_digest_async(digest))
