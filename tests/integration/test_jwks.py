"""JWTs verified against a JWKS URL served over real HTTP on loopback: known keys accepted,
an unknown `kid` refused, and a rotated key picked up."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from proxy.errors import Unauthorized
from proxy.identity.auth import build_verifier
from proxy.settings import Settings


class Keys:
    def __init__(self) -> None:
        self.published: dict[str, Any] = {}

    def add(self, kid: str) -> Any:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        self.published[kid] = {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}
        return private


@pytest.fixture
def jwks() -> Iterator[tuple[str, Keys]]:
    keys = Keys()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": list(keys.published.values())}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", keys
    finally:
        server.shutdown()
        server.server_close()


def token(private: Any, kid: str, sub: str = "alice") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + 60}, private, "RS256", headers={"kid": kid})


def test_jwks_keys_and_rotation(jwks: tuple[str, Keys]) -> None:
    url, keys = jwks
    first = keys.add("k1")
    verifier = build_verifier(Settings(jwt_jwks_url=url), jwks_cooldown_seconds=0.5)
    assert verifier.verify(token(first, "k1")) == "alice"

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized):
        verifier.verify(token(stranger, "k9"))  # unknown kid
    with pytest.raises(Unauthorized):
        verifier.verify(token(stranger, "k1"))  # known kid, wrong key

    second = keys.add("k2")  # the identity provider rotates
    time.sleep(0.6)  # unknown kids refetch at most once per cooldown
    assert verifier.verify(token(second, "k2", sub="bob")) == "bob"
