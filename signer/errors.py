"""Exceptions raised by the signer package.

The proxy maps each of them to one JSON-RPC error; messages name what to fix and never carry a
PIN, a password or key material.
"""

from __future__ import annotations


class SignerError(Exception):
    """Base of every error raised by `signer`."""


class InvalidDigest(SignerError, ValueError):
    """A digest that is not exactly 32 bytes."""


class InvalidTransaction(SignerError, ValueError):
    """Transaction fields that cannot be serialised (wrong type, out of range, conflicting)."""


class InvalidMessage(SignerError, ValueError):
    """A message or EIP-712 typed data that cannot be encoded."""


class HsmError(SignerError):
    """The HSM or its PKCS#11 library failed or refused."""


class ModuleNotFound(HsmError):
    """The PKCS#11 library file does not exist or cannot be loaded."""


class TokenNotFound(HsmError):
    """No initialised token carries the requested label."""


class KeyNotFound(HsmError):
    """No private key with that id or label on the token."""


class PinIncorrect(HsmError):
    """The token refused the PIN (or the PIN does not match the one the process logged in with)."""


class PinLocked(HsmError):
    """The token locked its user PIN after too many wrong attempts."""


class NotLoggedIn(HsmError):
    """A signing was attempted on a token this process has not logged into."""


class SignatureInvalid(HsmError):
    """The HSM returned a signature that does not verify against the key's public point."""


class Overloaded(SignerError):
    """Too much blocking work (HSM calls, PBKDF2) already waits: refused at once, try again."""
