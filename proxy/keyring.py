"""The HSM keys of the accounts this process signs with, owned by the signing side: the first use
of an account logs into its token and finds its key; later uses only check the PIN."""

from __future__ import annotations

import functools

from proxy.identity.credentials import HsmCredentials
from signer.base import AsyncSigner
from signer.pkcs11 import Hsm, HsmKey


class Keyring:
    """Keys found on the tokens of one `Hsm`, by (token serial, CKA_ID).

    Once a token is logged into and a key found, handing the key out makes no executor hop: the
    PIN is checked against the process's login (an HMAC) on the event loop, so that a signing
    request waits for nothing but the signature itself. Only a first login (on the module's
    executor) and a first lookup of a key (on its token's executor) leave the loop.
    """

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm
        self._keys: dict[tuple[str, bytes], HsmKey] = {}
        self._by_address: dict[bytes, HsmKey] = {}

    async def signer(self, credentials: HsmCredentials, key_id: bytes) -> AsyncSigner:
        """The key `key_id` on the credentials' token, once their PIN opened it."""
        token = await self.hsm.login_async(credentials.token_label, credentials.pin)
        key = self._keys.get((token.serial, key_id))
        if key is None or key.token is not token:
            key = await token.executor.run(functools.partial(token.key, key_id=key_id))
            self._keys[(token.serial, key_id)] = key
            self._by_address[key.address] = key
        return key

    def known(self, address: bytes) -> AsyncSigner | None:
        """The key of `address` if a caller's credentials opened it in this process: what
        recovery signs a hole's 0-value self-transfer with (it holds no credentials of its own)."""
        return self._by_address.get(address)
