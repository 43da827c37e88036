"""Bad input to the HSM layer: a clear exception naming what to fix, never the PIN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from signer.errors import (
    InvalidDigest,
    KeyNotFound,
    ModuleNotFound,
    NotLoggedIn,
    PinIncorrect,
    TokenNotFound,
)
from signer.pkcs11 import Hsm
from tests.conftest import SoftHsmToken


def _no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc!s} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    for secret in secrets:
        assert secret not in text


def test_wrong_pin_is_refused_without_leaking_it(softhsm_conf: Path, softhsm_module: str) -> None:
    pin, wrong = os.urandom(8).hex(), os.urandom(8).hex()
    with Hsm(softhsm_module) as hsm:
        hsm.initialise_token("wrong-pin", os.urandom(8).hex(), pin)
        with pytest.raises(PinIncorrect, match="refused the PIN") as caught:
            hsm.login("wrong-pin", wrong)
        _no_secret(caught.value, pin, wrong)
        # No half-open state: the right PIN still logs in afterwards.
        token = hsm.login("wrong-pin", pin)
        assert token.label == "wrong-pin"


def test_later_login_with_another_pin_is_refused(hsm_token: SoftHsmToken) -> None:
    wrong = hsm_token.pin + "x"
    with pytest.raises(PinIncorrect) as caught:
        hsm_token.hsm.login(hsm_token.label, wrong)
    _no_secret(caught.value, hsm_token.pin, wrong)
    assert hsm_token.hsm.login(hsm_token.label, hsm_token.pin) is hsm_token.token


def test_missing_token(hsm_token: SoftHsmToken) -> None:
    with pytest.raises(TokenNotFound, match="no initialised token labelled 'nope'"):
        hsm_token.hsm.login("nope", hsm_token.pin)
    with pytest.raises(NotLoggedIn, match="has not logged into the token 'other'"):
        hsm_token.hsm.token("other")


def test_missing_key(hsm_token: SoftHsmToken) -> None:
    with pytest.raises(KeyNotFound, match="no key with id 00ff"):
        hsm_token.token.key(key_id=b"\x00\xff")
    with pytest.raises(KeyNotFound, match="no key with label 'ghost'"):
        hsm_token.token.key(label="ghost")
    with pytest.raises(KeyNotFound, match="no private key with id 0102"):
        hsm_token.token.sign_raw(b"\x01\x02", b"\x00" * 32)


def test_duplicate_key_id_is_refused(hsm_token: SoftHsmToken) -> None:
    hsm_token.token.generate_key(b"\x07" * 16, "first")
    with pytest.raises(Exception, match="already holds a key with id"):
        hsm_token.token.generate_key(b"\x07" * 16, "second")


@pytest.mark.parametrize("digest", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64])
def test_digest_of_the_wrong_length(hsm_token: SoftHsmToken, digest: bytes) -> None:
    key = hsm_token.token.generate_key(os.urandom(16), "len")
    with pytest.raises(InvalidDigest, match=f"exactly 32 bytes, got {len(digest)}"):
        key.sign_digest(digest)


def test_missing_module_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "libnothing.so")
    with pytest.raises(ModuleNotFound, match=r"PKCS#11 module not found: .*libnothing\.so"):
        Hsm(missing)


def test_a_file_that_is_not_a_pkcs11_module(tmp_path: Path) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared object")
    with pytest.raises(ModuleNotFound, match="cannot load the PKCS#11 module"):
        Hsm(str(bogus))
