"""The HSM keys of the accounts this process signs with, owned by the signing side: the first use
of an account logs into its token and finds its key; later uses reuse both."""

from __future__ import annotations

import asyncio

from proxy.credentials import HsmCredentials
from signer.base import AsyncSigner
from signer.pkcs11 import Hsm, HsmKey


class Keyring:
    """Keys found on the tokens of one `Hsm`, by (token serial, CKA_ID)."""

    def __init__(self, hsm: Hsm) -> None:
        self.hsm = hsm
        self._keys: dict[tuple[str, bytes], HsmKey] = {}

    async def signer(self, credentials: HsmCredentials, key_id: bytes) -> AsyncSigner:
        """The key `key_id` on the credentials' token, once their PIN opened it."""
        loop = asyncio.get_running_loop()
        # Logging in (first time) or checking the PIN against the process's login (later).
        token = await loop.run_in_executor(
            None, self.hsm.login, credentials.token_label, credentials.pin
        )
        key = self._keys.get((credentials.token_serial, key_id))
        if key is None or key.token is not token:
            key = await loop.run_in_executor(None, lambda: token.key(key_id=key_id))
            self._keys[(credentials.token_serial, key_id)] = key
        return key
