"""Keys generated inside SoftHSM, and the low-s guarantee over many real HSM signatures."""

from __future__ import annotations

import os

import pytest
from pkcs11 import Attribute
from pkcs11 import exceptions as p11e

from signer.base import SECP256K1_HALF_N
from signer.ecdsa import address_of
from signer.pkcs11 import SECP256K1_PARAMS
from tests.conftest import SoftHsmToken
from tests.support.checks import check_digest_signature


def test_generated_key_is_sensitive_and_not_extractable(hsm_token: SoftHsmToken) -> None:
    key = hsm_token.token.generate_key(b"\x01" * 16, "account-1")
    assert len(key.address) == 20 and key.address == address_of(key.public_key)
    with hsm_token.token.session() as borrowed:
        private = borrowed.private_key(key.key_id)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.EC_PARAMS] == SECP256K1_PARAMS
        assert private[Attribute.LABEL] == "account-1"
        with pytest.raises(p11e.PKCS11Error):
            private[Attribute.VALUE]
    # Found again by id and by label, with the same public point.
    assert hsm_token.token.key(key_id=key.key_id).address == key.address
    assert hsm_token.token.key(label="account-1").address == key.address
    assert [k.address for k in hsm_token.token.keys()] == [key.address]


def test_generated_key_survives_reopening(hsm_token: SoftHsmToken, softhsm_module: str) -> None:
    from signer.pkcs11 import Hsm

    key = hsm_token.token.generate_key(b"\x02" * 16, "persisted")
    hsm_token.hsm.close()
    with Hsm(softhsm_module) as hsm:
        again = hsm.login(hsm_token.label, hsm_token.pin).key(key_id=key.key_id)
        assert again.address == key.address and again.public_key == key.public_key


def test_a_thousand_hsm_signatures_are_all_low_s(hsm_token: SoftHsmToken) -> None:
    """Raw HSM output is high-s about half the time; what we return never is."""
    key = hsm_token.token.generate_key(os.urandom(16), "thousand")
    raw_high = 0
    for _ in range(1000):
        digest = os.urandom(32)
        _, s = hsm_token.token.sign_raw(key.key_id, digest)
        raw_high += s > SECP256K1_HALF_N
        signature = key.sign_digest(digest)
        assert signature.s <= SECP256K1_HALF_N
        check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)
    # Without normalisation the assertions above would fail: the HSM does produce high s.
    assert 350 < raw_high < 650


async def test_async_signing_runs_in_the_executor(hsm_token: SoftHsmToken) -> None:
    import asyncio

    key = hsm_token.token.generate_key(os.urandom(16), "async")
    digests = [os.urandom(32) for _ in range(200)]
    signatures = await asyncio.gather(*(key.sign_digest_async(d) for d in digests))
    for digest, signature in zip(digests, signatures, strict=True):
        check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)
