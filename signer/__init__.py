"""Transaction and message signing behind a small `Signer` seam, with keys in an HSM (PKCS#11).

Knows nothing of HTTP, JWTs or the database.
"""

from signer.base import AsyncSigner, Signature, SignedMessage, SignedTransaction, Signer

__all__ = ["AsyncSigner", "Signature", "SignedMessage", "SignedTransaction", "Signer"]
