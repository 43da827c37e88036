"""Who is calling: JWTs (pyjwt, explicit algorithm allowlist per verifier) and API keys.

A JWT's `sub` is the user id; `exp` is required; `iss` / `aud` are checked when configured;
30 seconds of leeway absorb clock skew. HS256 tokens are checked with QSIGNER_JWT_SECRET only;
public-key tokens with QSIGNER_JWT_PUBLIC_KEY (RS256, ES256 or EdDSA, by the key's type) or
with the keys of QSIGNER_JWT_JWKS_URL (fetched with aiohttp, never on the event loop's time:
cached, refreshed in the background when old, refetched on an unknown `kid` at most once per
cooldown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy import logs
from proxy.errors import SettingsError, Unauthorized
from proxy.settings import Settings

LEEWAY_SECONDS = 30
API_KEY_PREFIX = "qsk_"
VERIFIED_TOKENS_MAX = 10_000
JWKS_MAX_BYTES = 1024 * 1024


class JwksKeys:
    """The signing keys a JWKS URL publishes, fetched asynchronously with a timeout.

    One fetch at a time (callers that need it wait for the same one). A key the set names is
    served at once; when the set is older than `lifespan` it is refreshed in the background and
    the keys it had keep serving meanwhile. An unknown `kid` triggers a fetch at most once per
    `cooldown`, so a flood of made-up `kid`s cannot hammer the identity provider.
    """

    def __init__(self, url: str, *, lifespan: float = 300, cooldown: float = 5.0,
                 timeout: float = 5.0) -> None:  # fmt: skip
        self.url = url
        self.lifespan = lifespan
        self.cooldown = cooldown
        self.timeout = timeout
        self._keys: dict[str, Any] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._fetch: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def key(self, kid: str) -> Any:
        """The public key for `kid`, or `Unauthorized`."""
        known = self._keys.get(kid)
        if known is not None:
            if time.monotonic() - self._fetched_at > self.lifespan:
                self._fetching()  # in the background: this key serves meanwhile
            return known
        if time.monotonic() - self._attempted_at >= self.cooldown or self._fetch is not None:
            await asyncio.shield(self._fetching())
        known = self._keys.get(kid)
        if known is None:
            raise Unauthorized("invalid token (unknown kid)")
        return known

    def _fetching(self) -> asyncio.Task[None]:
        if self._fetch is None:
            self._attempted_at = time.monotonic()
            self._fetch = asyncio.create_task(self._refresh())
        return self._fetch

    async def _refresh(self) -> None:
        try:
            self._keys = await asyncio.wait_for(self._download(), self.timeout)
            self._fetched_at = time.monotonic()
        except Exception as exc:  # the old keys stay; the caller hears "unknown kid"
            logs.event("JWKS fetch failed", logging.WARNING, error=type(exc).__name__)
        finally:
            self._fetch = None

    async def _download(self) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(self.url, raise_for_status=True) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError("the JWKS is larger than 1 MiB")
        published = jwt.PyJWKSet.from_json(body.decode())
        return {key.key_id: key.key for key in published.keys
                if key.key_id and key.public_key_use in ("sig", None)}  # fmt: skip

    async def close(self) -> None:
        fetch, session = self._fetch, self._session
        self._session = None
        if fetch is not None:
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
        if session is not None:
            await session.close()


@dataclass(frozen=True)
class JwtVerifier:
    """Verifies tokens with one key source and the algorithms that source allows.

    A token that verified is remembered until its `exp` (a bounded map), so that a client
    sending the same token on every request pays the signature check once.
    """

    algorithms: tuple[str, ...]
    key: Any = None
    jwks: JwksKeys | None = None
    issuer: str | None = None
    audience: str | None = None
    _verified: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)

    async def verify(self, token: str) -> str:
        """The token's subject (user id), or `Unauthorized`; never echoes the token."""
        remembered = self._verified.get(token)
        if remembered is not None and remembered[1] > time.time():
            return remembered[0]
        subject, expires = self._verify(token, await self._key(token))
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            self._verified.clear()
        self._verified[token] = (subject, expires)
        return subject

    async def _key(self, token: str) -> Any:
        if self.jwks is None:
            return self.key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token ({type(exc).__name__})") from None
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid token (no kid)")
        return await self.jwks.key(kid)

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    def _verify(self, token: str, key: Any) -> tuple[str, float]:
        try:
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


def build_verifier(settings: Settings, *, jwks_cooldown_seconds: float = 5.0,
                   jwks_timeout_seconds: float = 5.0) -> JwtVerifier:  # fmt: skip
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
    keys = JwksKeys(str(settings.jwt_jwks_url), lifespan=300, cooldown=jwks_cooldown_seconds,
                    timeout=jwks_timeout_seconds)  # fmt: skip
    return JwtVerifier(("RS256", "ES256", "EdDSA"), jwks=keys, issuer=issuer, audience=audience)


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
