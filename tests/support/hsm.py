"""SoftHSM tokens for tests: each test its own token directory, SOFTHSM2_CONF, label and PIN.

`import_private_key` exists for tests only, so that known-answer vectors can run through the
HSM; nothing in the product can import a key.
"""

from __future__ import annotations

import secrets
from typing import Any

from pkcs11 import Attribute, KeyType, ObjectClass

from signer.pkcs11 import SECP256K1_PARAMS, HsmKey, Token, private_key_template


def random_label(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def import_private_key(token: Token, private_key: bytes, label: str | None = None) -> HsmKey:
    """Put a known secp256k1 key into the token (sensitive, not extractable) and return it."""
    from coincurve import PrivateKey

    key_id = secrets.token_bytes(16)
    label = label or random_label("vector")
    point = PrivateKey(private_key).public_key.format(compressed=False)
    with token.session() as borrowed:
        session: Any = borrowed.session
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                **private_key_template(key_id, label),
                Attribute.EC_PARAMS: SECP256K1_PARAMS,
                Attribute.VALUE: private_key,
            }
        )
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.TOKEN: True,
                Attribute.VERIFY: True,
                Attribute.ID: key_id,
                Attribute.LABEL: label,
                Attribute.EC_PARAMS: SECP256K1_PARAMS,
                Attribute.EC_POINT: bytes([0x04, 65]) + point,
            }
        )
    return token.key(key_id=key_id)
