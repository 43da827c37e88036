"""JWTs verified against a JWKS URL served over real HTTP on loopback: known keys accepted,
an unknown `kid` refused, a rotated key picked up, and (issue 13, item 6) a slow identity
provider never holds up the event loop: other requests are answered while a fetch waits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from proxy.errors import Unauthorized
from proxy.identity.auth import build_verifier
from proxy.settings import Settings
from tests.support.anvil import run_anvil
from tests.support.stack import CHAIN_ID, build_stack, in_process


class Keys:
    """What the identity provider publishes, how slowly, and how often it was asked."""

    def __init__(self) -> None:
        self.published: dict[str, Any] = {}
        self.delay = 0.0
        self.fetches = 0
        self.asked = threading.Event()

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
            keys.fetches += 1
            keys.asked.set()
            time.sleep(keys.delay)
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
        keys.delay = 0
        server.shutdown()
        server.server_close()


def token(private: Any, kid: str, sub: str = "alice") -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "exp": now + 60, "jti": str(time.monotonic_ns())}, private,
                      "RS256", headers={"kid": kid})  # fmt: skip


async def test_jwks_keys_and_rotation(jwks: tuple[str, Keys]) -> None:
    url, keys = jwks
    first = keys.add("k1")
    verifier = build_verifier(Settings(jwt_jwks_url=url), jwks_cooldown_seconds=0.5)
    try:
        assert await verifier.verify(token(first, "k1")) == "alice"

        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(Unauthorized):
            await verifier.verify(token(stranger, "k9"))  # unknown kid
        with pytest.raises(Unauthorized):
            await verifier.verify(token(stranger, "k1"))  # known kid, wrong key

        second = keys.add("k2")  # the identity provider rotates
        await asyncio.sleep(0.6)  # unknown kids refetch at most once per cooldown
        assert await verifier.verify(token(second, "k2", sub="bob")) == "bob"
    finally:
        await verifier.close()


async def test_known_kids_are_served_while_a_refresh_waits_and_unknown_kids_are_limited(
    jwks: tuple[str, Keys],
) -> None:
    url, keys = jwks
    first = keys.add("k1")
    verifier = build_verifier(Settings(jwt_jwks_url=url), jwks_cooldown_seconds=1.0)
    try:
        assert await verifier.verify(token(first, "k1")) == "alice"
        await asyncio.sleep(1.1)
        keys.delay = 2.0
        keys.asked.clear()
        refresh = asyncio.create_task(verifier.verify(token(first, "k-new")))
        while not keys.asked.is_set():
            await asyncio.sleep(0.01)
        # Unknown kids that arrive meanwhile wait for the same fetch, they start none.
        joined = [asyncio.create_task(verifier.verify(token(first, f"k-{n}"))) for n in range(5)]
        for _ in range(20):  # a fresh token with a known kid: served during the fetch
            assert await verifier.verify(token(first, "k1")) == "alice"
        assert not refresh.done()
        for waiting in (refresh, *joined):
            with pytest.raises(Unauthorized, match="unknown kid"):
                await waiting
        assert keys.fetches == 2
        keys.delay = 0
        for n in range(20):  # a flood of made-up kids: one fetch per cooldown
            with pytest.raises(Unauthorized):
                await verifier.verify(token(first, f"made-up-{n}"))
        assert keys.fetches == 3
    finally:
        await verifier.close()


async def test_a_jwks_fetch_gives_up_after_its_timeout(jwks: tuple[str, Keys]) -> None:
    url, keys = jwks
    first = keys.add("k1")
    keys.delay = 3.0
    verifier = build_verifier(Settings(jwt_jwks_url=url), jwks_timeout_seconds=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(Unauthorized):
            await verifier.verify(token(first, "k1"))
        assert time.monotonic() - started < 2.0  # refused at the timeout, not the answer
    finally:
        await verifier.close()


async def test_a_slow_identity_provider_does_not_hold_up_other_requests(
    jwks: tuple[str, Keys], database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    url, keys = jwks
    private = keys.add("k1")
    keys.delay = 3.0
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    with run_anvil(chain_id=CHAIN_ID) as anvil:
        stack = await build_stack(anvil, database_url, softhsm_module)
        settings = replace(stack.settings, jwt_secret=None, jwt_jwks_url=url)
        async with in_process(settings) as (base, session):

            async def call(credential: str) -> int:
                headers = {"Authorization": f"Bearer {credential}"}
                async with session.post(base, json=body, headers=headers) as response:
                    return response.status

            waiting = asyncio.create_task(call(token(private, "k1")))  # first fetch: slow
            while not keys.asked.is_set():
                await asyncio.sleep(0.01)
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
            assert await call(stack.api_key) == 200
            assert not waiting.done(), "other requests waited for the JWKS fetch"
            assert await waiting == 200
