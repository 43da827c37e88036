"""Low-s normalisation and recovery ids: unit, property (hypothesis) and Wycheproof tests."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from coincurve import PrivateKey, PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from signer.base import SECP256K1_HALF_N, SECP256K1_N, Signature
from signer.ecdsa import (
    _finish_by_recovery,
    address_of,
    finish_signature,
    is_low_s,
    normalise,
    recover_public_key,
)
from signer.errors import InvalidDigest, SignatureInvalid
from signer.software import SoftwareSigner
from tests.support.checks import SignatureProblem, check_digest_signature
from tests.support.vectors import load_wycheproof

private_keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(
    lambda k: k.to_bytes(32, "big")
)
digests = st.binary(min_size=32, max_size=32)


def _raw_sign(private_key: bytes, digest: bytes) -> tuple[int, int, int]:
    sig = PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]


def test_normalise_flips_high_s() -> None:
    assert normalise(5, SECP256K1_HALF_N) == (5, SECP256K1_HALF_N, False)
    assert normalise(5, SECP256K1_HALF_N + 1) == (5, SECP256K1_N - SECP256K1_HALF_N - 1, True)


@settings(max_examples=300, deadline=None)
@given(private_keys, digests, st.booleans())
def test_finished_signature_is_low_s_and_recovers(key: bytes, digest: bytes, flip: bool) -> None:
    """Whatever half the HSM's s falls in, the result is low-s and recovers the key's address."""
    r, s, _ = _raw_sign(key, digest)
    if flip:  # the other, equally valid, ECDSA signature: what an HSM returns half the time
        s = SECP256K1_N - s
    public = PrivateKey(key).public_key.format(compressed=False)
    signature = finish_signature(digest, r, s, public)
    assert is_low_s(signature) and signature.s <= SECP256K1_HALF_N
    assert recover_public_key(digest, signature) == public
    check_digest_signature(digest, signature.r, signature.s, signature.v, address_of(public))


@settings(max_examples=100, deadline=None)
@given(private_keys, digests)
def test_software_signer_is_low_s(key: bytes, digest: bytes) -> None:
    signer = SoftwareSigner(key)
    signature = signer.sign_digest(digest)
    check_digest_signature(digest, signature.r, signature.s, signature.v, signer.address)


def test_recovery_id_matches_the_software_signer_for_both_parities() -> None:
    """The recovery id comes from one recovery against the key's own point (signer/ecdsa.py):
    over many random digests and keys, high-s or not, it is the id coincurve signs with, the
    result recovers the key, and the same (r, s) refused against another key."""
    keys = [PrivateKey(os.urandom(32)) for _ in range(8)]
    publics = [key.public_key.format(compressed=False) for key in keys]
    parities = [0, 0]
    for n in range(2000):
        key, public, other = keys[n % 8], publics[n % 8], publics[(n + 1) % 8]
        digest = os.urandom(32)
        sig = key.sign_recoverable(digest, hasher=None)  # low-s already, with its recovery id
        r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        as_hsm = SECP256K1_N - s if n % 2 else s  # an HSM returns either half
        assert finish_signature(digest, r, as_hsm, public) == Signature(r, s, v)
        assert _finish_by_recovery(digest, r, s, public) == Signature(r, s, v)
        assert recover_public_key(digest, Signature(r, s, v)) == public
        parities[v] += 1
        if n % 10 == 0:
            with pytest.raises(SignatureInvalid):
                finish_signature(digest, r, as_hsm, other)
            with pytest.raises(SignatureInvalid):  # a corrupted digest, s or r
                finish_signature(bytes([digest[0] ^ 1]) + digest[1:], r, as_hsm, public)
            with pytest.raises(SignatureInvalid):
                finish_signature(digest, r, as_hsm ^ 4, public)
            with pytest.raises(SignatureInvalid):
                finish_signature(digest, r ^ 2, as_hsm, public)
    assert min(parities) > 850, parities


def test_a_public_point_off_the_curve_or_negated_is_refused() -> None:
    """Only x and the parity of y enter the computation: the point itself is checked first."""
    key, digest = PrivateKey(b"\x05" * 32), b"\x44" * 32
    public = key.public_key.format(compressed=False)
    r, s, _ = _raw_sign(b"\x05" * 32, digest)
    y = int.from_bytes(public[33:], "big")
    field = 2**256 - 2**32 - 977
    off_curve = public[:33] + ((y + 2) % field).to_bytes(32, "big")  # same x, same parity
    negated = public[:33] + (field - y).to_bytes(32, "big")
    for wrong in (off_curve, negated, public[:64], b"\x02" + public[1:]):
        with pytest.raises(SignatureInvalid):
            finish_signature(digest, r, s, wrong)
    assert recover_public_key(digest, finish_signature(digest, r, s, public)) == public


def test_high_s_signature_would_be_refused_by_the_checker() -> None:
    key, digest = b"\x11" * 32, b"\x22" * 32
    r, s, v = _raw_sign(key, digest)
    signer = SoftwareSigner(key)
    with pytest.raises(SignatureProblem, match="high s"):
        check_digest_signature(digest, r, SECP256K1_N - s, v ^ 1, signer.address)


def test_signature_from_another_key_is_refused() -> None:
    digest = b"\x33" * 32
    r, s, _ = _raw_sign(b"\x01" * 32, digest)
    other = PrivateKey(b"\x02" * 32).public_key.format(compressed=False)
    with pytest.raises(SignatureInvalid):
        finish_signature(digest, r, s, other)


@pytest.mark.parametrize("r,s", [(0, 1), (1, 0), (SECP256K1_N, 1), (1, SECP256K1_N)])
def test_out_of_range_is_refused(r: int, s: int) -> None:
    public = PrivateKey(b"\x01" * 32).public_key.format(compressed=False)
    with pytest.raises(SignatureInvalid):
        finish_signature(b"\x00" * 32, r, s, public)


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_digest_must_be_32_bytes(digest: Any) -> None:
    with pytest.raises(InvalidDigest, match="32 bytes"):
        SoftwareSigner(b"\x01" * 32).sign_digest(digest)


def test_signature_bytes_are_rsv_with_v_27_28() -> None:
    sig = Signature(1, 2, 1).to_bytes()
    assert len(sig) == 65 and sig[64] == 28 and sig[31] == 1 and sig[63] == 2


def _wycheproof(name: str) -> list[tuple[bytes, bytes, str, str, str]]:
    data = load_wycheproof(name)
    cases = []
    for group in data["testGroups"]:
        public = bytes.fromhex(group["publicKey"]["uncompressed"])
        for test in group["tests"]:
            digest = hashlib.sha256(bytes.fromhex(test["msg"])).digest()
            cases.append((public, digest, test["sig"], test["result"], str(test["tcId"])))
    return cases


def _decode(der_hex: str) -> tuple[int, int] | None:
    try:
        return decode_dss_signature(bytes.fromhex(der_hex))
    except ValueError:
        return None


def _needs_high_recovery_id(digest: bytes, r: int, s: int, public: bytes) -> bool:
    for recovery_id in (2, 3):
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([recovery_id])
        try:
            point = PublicKey.from_signature_and_message(sig, digest, hasher=None)
        except ValueError:
            continue
        if point.format(compressed=False) == public:
            return True
    return False


PLAIN = _wycheproof("wycheproof_ecdsa_secp256k1_sha256_test.json")
BITCOIN = _wycheproof("wycheproof_ecdsa_secp256k1_sha256_bitcoin_test.json")


def test_wycheproof_plain_as_hsm_answers() -> None:
    """Each as if an HSM had returned it: valid ones come out low-s, invalid ones are refused."""
    seen = {"valid": 0, "invalid": 0}
    for public, digest, der, result, tc_id in PLAIN:
        decoded = _decode(der)
        if result == "valid":
            assert decoded is not None, tc_id
            if _needs_high_recovery_id(digest, *decoded, public):
                # R.x >= n (probability ~2^-128): Ethereum's v cannot express it; refusing is
                # right, and the caller signs again with a fresh k.
                with pytest.raises(SignatureInvalid):
                    finish_signature(digest, *decoded, public)
                seen["unexpressible"] = seen.get("unexpressible", 0) + 1
                continue
            signature = finish_signature(digest, *decoded, public)
            assert is_low_s(signature), tc_id
            check_digest_signature(
                digest, signature.r, signature.s, signature.v, address_of(public)
            )
        elif result == "invalid" and decoded is not None:
            with pytest.raises(SignatureInvalid):
                finish_signature(digest, *decoded, public)
        seen[result] = seen.get(result, 0) + 1
    assert seen["valid"] >= 100 and seen["invalid"] >= 200 and seen["unexpressible"] <= 3


def test_wycheproof_bitcoin_through_the_strict_checker() -> None:
    """The checker enforces low-s: Wycheproof's bitcoin variant is the reference for that."""
    for public, digest, der, result, tc_id in BITCOIN:
        decoded = _decode(der)
        accepted = False
        if decoded is not None:
            for v in (0, 1):
                try:
                    check_digest_signature(digest, *decoded, v, address_of(public))
                    accepted = True
                except SignatureProblem:
                    pass
        assert accepted == (result == "valid"), tc_id
