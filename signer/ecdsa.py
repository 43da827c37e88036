"""Pure secp256k1 helpers: EIP-2 low-s normalisation, recovery id, public key to address.

An HSM returns a bare `r || s`; Ethereum wants s <= n/2 and the recovery id. Both are found here
against the key's known public point, so a wrong or corrupted signature is caught before use.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from coincurve import PublicKey

# coincurve's own cffi binding of libsecp256k1 (its public `PublicKey` has no way to pass
# the crafted signature below, and wraps every call in more work than this path needs).
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT
from gmpy2 import invert as _invert
from sha3 import keccak_256 as _keccak_256

from signer.base import SECP256K1_HALF_N, SECP256K1_N, Signature
from signer.errors import InvalidDigest, SignatureInvalid

_CONTEXT = GLOBAL_CONTEXT.ctx  # read-only operations only: safe from any thread


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (safe-pysha3's C extension: ~1 µs where pycryptodome took ~7)."""
    digest: bytes = _keccak_256(data).digest()
    return digest


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


# The recovery id, and the check that the HSM's signature is right, come from one recovery.
# ECDSA verification finds R = s^-1 (e G + r Q) (x(R) = r when the signature is valid; the
# parity of its y is the recovery id). libsecp256k1 computes a combination of G and a point only
# inside `secp256k1_ecdsa_recover`: given a "signature" (x', s', id') over e', it returns
# x'^-1 (s' X - e' G), X the point with x = x' and y parity id'. With X = the key Q itself,
# s' = x' r s^-1 and e' = -x' e s^-1 (mod n), that is R. Trying id 0 then 1 (two recoveries for
# half of all signatures, ~70 µs on average here) cost more than this one and an inverse mod n
# (gmpy2: ~1 µs; Python's own pow(s, -1, n) takes ~16 µs).


class _KeyPoint(NamedTuple):
    """A public point Q written as the R of a recoverable signature."""

    x: int  # Q's x, reduced mod n (libsecp256k1 takes r' < n and the overflow in the id)
    x_bytes: bytes
    recovery_id: int


@functools.lru_cache(maxsize=1024)
def _key_point(public_key: bytes) -> _KeyPoint | None:
    """Checked once per key: only x and the parity of y are used below, so a point off the
    curve must not get that far. None for the one point whose x is n (2^-256 odds of a key
    there): that key goes through `_finish_by_recovery`."""
    point = ffi.new("secp256k1_pubkey *")
    if len(public_key) != 65 or not lib.secp256k1_ec_pubkey_parse(_CONTEXT, point, public_key, 65):
        raise SignatureInvalid("the key's public point is not an uncompressed secp256k1 point")
    x, recovery_id = int.from_bytes(public_key[1:33], "big"), public_key[64] & 1
    if x >= SECP256K1_N:
        x, recovery_id = x - SECP256K1_N, recovery_id | 2
    return _KeyPoint(x, x.to_bytes(32, "big"), recovery_id) if x else None


def _recover(compact: bytes, recovery_id: int, digest: bytes) -> Any:
    """libsecp256k1's recovery: the point (as `secp256k1_pubkey *`), or None."""
    signature = ffi.new("secp256k1_ecdsa_recoverable_signature *")
    if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(
        _CONTEXT, signature, compact, recovery_id
    ):
        return None
    point = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ecdsa_recover(_CONTEXT, point, signature, digest):
        return None
    return point


def _serialised(point: Any, compressed: bool) -> bytes:
    size = 33 if compressed else 65
    output, length = ffi.new(f"unsigned char[{size}]"), ffi.new("size_t *", size)
    flags = lib.SECP256K1_EC_COMPRESSED if compressed else lib.SECP256K1_EC_UNCOMPRESSED
    lib.secp256k1_ec_pubkey_serialize(_CONTEXT, output, length, point, flags)
    return bytes(ffi.buffer(output, size))


def finish_signature(digest: bytes, r: int, s: int, public_key: bytes) -> Signature:
    """Turn a raw ECDSA (r, s) from a key whose public point is known into a low-s `Signature`.

    R is computed from the key (above): the signature is right when x(R) = r, and the recovery
    id is the parity of R's y. Otherwise (bad HSM answer, wrong key, or an R whose x is r + n,
    which Ethereum's v cannot express) `SignatureInvalid` is raised.
    """
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise SignatureInvalid("the HSM returned r or s out of range")
    if s > SECP256K1_HALF_N:
        s = SECP256K1_N - s
    key = _key_point(public_key)
    if key is None:
        return _finish_by_recovery(digest, r, s, public_key)
    scale = key.x * int(_invert(s, SECP256K1_N)) % SECP256K1_N
    factor = scale * r % SECP256K1_N
    message = -scale * int.from_bytes(digest, "big") % SECP256K1_N
    point = _recover(
        key.x_bytes + factor.to_bytes(32, "big"), key.recovery_id, message.to_bytes(32, "big")
    )
    if point is not None:
        found = _serialised(point, compressed=True)
        if found[1:] == r.to_bytes(32, "big"):
            return Signature(r, s, found[0] - 2)
    raise SignatureInvalid("the HSM signature does not recover the key's public point")


def _finish_by_recovery(digest: bytes, r: int, s: int, public_key: bytes) -> Signature:
    """The plain way, for a low-s (r, s): the recovery id whose recovered key is `public_key`."""
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for v in (0, 1):
        point = _recover(compact, v, digest)
        if point is not None and _serialised(point, compressed=False) == public_key:
            return Signature(r, s, v)
    raise SignatureInvalid("the HSM signature does not recover the key's public point")


def is_low_s(signature: Signature) -> bool:
    return 0 < signature.s <= SECP256K1_HALF_N
