"""JWT verification: each classic attack is refused with 401 / 4100, and the token is never
echoed in the error."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy.errors import SettingsError, Unauthorized
from proxy.identity.auth import bearer, build_verifier, is_api_key, issue_token
from proxy.settings import Settings

SECRET = "s" * 40


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "alice", "iat": now, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(settings: Settings, token: str, match: str | None = None) -> None:
    with pytest.raises(Unauthorized, match=match) as caught:
        await build_verifier(settings).verify(token)
    assert token not in str(caught.value)
    assert caught.value.code == 4100 and caught.value.http_status == 401


async def test_hs256_accepted_and_subject_returned() -> None:
    settings = Settings(jwt_secret=SECRET)
    assert await build_verifier(settings).verify(jwt.encode(claims(), SECRET, "HS256")) == "alice"
    assert await build_verifier(settings).verify(issue_token(settings, "bob", 60)) == "bob"


async def test_alg_none_is_refused() -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    await refused(Settings(jwt_secret=SECRET), token)


async def test_hs256_signed_with_the_rsa_public_key_is_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    settings = Settings(jwt_public_key=str(tmp_path / "pub.pem"))
    assert await build_verifier(settings).verify(jwt.encode(claims(), private, "RS256")) == "alice"
    # The key confusion attack: HMAC with the public key's PEM as the secret.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    await refused(settings, f"{header}.{body}.{b64(signature)}")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": -120}, "expired"),
        ({"exp": None}, "invalid token"),
        ({"sub": None}, "invalid token"),
        ({"nbf": 600}, "invalid token"),
    ],
)
async def test_time_and_required_claims(changes: dict[str, Any], match: str) -> None:
    # Times are seconds from now, taken when the test runs (not when it is collected: a slow
    # suite once ran this past a collection-time `nbf`).
    now = int(time.time())
    claimed = {k: None if v is None or k == "sub" else now + v for k, v in changes.items()}
    await refused(
        Settings(jwt_secret=SECRET), jwt.encode(claims(**claimed), SECRET, "HS256"), match
    )


async def test_small_clock_skew_is_tolerated() -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")
    assert await build_verifier(Settings(jwt_secret=SECRET)).verify(token) == "alice"


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_issuer="https://idp", jwt_audience="qsigner")
    good = claims(iss="https://idp", aud="qsigner")
    assert await build_verifier(settings).verify(jwt.encode(good, SECRET, "HS256")) == "alice"
    for bad in ({"iss": "https://evil"}, {"aud": "other"}, {"iss": None}, {"aud": None}):
        await refused(settings, jwt.encode({**good, **bad} if None not in bad.values()
                                     else {k: v for k, v in good.items() if k not in bad},
                                     SECRET, "HS256"))  # fmt: skip


async def test_tampered_payload_and_wrong_secret() -> None:
    settings = Settings(jwt_secret=SECRET)
    token = jwt.encode(claims(), SECRET, "HS256")
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    await refused(settings, f"{header}.{forged}.{signature}")
    await refused(settings, jwt.encode(claims(), "t" * 40, "HS256"))
    await refused(settings, "not-a-jwt")


async def test_es256_and_eddsa_public_keys(tmp_path: Path) -> None:
    for private, algorithm in ((ec.generate_private_key(ec.SECP256R1()), "ES256"),
                               (ed25519.Ed25519PrivateKey.generate(), "EdDSA")):  # fmt: skip
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = tmp_path / f"{algorithm}.pem"
        path.write_bytes(pem)
        verifier = build_verifier(Settings(jwt_public_key=str(path)))
        assert verifier.algorithms == (algorithm,)
        assert await verifier.verify(jwt.encode(claims(), private, algorithm)) == "alice"
        await refused(Settings(jwt_public_key=str(path)), jwt.encode(claims(), SECRET, "HS256"))


def test_verifier_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="exactly one of"):
        build_verifier(Settings())
    with pytest.raises(SettingsError, match="exactly one of"):
        build_verifier(Settings(jwt_secret=SECRET, jwt_jwks_url="http://127.0.0.1:1/jwks"))
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        build_verifier(Settings(jwt_secret="short"))
    with pytest.raises(SettingsError, match="QSIGNER_JWT_PUBLIC_KEY"):
        build_verifier(Settings(jwt_public_key=str(tmp_path / "missing.pem")))


def test_bearer_header() -> None:
    assert bearer(None) is None
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  qsk_x ") == "qsk_x"
    for bad in ("Basic abc", "Bearer", "Bearer   "):
        with pytest.raises(Unauthorized):
            bearer(bad)
    assert is_api_key("qsk_0123_abc") and not is_api_key("eyJhbGciOi")


async def test_a_remembered_token_still_expires() -> None:
    verifier = build_verifier(Settings(jwt_secret=SECRET))
    token = jwt.encode(claims(exp=int(time.time()) - 29), SECRET, "HS256")  # within the leeway
    assert await verifier.verify(token) == "alice"
    assert await verifier.verify(token) == "alice"  # remembered
    await asyncio.sleep(2.1)
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)
