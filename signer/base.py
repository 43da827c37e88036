"""The signing seam: a `Signer` turns a 32-byte digest into a low-s `Signature`.

Everything above it (transactions, messages) is serialisation; everything below it is a key,
in the HSM (`signer.pkcs11`) or in memory (`signer.software`, tests and vectors only).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Protocol, runtime_checkable

from eth_utils.address import to_checksum_address

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2


class Signature(NamedTuple):
    """An ECDSA signature over secp256k1, low-s, with its recovery id `v` (0 or 1, y parity)."""

    r: int
    s: int
    v: int

    def to_bytes(self) -> bytes:
        """65 bytes `r || s || v` with `v` 27/28, as eth_sign, personal_sign and MetaMask return."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([27 + self.v])


class SignedTransaction(NamedTuple):
    """A signed transaction ready for `eth_sendRawTransaction`."""

    raw: bytes
    hash: bytes
    sender: bytes
    signature: Signature


class SignedMessage(NamedTuple):
    """A signed EIP-191 / EIP-712 message."""

    digest: bytes
    signature: Signature

    @property
    def signature_bytes(self) -> bytes:
        return self.signature.to_bytes()


@functools.lru_cache(maxsize=4096)
def checksum(address: bytes) -> str:
    """The EIP-55 form of a 20-byte address, for the edges (CLI output, JSON-RPC answers).
    Cached: a Keccak-256 per call showed as a tenth of the event loop's time while signing, and
    a busy proxy sees the same few addresses over and over."""
    return to_checksum_address(address)


@runtime_checkable
class Signer(Protocol):
    """A key that signs digests synchronously (CLI, tests, vectors)."""

    @property
    def address(self) -> bytes:
        """The 20-byte Ethereum address of the key."""
        ...

    def sign_digest(self, digest: bytes) -> Signature:
        """Sign a 32-byte digest; the result is low-s and carries the right recovery id."""
        ...


@runtime_checkable
class AsyncSigner(Protocol):
    """A key that signs digests without blocking the event loop (the proxy)."""

    @property
    def address(self) -> bytes: ...

    async def sign_digest_async(self, digest: bytes) -> Signature: ...
