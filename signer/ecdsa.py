"""Pure secp256k1 helpers: EIP-2 low-s normalisation, recovery id, public key to address.

An HSM returns a bare `r || s`; Ethereum wants s <= n/2 and the recovery id. Both are found here
against the key's known public point, so a wrong or corrupted signature is caught before use.
"""

from __future__ import annotations

from coincurve import PublicKey
from Crypto.Hash import keccak as _keccak

from signer.base import SECP256K1_HALF_N, SECP256K1_N, Signature
from signer.errors import InvalidDigest, SignatureInvalid


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (pycryptodome, eth-hash's own backend, without its dispatch)."""
    return bytes(_keccak.new(data=data, digest_bits=256).digest())


def check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes | bytearray) or len(digest) != 32:
        length = len(digest) if isinstance(digest, bytes | bytearray) else type(digest).__name__
        raise InvalidDigest(f"a digest to sign must be exactly 32 bytes, got {length}")


def address_of(public_key: bytes) -> bytes:
    """Address (20 bytes) of a 65-byte uncompressed public point `04 || x || y`."""
    if len(public_key) != 65 or public_key[0] != 4:
        raise ValueError("public key must be 65 bytes, uncompressed (0x04 prefix)")
    return keccak256(public_key[1:])[12:]


def normalise(r: int, s: int) -> tuple[int, int, bool]:
    """EIP-2: (r, s') with s' <= n/2, and whether s was flipped (which flips the y parity)."""
    if s > SECP256K1_HALF_N:
        return r, SECP256K1_N - s, True
    return r, s, False


def recover_public_key(digest: bytes, signature: Signature) -> bytes:
    """The 65-byte uncompressed public point that `signature` recovers to over `digest`."""
    sig65 = signature.r.to_bytes(32, "big") + signature.s.to_bytes(32, "big") + bytes([signature.v])
    return PublicKey.from_signature_and_message(sig65, digest, hasher=None).format(compressed=False)


def finish_signature(digest: bytes, r: int, s: int, public_key: bytes) -> Signature:
    """Turn a raw ECDSA (r, s) from a key whose public point is known into a low-s `Signature`.

    The recovery id is the one whose recovered key equals `public_key`; when neither recovers it
    the signature is wrong (bad HSM answer, wrong key) and `SignatureInvalid` is raised.
    """
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureInvalid("the HSM returned r or s out of range")
    r, s, _ = normalise(r, s)
    for v in (0, 1):
        candidate = Signature(r, s, v)
        try:
            if recover_public_key(digest, candidate) == public_key:
                return candidate
        except ValueError:
            continue
    raise SignatureInvalid("the HSM signature does not recover the key's public point")


def is_low_s(signature: Signature) -> bool:
    return 0 < signature.s <= SECP256K1_HALF_N
