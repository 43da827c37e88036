"""A secp256k1 key inside a logged-in token: the `Signer` the rest of the code sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute
from pkcs11.util.ec import encode_named_curve_parameters

from signer.base import Signature, checksum
from signer.ecdsa import address_of, check_digest, finish_signature
from signer.errors import HsmError

if TYPE_CHECKING:
    from signer.pkcs11.token import Token

SECP256K1_OID = "1.3.132.0.10"
SECP256K1_PARAMS: bytes = encode_named_curve_parameters(SECP256K1_OID)


def private_key_template(key_id: bytes, label: str) -> dict[Attribute, Any]:
    """The attributes of a secp256k1 private key on a token: sensitive, never extractable,
    for signing only (generated there, or imported for known-answer tests)."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.ID: key_id,
        Attribute.LABEL: label,
    }


def _unwrap_ec_point(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the 65-byte uncompressed point."""
    value = bytes(value)
    if len(value) == 67 and value[0] == 0x04 and value[1] == 65:
        value = value[2:]
    if len(value) != 65 or value[0] != 0x04:
        raise HsmError("the token returned an EC point that is not an uncompressed secp256k1 point")
    return value


class HsmKey:
    """A secp256k1 key inside a logged-in token; a `Signer` and an `AsyncSigner`."""

    def __init__(self, token: Token, key_id: bytes, label: str, public_key: bytes) -> None:
        self.token = token
        self.key_id = key_id
        self.label = label
        self.public_key = public_key
        self._address = address_of(public_key)

    def __repr__(self) -> str:
        return (
            f"HsmKey({checksum(self._address)}, id={self.key_id.hex()}, token={self.token.label!r})"
        )

    @property
    def address(self) -> bytes:
        return self._address

    def sign_digest(self, digest: bytes) -> Signature:
        r, s = self.token.sign_raw(self.key_id, digest)
        return finish_signature(digest, r, s, self.public_key)

    async def sign_digest_async(self, digest: bytes) -> Signature:
        """Only `C_Sign` goes to the token's threads (one per session), so that a session is
        never idle while its thread finishes a signature; the recovery id is found back on
        the loop (~55 µs, most of it in libsecp256k1 without the GIL)."""
        check_digest(digest)
        r, s = await self.token.executor.run(self.token.sign_raw, self.key_id, digest)
        return finish_signature(digest, r, s, self.public_key)
