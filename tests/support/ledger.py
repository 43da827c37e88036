"""For the nonce ledger's acceptance tests: one organisation whose many users share accounts
(`Team`), their transactions sent at once through the proxy (`run_load`), the chain read back
directly from the node (`Chain`), and the ledger's rows read from the database.

Every request carries its own `value` in wei (its tag), so that the transaction it became can be
found on chain: a request mined twice, or mined although it was refused, shows there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from proxy.settings import Settings
from signer.base import checksum
from signer.pkcs11 import Hsm, find_softhsm_module
from softhsm import write_config
from tests.support.anvil import rpc, run_anvil
from tests.support.checks import assert_signed_by
from tests.support.database import fresh_database
from tests.support.hsm import random_label
from tests.support.stack import CHAIN_ID, JWT_SECRET

ORGANISATION = "acme"
RECIPIENT = "0x000000000000000000000000000000000000bEEF"
FUNDS = 10**21
BLOCK_TIME = ("--block-time", "1")


@contextlib.contextmanager
def softhsm_environment(conf: Path) -> Iterator[None]:
    """SOFTHSM2_CONF for this process while the block runs (the module reads it when opened)."""
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


@dataclass
class Team:
    """An organisation whose users all sign with its accounts, on one token, one database and
    one anvil (`--block-time 1`), read by the test directly."""

    node_url: str
    database_url: str
    settings: Settings
    softhsm_conf: Path
    module: str
    users: tuple[str, ...]
    label: str
    pin: str = field(repr=False)
    password: str = field(repr=False)
    jwts: dict[str, str] = field(default_factory=dict, repr=False)

    def headers(self, user: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwts[user]}", "X-Signer-Password": self.password,
                **extra}  # fmt: skip

    def secrets(self) -> list[str]:
        return [self.password, self.pin, *self.jwts.values()]

    def env(self, upstreams: tuple[str, ...] = (), **settings: str) -> dict[str, str]:
        """The environment a user gives `serve` (QSIGNER_LISTEN is each replica's own);
        `settings` by variable name without the prefix, e.g. RESEND_SECONDS="3"."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
        env.update(
            QSIGNER_UPSTREAMS=",".join(upstreams or (self.node_url,)),
            QSIGNER_DATABASE_URL=self.database_url,
            QSIGNER_JWT_SECRET=JWT_SECRET,
            QSIGNER_PKCS11_MODULE=self.module,
            QSIGNER_LOG_FORMAT="json",
            SOFTHSM2_CONF=str(self.softhsm_conf),
        )
        env.update({f"QSIGNER_{name.upper()}": value for name, value in settings.items()})
        return env

    async def new_account(self, name: str | None = None) -> str:
        """A fresh account of the organisation (nonce 0 on chain, no ledger row), granted to
        every user and funded; one per test keeps a test's chain its own."""
        name = name or random_label("account")
        with softhsm_environment(self.softhsm_conf):
            pool = await store.connect(self.database_url, max_size=2)
            try:
                identity = Identity(pool, self.settings)
                with Hsm(self.module, sessions_per_token=1) as hsm:
                    account = await identity.create_account(ORGANISATION, hsm, self.label,
                                                            self.pin, name)  # fmt: skip
                for user in self.users:
                    await identity.grant_account(user, account.address)
            finally:
                await pool.close()
        address = checksum(account.address)
        rpc(self.node_url, "anvil_setBalance", [address, hex(FUNDS)])
        return address


async def _enrol(node_url: str, database_url: str, module: str, conf: Path,
                 users: int) -> Team:  # fmt: skip
    label, pin = random_label("ledger"), os.urandom(10).hex()
    password = "pw-" + os.urandom(6).hex()
    settings = Settings(upstreams=(node_url,), database_url=database_url, pkcs11_module=module,
                        jwt_secret=JWT_SECRET, pbkdf2_iterations=100_000)  # fmt: skip
    names = tuple(f"user{i}" for i in range(users))
    pool = await store.connect(database_url, max_size=4)
    try:
        await store.upgrade(pool)
        identity = Identity(pool, settings)
        with Hsm(module, sessions_per_token=1) as hsm:
            hsm.initialise_token(label, os.urandom(8).hex(), pin)
            await identity.create_organisation(ORGANISATION)
            # users are granted the organisation's accounts of the day; later ones by grant
            await identity.create_account(ORGANISATION, hsm, label, pin, "treasury")
            for user in names:
                await identity.add_user(ORGANISATION, user, "signer", hsm, pin, password)
    finally:
        await pool.close()
    team = Team(node_url, database_url, settings, conf, module, names, label, pin, password)
    team.jwts = {user: issue_token(settings, user, 3 * 3600) for user in names}
    return team


@contextlib.contextmanager
def ledger_team(server_dsn: str, directory: Path, users: int = 10) -> Iterator[Team]:
    """A team on its own anvil (`--block-time 1`), database (on `server_dsn`) and token."""
    module = find_softhsm_module()
    if module is None:
        pytest.fail("SoftHSM2 is not installed (apt-get install softhsm2; `make test` does it)")
    conf = write_config(directory / "softhsm")
    with run_anvil(chain_id=CHAIN_ID, extra=BLOCK_TIME) as node_url:
        with fresh_database(server_dsn) as database_url:
            with softhsm_environment(conf):
                team = asyncio.run(_enrol(node_url, database_url, module, conf, users))
            yield team


# --- calling the proxy ----------------------------------------------------------------------


@dataclass
class Reply:
    url: str
    status: int  # HTTP status; 0 when no answer came (connection refused or cut)
    result: Any
    error: dict[str, Any] | None
    started: float
    ended: float

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.result is not None

    def describe(self) -> str:
        return f"{self.url} HTTP {self.status}: {self.error if self.error else self.result}"


async def call(session: aiohttp.ClientSession, url: str, headers: dict[str, str], method: str,
               params: list[Any], timeout: float = 60) -> Reply:  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    started = time.monotonic()
    try:
        async with session.post(
            url + "/", json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            answer = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        return Reply(url, 0, None, {"message": f"no answer: {exc!r}"}, started, time.monotonic())
    error = answer.get("error") if isinstance(answer, dict) else None
    result = answer.get("result") if isinstance(answer, dict) else None
    return Reply(url, status, result, error, started, time.monotonic())


class Router:
    """What a load balancer does: round robin over the replicas it believes up."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = list(urls)
        self.down: set[str] = set()
        self._turn = 0

    def next(self) -> str:
        live = [url for url in self.urls if url not in self.down] or self.urls
        self._turn += 1
        return live[self._turn % len(live)]


@dataclass
class Request:
    """One user's eth_sendTransaction and every attempt it took (retries keep the key)."""

    user: str
    tag: int  # its value in wei
    key: str | None
    replies: list[Reply] = field(default_factory=list)

    @property
    def final(self) -> Reply:
        return self.replies[-1]

    @property
    def hash(self) -> str | None:
        return str(self.final.result).lower() if self.final.ok else None


TRANSIENT = frozenset({0, 429, 503})  # statuses a client retries (with the same key only)


async def send_one(session: aiohttp.ClientSession, team: Team, address: str, router: Router,
                   request: Request, *, retry_for: float = 0) -> Request:  # fmt: skip
    """Send the request; with an Idempotency-Key, retry a transient failure on the next replica
    for up to `retry_for` seconds, as a careful client does (without a key it never retries:
    a repeat could be a second transaction)."""
    tx = {"from": address, "to": RECIPIENT, "value": hex(request.tag)}
    extra = {"Idempotency-Key": request.key} if request.key else {}
    deadline = time.monotonic() + retry_for
    while True:
        url = router.next()
        reply = await call(session, url, team.headers(request.user, **extra),
                           "eth_sendTransaction", [tx])  # fmt: skip
        request.replies.append(reply)
        if reply.status == 0:
            router.down.add(url)
        if not (request.key and reply.status in TRANSIENT and time.monotonic() < deadline):
            return request
        await asyncio.sleep(0.25)


async def run_load(session: aiohttp.ClientSession, team: Team, address: str, router: Router, *,
                   users: int, per_user: int, window: int, first_tag: int = 1,
                   idempotent: bool = False, retry_for: float = 0,
                   pause: float = 0.0, keep_going: Callable[[], bool] | None = None,
                   done: list[Request] | None = None) -> list[Request]:  # fmt: skip
    """`users` users at once, each with up to `window` of its transactions under way, sending
    `per_user` transactions (or until `keep_going()` turns false). Tags are unique per call."""
    done = [] if done is None else done
    tags = iter(range(first_tag, first_tag + 10**6))

    async def one_user(user: str) -> None:
        turns = asyncio.Semaphore(window)

        async def one() -> None:
            async with turns:
                if keep_going is not None and not keep_going():
                    return
                tag = next(tags)
                key = f"{user}-{tag}-{os.urandom(4).hex()}" if idempotent else None
                done.append(await send_one(session, team, address, router, Request(user, tag, key),
                                           retry_for=retry_for))  # fmt: skip
                if pause:
                    await asyncio.sleep(pause)

        if keep_going is None:
            await asyncio.gather(*(one() for _ in range(per_user)))
        else:
            while keep_going():
                await asyncio.gather(*(one() for _ in range(window)))

    await asyncio.gather(*(one_user(user) for user in team.users[:users]))
    return done


def summary(requests: list[Request], limit: int = 5) -> str:
    """Final failures grouped by what came back, for assertion messages."""
    groups: dict[str, list[int]] = {}
    for request in requests:
        if not request.final.ok:
            reply = request.final
            what = f"HTTP {reply.status} {reply.error}"
            groups.setdefault(what, []).append(request.tag)
    return "; ".join(f"{len(tags)}x {what} (tags {tags[:limit]})" for what, tags in groups.items())


async def metric(session: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample `name` on /metrics over the series matching `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url + "/metrics") as response:
        assert response.status == 200, response.status
        text = await response.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v
                                              for k, v in labels.items()))  # fmt: skip


# --- the chain, read from the node itself -----------------------------------------------------


@dataclass(frozen=True)
class MinedTx:
    hash: str  # lowercase 0x-hex
    nonce: int
    to: str | None  # lowercase
    value: int
    block: int


class Chain:
    """The account's transactions as the node has them, and the strict checks on them."""

    def __init__(self, node_url: str, address: str) -> None:
        self.node_url = node_url
        self.address = address
        self._scanned = -1
        self._mined: dict[str, MinedTx] = {}
        self._checked: set[str] = set()

    def rpc(self, method: str, params: list[Any]) -> Any:
        return rpc(self.node_url, method, params)

    def count(self, block: str = "latest") -> int:
        return int(self.rpc("eth_getTransactionCount", [self.address, block]), 16)

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        answer = self.rpc("eth_getTransactionReceipt", [tx_hash])
        return dict(answer) if answer else None

    def history(self) -> list[MinedTx]:
        """Every mined transaction from the account, in nonce order (blocks read once)."""
        latest = int(self.rpc("eth_blockNumber", []), 16)
        mine = self.address.lower()
        for number in range(self._scanned + 1, latest + 1):
            block = self.rpc("eth_getBlockByNumber", [hex(number), True])
            for tx in block["transactions"]:
                if str(tx["from"]).lower() == mine:
                    to = str(tx["to"]).lower() if tx.get("to") else None
                    mined = MinedTx(str(tx["hash"]).lower(), int(tx["nonce"], 16), to,
                                    int(tx["value"], 16), number)  # fmt: skip
                    self._mined[mined.hash] = mined
            self._scanned = number
        return sorted(self._mined.values(), key=lambda tx: tx.nonce)

    def is_fill(self, tx: MinedTx) -> bool:
        """A hole filled by the proxy: a 0-value transfer to the account itself."""
        return tx.to == self.address.lower() and tx.value == 0

    def check(self, outside: set[str] | frozenset[str] = frozenset()) -> list[MinedTx]:
        """Mined nonces exactly 0..N-1 with N the node's count, and each signature low-s, with
        the network's chain id, recovering the account (but for the hashes in `outside`: sent
        by the node itself for an impersonated account, they carry no real signature)."""
        history = self.history()
        nonces = [tx.nonce for tx in history]
        assert nonces == list(range(len(history))), f"mined nonces are not 0..N-1: {nonces}"
        assert self.count() == len(history), (self.count(), len(history))
        sender = bytes.fromhex(self.address[2:])
        for tx in history:
            if tx.hash not in self._checked and tx.hash not in outside:
                raw = self.rpc("eth_getRawTransactionByHash", [tx.hash])
                checked = assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)
                assert "0x" + checked.hash.hex() == tx.hash
                self._checked.add(tx.hash)
        return history

    def impersonated_send(self, count: int) -> list[str]:
        """Transactions from the account sent on the node itself, outside the proxy."""
        self.rpc("anvil_impersonateAccount", [self.address])
        try:
            return [str(self.rpc("eth_sendTransaction", [{"from": self.address, "to": RECIPIENT,
                                                          "value": hex(10**9 + i)}])).lower()
                    for i in range(count)]  # fmt: skip
        finally:
            self.rpc("anvil_stopImpersonatingAccount", [self.address])


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float,
                     what: str, detail: Callable[[], str] | None = None) -> float:  # fmt: skip
    """Poll until `check` holds (it may be sync, run in a thread, or async); the seconds it
    took. Fails naming `what` (and `detail()`) when it does not hold within `timeout`."""
    started = time.monotonic()
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s" +
                                 (f"; {detail()}" if detail else ""))  # fmt: skip
        await asyncio.sleep(0.25)


async def mined(chain: Chain, hashes: set[str], timeout: float) -> float:
    """Wait until every hash has a receipt (status 1); the seconds it took."""
    waiting = set(hashes)

    def all_mined() -> bool:
        for tx_hash in list(waiting):
            receipt = chain.receipt(tx_hash)
            if receipt is not None:
                assert int(receipt["status"], 16) == 1, receipt
                waiting.discard(tx_hash)
        return not waiting

    return await eventually(lambda: asyncio.to_thread(all_mined), timeout,
                            "transactions answered with a hash were not all mined",
                            lambda: f"{len(waiting)} waiting, e.g. {sorted(waiting)[:3]}, "
                                    f"chain count {chain.count()}")  # fmt: skip


# --- the ledger, read from the database -------------------------------------------------------


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def ledger_rows(database_url: str, address: str) -> list[asyncpg.Record]:
    return await fetch(database_url, """SELECT nonce, state, kind, tx_hash FROM ledger_transactions
                                        WHERE account = $1 ORDER BY nonce, id""",
                       bytes.fromhex(address[2:]))  # fmt: skip


async def ledger_next_nonce(database_url: str, address: str) -> int | None:
    rows = await fetch(database_url, "SELECT next_nonce FROM ledger_accounts WHERE account = $1",
                       bytes.fromhex(address[2:]))  # fmt: skip
    return int(rows[0]["next_nonce"]) if rows else None


def row_hash(row: asyncpg.Record) -> str | None:
    value = row["tx_hash"]
    return "0x" + bytes(value).hex() if value is not None else None


async def settled(chain: Chain, database_url: str, timeout: float) -> float:
    """No gap left behind: every nonce the ledger handed out is mined (the node's count equals
    the ledger's next nonce) and nothing of the account waits in the node's pool."""

    async def check() -> bool:
        expected = await ledger_next_nonce(database_url, chain.address)
        latest, pending = await asyncio.to_thread(chain.count), await asyncio.to_thread(
            chain.count, "pending")  # fmt: skip
        return expected is not None and latest == expected == pending

    async def detail() -> str:
        return (f"ledger next nonce {await ledger_next_nonce(database_url, chain.address)}, "
                f"node latest {chain.count()}, pending {chain.count('pending')}")  # fmt: skip

    try:
        return await eventually(check, timeout, "the ledger and the chain did not meet")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {await detail()}") from None
