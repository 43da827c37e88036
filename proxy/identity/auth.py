"""Who is calling: JWTs (pyjwt, explicit algorithm allowlist per verifier) and API keys.

A JWT's `sub` is the user id; `exp` is required; `iss` / `aud` are checked when configured;
30 seconds of leeway absorb clock skew. HS256 tokens are checked with QSIGNER_JWT_SECRET only;
public-key tokens with QSIGNER_JWT_PUBLIC_KEY (RS256, ES256 or EdDSA, by the key's type) or
with the keys of QSIGNER_JWT_JWKS_URL (cached, refreshed on an unknown `kid`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy.errors import SettingsError, Unauthorized
from proxy.settings import Settings

LEEWAY_SECONDS = 30
API_KEY_PREFIX = "qsk_"
VERIFIED_TOKENS_MAX = 10_000


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies tokens with one key source and the algorithms that source allows.

    A token that verified is remembered until its `exp` (a bounded map), so that a client
    sending the same token on every request pays the signature check once.
    """

    algorithms: tuple[str, ...]
    key: Any = None
    jwks: jwt.PyJWKClient | None = None
    issuer: str | None = None
    audience: str | None = None
    _verified: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)

    def verify(self, token: str) -> str:
        """The token's subject (user id), or `Unauthorized`; never echoes the token."""
        remembered = self._verified.get(token)
        if remembered is not None and remembered[1] > time.time():
            return remembered[0]
        subject, expires = self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            self._verified.clear()
        self._verified[token] = (subject, expires)
        return subject

    def _verify(self, token: str) -> tuple[str, float]:
        try:
            key = self.key
            if self.jwks is not None:
                key = self.jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self.algorithms),
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={
                    "require": ["exp", "sub"] + (["iss"] if self.issuer else [])
                    + (["aud"] if self.audience else []),
                    "verify_aud": self.audience is not None,
                },
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthorized(f"invalid token ({type(exc).__name__})") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("invalid token (no subject)")
        return subject, float(claims["exp"]) + LEEWAY_SECONDS


def build_verifier(settings: Settings, *, jwks_cooldown_seconds: float = 5.0) -> JwtVerifier:
    """The verifier the settings describe; exactly one source must be configured.

    JWKS keys are cached for 5 minutes; a token with an unknown `kid` refetches the set, at most
    once per `jwks_cooldown_seconds`, so a flood of made-up `kid`s cannot hammer the IdP.
    """
    given = (settings.jwt_secret, settings.jwt_public_key, settings.jwt_jwks_url)
    sources = [source for source in given if source]
    if len(sources) != 1:
        raise SettingsError(
            "set exactly one of QSIGNER_JWT_SECRET, QSIGNER_JWT_PUBLIC_KEY, QSIGNER_JWT_JWKS_URL"
        )
    issuer, audience = settings.jwt_issuer, settings.jwt_audience
    if settings.jwt_secret:
        if len(settings.jwt_secret.encode()) < 32:
            raise SettingsError("QSIGNER_JWT_SECRET must be at least 32 bytes")
        return JwtVerifier(("HS256",), key=settings.jwt_secret, issuer=issuer, audience=audience)
    if settings.jwt_public_key:
        try:
            key = load_pem_public_key(Path(settings.jwt_public_key).read_bytes())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"QSIGNER_JWT_PUBLIC_KEY: cannot read a PEM public key ({exc})"
                                ) from None  # fmt: skip
        if isinstance(key, rsa.RSAPublicKey):
            algorithms: tuple[str, ...] = ("RS256",)
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
            algorithms = ("ES256",)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            algorithms = ("EdDSA",)
        else:
            raise SettingsError("QSIGNER_JWT_PUBLIC_KEY must be an RSA, P-256 or Ed25519 key")
        return JwtVerifier(algorithms, key=key, issuer=issuer, audience=audience)
    client = jwt.PyJWKClient(
        str(settings.jwt_jwks_url),
        cache_keys=True,
        lifespan=300,
        cooldown_duration=jwks_cooldown_seconds,
    )
    return JwtVerifier(("RS256", "ES256", "EdDSA"), jwks=client, issuer=issuer, audience=audience)


def issue_token(settings: Settings, user_id: str, ttl_seconds: int) -> str:
    """An HS256 token for development and tests (production tokens come from the IdP)."""
    if not settings.jwt_secret:
        raise SettingsError("QSIGNER_JWT_SECRET is not set: `token issue` signs with it")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "nbf": now, "exp": now + ttl_seconds}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer …` header, or None."""
    if not header:
        return None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized("the Authorization header must be `Bearer <token or API key>`")
    return credential.strip()


def is_api_key(credential: str) -> bool:
    return credential.startswith(API_KEY_PREFIX)
