"""Credential envelopes: a user's HSM credentials encrypted under a key only the user can give.

A password envelope: PBKDF2-HMAC-SHA256 (random 16-byte salt, iterations stored with it) turns
the password into a 256-bit key-encryption key; AES-256-GCM encrypts the credentials. An API-key
envelope: the key's 256-bit random secret goes through HKDF-SHA256 instead: a slow KDF only
protects low-entropy secrets, and 2^256 guesses are out of reach however fast each one is. The
associated data binds an envelope to its user, organisation, kind and version, so an envelope
copied onto another row does not open.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from proxy.errors import EnvelopeError

ENVELOPE_FORMAT = "qsigner-envelope-v1"


@dataclass(frozen=True)
class HsmCredentials:
    """What unlocks a user's signing: the token and its PIN. (Which accounts a user may sign
    with is a database grant, not part of the envelope.)"""

    token_label: str
    token_serial: str
    pin: str = field(repr=False)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "token_label": self.token_label,
                "token_serial": self.token_serial,
                "pin": self.pin,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> HsmCredentials:
        raw = json.loads(data)
        # Envelopes sealed before grants moved to the database carry `key_ids`: ignored.
        return cls(raw["token_label"], raw["token_serial"], raw["pin"])


@dataclass(frozen=True)
class Envelope:
    """A sealed envelope as stored (no secret in it, only ciphertext and KDF parameters)."""

    kdf: str  # "pbkdf2-sha256" or "hkdf-sha256"
    iterations: int | None
    salt: bytes
    nonce: bytes
    ciphertext: bytes


def associated_data(user_id: str, organisation_id: int, kind: str, version: int) -> bytes:
    return json.dumps([ENVELOPE_FORMAT, user_id, organisation_id, kind, version]).encode()


def derive_password_key(password: str, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA256: the slow step (~70 ms at 600k iterations); never per request."""
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations)
    return kdf.derive(password.encode())


def derive_secret_key(secret: bytes, salt: bytes) -> bytes:
    """HKDF-SHA256 for a high-entropy secret (an API key's 32 random bytes)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"qsigner apikey envelope")
    return hkdf.derive(secret)


def seal(key: bytes, credentials: HsmCredentials, aad: bytes, *, kdf: str,
         iterations: int | None, salt: bytes) -> Envelope:  # fmt: skip
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(nonce, credentials.to_bytes(), aad)
    return Envelope(kdf, iterations, salt, nonce, ciphertext)


def open_envelope(key: bytes, envelope: Envelope, aad: bytes) -> HsmCredentials:
    try:
        plaintext = AESGCM(key).decrypt(envelope.nonce, envelope.ciphertext, aad)
    except InvalidTag:
        raise EnvelopeError("the envelope does not open with this secret") from None
    return HsmCredentials.from_bytes(plaintext)


def seal_with_password(
    password: str, credentials: HsmCredentials, aad: bytes, iterations: int
) -> tuple[Envelope, bytes]:
    """A new password envelope (fresh salt) and its derived key (for the unlock cache)."""
    salt = os.urandom(16)
    key = derive_password_key(password, salt, iterations)
    return seal(key, credentials, aad, kdf="pbkdf2-sha256", iterations=iterations, salt=salt), key


def seal_with_secret(secret: bytes, credentials: HsmCredentials, aad: bytes) -> Envelope:
    salt = os.urandom(16)
    key = derive_secret_key(secret, salt)
    return seal(key, credentials, aad, kdf="hkdf-sha256", iterations=None, salt=salt)


def envelope_key(envelope: Envelope, secret: str | bytes) -> bytes:
    """The key that should open `envelope`, derived from the password or API key secret."""
    if envelope.kdf == "pbkdf2-sha256" and isinstance(secret, str) and envelope.iterations:
        return derive_password_key(secret, envelope.salt, envelope.iterations)
    if envelope.kdf == "hkdf-sha256" and isinstance(secret, bytes):
        return derive_secret_key(secret, envelope.salt)
    raise EnvelopeError(f"unsupported envelope key derivation {envelope.kdf!r}")
