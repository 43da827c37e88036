"""A software key behind the `Signer` seam: unit tests, known-answer vectors, benchmarks.

coincurve signs deterministically (RFC 6979) and already low-s, so vectors match byte for byte.
Never used by the proxy for real accounts: real keys live in the HSM.
"""

from __future__ import annotations

import asyncio

from coincurve import PrivateKey

from signer.base import Signature
from signer.ecdsa import address_of, check_digest


class SoftwareSigner:
    """A secp256k1 private key held in memory."""

    def __init__(self, private_key: bytes) -> None:
        self._key = PrivateKey(private_key)
        self.public_key: bytes = self._key.public_key.format(compressed=False)
        self._address = address_of(self.public_key)

    @property
    def address(self) -> bytes:
        return self._address

    def sign_digest(self, digest: bytes) -> Signature:
        check_digest(digest)
        sig = self._key.sign_recoverable(digest, hasher=None)
        return Signature(
            int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        )

    async def sign_digest_async(self, digest: bytes) -> Signature:
        await asyncio.sleep(0)
        return self.sign_digest(digest)
