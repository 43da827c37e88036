"""What goes wrong after a nonce was handed out, and the account is never stuck behind it
(issue 14): a node that definitely rejects every 7th transaction, an HSM that fails every 7th
signature, a replica killed with SIGKILL mid-load, PostgreSQL restarted mid-load, someone
sending from the account outside the proxy, and a transaction signed by eth_signTransaction
that never appears. Each test has an account of its own on one shared chain, database and token.

"No gap" is read from the chain and the ledger together: every transaction answered with a hash
is mined, the node's count reaches the ledger's next nonce with nothing left in the node's pool,
the mined nonces are exactly 0..N-1, and each mined transaction is a request's own (found by its
value) or a 0-value self-transfer the proxy made to fill a hole.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from eth_hash.auto import keccak

from proxy.settings import Settings
from tests.support.database import OwnedServer, owned_postgres_server
from tests.support.faults import HsmFaults, RejectingForwarder, fronts_in_thread, in_process_app
from tests.support.forwarder import Forwarder
from tests.support.ledger import (
    RECIPIENT,
    Chain,
    Reply,
    Request,
    Router,
    Team,
    call,
    eventually,
    fetch,
    ledger_next_nonce,
    ledger_rows,
    ledger_team,
    mined,
    row_hash,
    run_load,
    settled,
    summary,
)
from tests.support.replicas import Replica, Replicas, replicas

LAST_TAG = 999_999


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("ledger-faults")) as built:
        yield built


async def send(session: aiohttp.ClientSession, url: str, team: Team, address: str,
               value: int, user: str = "user0") -> Reply:  # fmt: skip
    tx = {"from": address, "to": RECIPIENT, "value": hex(value)}
    return await call(session, url, team.headers(user), "eth_sendTransaction", [tx])


async def not_stuck(session: aiohttp.ClientSession, url: str, team: Team, chain: Chain,
                    requests: list[Request]) -> float:  # fmt: skip
    """A last transaction is accepted and mined within a few seconds: nothing holds it back.
    It joins `requests`, to be accounted for with them."""
    reply = await send(session, url, team, chain.address, LAST_TAG)
    requests.append(Request("user0", LAST_TAG, None, [reply]))
    assert reply.ok, reply.describe()
    return await mined(chain, {str(reply.result).lower()}, timeout=6)


def named_hash(reply: Reply) -> str | None:
    """The transaction an error names (an unknown outcome: it may yet be mined), if any."""
    found = re.findall(r"0x[0-9a-fA-F]{64}", str((reply.error or {}).get("message", "")))
    return found[0].lower() if found and not reply.ok else None


def accounted_for(chain: Chain, requests: list[Request], outside: frozenset[str] = frozenset()
                  ) -> tuple[int, int]:  # fmt: skip
    """The chain holds exactly the accepted requests (once each), fills, and `outside`;
    nonces 0..N-1, all signatures checked. A request refused with an unknown outcome naming
    its transaction may be mined, once, as that transaction; any other refused request never.
    Returns (accepted, fills)."""
    history = chain.check(outside)
    accepted = {str(r.hash): r for r in requests if r.hash}
    unknown = {str(named_hash(r.final)): r for r in requests if named_hash(r.final)}
    refused_tags = {r.tag for r in requests if not r.final.ok and not named_hash(r.final)}
    fills = [tx for tx in history if chain.is_fill(tx)]
    requested = [tx for tx in history if tx.hash not in outside and not chain.is_fill(tx)]
    tags = Counter(tx.value for tx in requested)
    assert all(n == 1 for n in tags.values()), f"a request was mined twice: {tags.most_common(3)}"
    assert not refused_tags & set(tags), (
        f"refused requests were mined all the same: tags {sorted(refused_tags & set(tags))}"
    )
    explained = {**unknown, **accepted}
    unexplained = [tx for tx in requested if tx.hash not in explained]
    assert not unexplained, f"mined, but no caller was answered with it: {unexplained[:3]}"
    assert all(explained[tx.hash].tag == tx.value for tx in requested)
    late = [tx for tx in requested if tx.hash in unknown]
    assert len(history) == len(accepted) + len(late) + len(fills) + len(outside)
    return len(accepted), len(fills)


async def test_a_node_rejects_every_seventh_transaction(team: Team, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    node = RejectingForwarder(team.node_url, every=7, fills=1)
    with fronts_in_thread(node), replicas(team.env((node.url,)), 1, tmp_path) as group:
        async with aiohttp.ClientSession() as session:
            requests = await run_load(session, team, address, Router(group.urls), users=5,
                                      per_user=14, window=2)  # fmt: skip
            refused = [r for r in requests if not r.final.ok]
            assert refused, "no request was refused: the fault was not exercised"
            for request in refused:  # the node's own error, passed on unchanged
                reply = request.final
                assert reply.status == 200 and reply.error is not None, reply.describe()
                assert reply.error["code"] == -32000, (reply.describe(), summary(requests))
                assert "intrinsic gas too low" in reply.error["message"], reply.describe()
            accepted = {str(r.hash) for r in requests if r.hash}
            await mined(chain, accepted, timeout=20)
            waited = await settled(chain, team.database_url, timeout=20)
            node.every = 0  # the last transaction is not the one the node refuses
            took = await not_stuck(session, group.urls[0], team, chain, requests)
        await settled(chain, team.database_url, timeout=10)
        n_accepted, fills = accounted_for(chain, requests)
        # what the node turned away reached the chain only as the proxy's own fill, resent
        turned_away = [tx for tx in chain.history() if tx.hash in set(node.rejected)]
        assert all(chain.is_fill(tx) for tx in turned_away), turned_away
    print(
        f"node rejections: {len(node.rejected)} sends rejected ({len(node.rejected_fills)} "
        f"fills), {len(refused)} requests "
        f"refused, {n_accepted} accepted, {fills} fills; settled {waited:.1f} s, last tx "
        f"mined in {took:.1f} s"
    )


async def test_the_hsm_fails_every_seventh_signature(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    monkeypatch.setenv("SOFTHSM2_CONF", str(team.softhsm_conf))
    faults = HsmFaults(every=7)
    async with in_process_app(Settings.from_env(team.env())) as (url, app):
        faults.install(app)
        async with aiohttp.ClientSession() as session:
            requests = await run_load(session, team, address, Router([url]), users=5,
                                      per_user=14, window=2)  # fmt: skip
            refused = [r for r in requests if not r.final.ok]
            assert refused and faults.failed, "no request was refused: the fault was not exercised"
            for request in refused:
                reply = request.final
                assert reply.status == 200 and reply.error is not None, reply.describe()
                assert reply.error["code"] == -32603, (reply.describe(), summary(requests))
                assert "HSM" in reply.error["message"], reply.describe()
            accepted = {str(r.hash) for r in requests if r.hash}
            await mined(chain, accepted, timeout=20)
            waited = await settled(chain, team.database_url, timeout=20)
            faults.every = 0  # the last transaction is not the one the HSM fails
            took = await not_stuck(session, url, team, chain, requests)
            await settled(chain, team.database_url, timeout=10)
    n_accepted, fills = accounted_for(chain, requests)
    print(
        f"HSM faults: {faults.failed} of {faults.signatures} signatures failed, {len(refused)} "
        f"requests refused, {n_accepted} accepted, {fills} fills; settled {waited:.1f} s, "
        f"last tx mined in {took:.1f} s"
    )


async def test_a_signature_stuck_past_the_resend_time(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One HSM call hangs after its nonce was reserved (a replica paused mid-request): after
    QSIGNER_RESEND_SECONDS recovery gives that nonce up and fills it, so the transactions above
    it are mined; when the call finally returns, the request sends nothing (its nonce is gone)
    and says so."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    monkeypatch.setenv("SOFTHSM2_CONF", str(team.softhsm_conf))
    faults = HsmFaults(every=0, hang_at=5)
    async with in_process_app(Settings.from_env(team.env(RESEND_SECONDS="2"))) as (url, app):
        faults.install(app)
        async with aiohttp.ClientSession() as session:
            requests: list[Request] = []
            load = asyncio.create_task(run_load(session, team, address, Router([url]), users=2,
                                                per_user=8, window=2, done=requests))  # fmt: skip
            await asyncio.wait_for(faults.hanging.wait(), 10)
            await load_without(load, requests, 15)
            others = {str(r.hash) for r in requests if r.hash}
            assert len(others) == 15, summary(requests)
            waited = await mined(chain, others, timeout=15)  # the hole below them was filled
            faults.unhang()
            await load
            (stuck,) = [r for r in requests if not r.final.ok]
            reply = stuck.final
            assert reply.status == 200 and reply.error is not None, reply.describe()
            assert reply.error["code"] == -32603, reply.describe()
            await settled(chain, team.database_url, timeout=10)
            took = await not_stuck(session, url, team, chain, requests)
            await settled(chain, team.database_url, timeout=10)
    _, fills = accounted_for(chain, requests)
    assert fills == 1
    print(
        f"stuck signature: the rest mined {waited:.1f} s after, the stuck request got "
        f"{reply.error}; last tx mined in {took:.1f} s"
    )


async def load_without(load: asyncio.Task[list[Request]], requests: list[Request],
                       count: int) -> None:  # fmt: skip
    """Wait until `count` requests are answered while one hangs."""
    await eventually(lambda: len(requests) >= count, 20, f"{count} answers while one hangs",
                     lambda: summary(requests))  # fmt: skip
    assert not load.done()


async def test_the_accounts_node_swallows_sends_then_fails(team: Team, tmp_path: Path) -> None:
    """Sender -> node affinity, then failover: the node the account's sends go to starts holding
    them without an answer (they never reach the chain), then fails as a whole. Those callers
    get -32002 naming the hash (the outcome is unknown to the proxy); the proxy keeps those
    nonces and sends the same bytes to the other node, in nonce order, so every hash any caller
    was given is mined and nothing is mined twice."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    fronts = (Forwarder(team.node_url), Forwarder(team.node_url))
    env = team.env(tuple(front.url for front in fronts), READ_TIMEOUT="2", RESEND_SECONDS="3")
    with fronts_in_thread(*fronts), replicas(env, 1, tmp_path) as group:
        requests: list[Request] = []
        async with aiohttp.ClientSession() as session:
            load = asyncio.create_task(run_load(session, team, address, Router(group.urls),
                                                users=4, per_user=25, window=2, pause=0.02,
                                                done=requests))  # fmt: skip
            await eventually(lambda: len(requests) >= 20, 20, "no answers")
            sends = [front.methods().count("eth_sendRawTransaction") for front in fronts]
            assert sorted(sends)[0] == 0, f"one account's sends went to both nodes: {sends}"
            node = fronts[sends.index(max(sends))]
            node.held = {"eth_sendRawTransaction"}
            await eventually(lambda: node.holding >= 3, 10, "no send was held")
            node.mode = "bad_gateway"  # what it holds stays held: never reaches the chain
            swallowed = node.holding
            await load
        given: dict[str, Request] = {}
        for request in requests:
            reply = request.final
            if reply.ok:
                given[str(reply.result).lower()] = request
                continue
            assert reply.status == 503 and reply.error is not None, reply.describe()
            assert reply.error["code"] == -32002, reply.describe()
            named = re.findall(r"0x[0-9a-fA-F]{64}", str(reply.error["message"]))
            assert named, f"an unknown outcome must name the transaction: {reply.describe()}"
            given[named[0].lower()] = request
        unknown = len(requests) - sum(r.final.ok for r in requests)
        waited = await mined(chain, set(given), timeout=20)
        await settled(chain, team.database_url, timeout=15)
    history = chain.check()
    fills = [tx for tx in history if chain.is_fill(tx)]
    assert {tx.hash for tx in history if not chain.is_fill(tx)} == set(given)
    assert all(given[tx.hash].tag == tx.value for tx in history if tx.hash in given)
    assert len(history) == len(given) + len(fills)
    print(
        f"node swallowed {swallowed} sends and failed: {unknown} callers told -32002 with the "
        f"hash, all mined {waited:.1f} s after the load, {len(fills)} fills"
    )


async def lease_holder(team: Team, address: str, group: Replicas) -> Replica | None:
    """The replica holding the account's recovery lease (its owner names the process id)."""
    rows = await fetch(team.database_url, "SELECT lease_owner FROM ledger_accounts "
                       "WHERE account = $1", bytes.fromhex(address[2:]))  # fmt: skip
    owner = str(rows[0]["lease_owner"]) if rows and rows[0]["lease_owner"] else ""
    for member in group.members:
        if member.process is not None and f":{member.process.pid}:" in owner:
            return member
    return None


@pytest.mark.parametrize("victim_is", ["lease-holder", "other", "mid-send"])
async def test_a_replica_killed_mid_load_then_restarted(team: Team, tmp_path: Path,
                                                        victim_is: str) -> None:  # fmt: skip
    """Clients send with an Idempotency-Key and, like a careful client behind a load balancer,
    repeat a request that got no answer on the other replica; recovery runs with
    QSIGNER_RESEND_SECONDS=3 so that what the dead replica left behind is dealt with quickly.
    The replica killed holds the account's recovery lease, or does not, or (mid-send) has
    stored transactions whose sends its node holds unanswered: they never reach the chain
    from it, and must be sent again from the stored bytes. Each replica has a node of its own
    (two forwarders in front of the one chain)."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    fronts = [Forwarder(team.node_url), Forwarder(team.node_url)]
    own = [{"QSIGNER_UPSTREAMS": front.url} for front in fronts]
    with fronts_in_thread(*fronts), replicas(team.env(RESEND_SECONDS="3"), 2, tmp_path,
                                             own) as group:  # fmt: skip
        router = Router(group.urls)
        requests: list[Request] = []
        async with aiohttp.ClientSession() as session:
            running = True  # the load goes on until the victim is back, and a while after
            load = asyncio.create_task(run_load(
                session, team, address, router, users=6, per_user=0, window=2, pause=0.05,
                idempotent=True, retry_for=45, keep_going=lambda: running,
                done=requests))  # fmt: skip
            holders: list[Replica] = []

            async def lease_taken() -> bool:
                holder = await lease_holder(team, address, group)
                holders[:] = [holder] if holder else []
                return bool(holder) and len(requests) >= 20

            await eventually(lease_taken, 20, "no replica took the account's recovery lease")
            (holder,) = holders
            victim = holder if victim_is == "lease-holder" else group[1 - holder.index]
            held = 0
            if victim_is == "mid-send":
                front = fronts[victim.index]
                front.held = {"eth_sendRawTransaction"}
                await eventually(lambda: front.holding >= 2, 10, "no send was held")
                held = front.holding
            await asyncio.to_thread(victim.kill)
            fronts[victim.index].held = set()  # what it holds now never reaches the chain
            killed_at = time.monotonic()
            await asyncio.sleep(2)
            await asyncio.to_thread(victim.restart)
            router.down.discard(victim.url)
            restarted = time.monotonic() - killed_at
            await asyncio.sleep(2)
            running = False
            await load
            cut = [r for r in requests if any(reply.status == 0 for reply in r.replies)]
            assert all(r.final.ok for r in requests), (summary(requests), group.problems())
            hashes = [str(r.hash) for r in requests]
            assert len(set(hashes)) == len(hashes), "two requests were answered with one hash"
            await mined(chain, set(hashes), timeout=30)
            waited = await settled(chain, team.database_url, timeout=30)
            took = await not_stuck(session, group.urls[0], team, chain, requests)
        await settled(chain, team.database_url, timeout=10)
        _, fills = accounted_for(chain, requests)

        # no transaction sent twice: every mined transaction is exactly one ledger row
        history = chain.history()
        rows = await ledger_rows(team.database_url, address)
        by_hash = Counter(row_hash(row) for row in rows if row["tx_hash"] is not None)
        assert all(by_hash[tx.hash] == 1 for tx in history), [
            (tx.nonce, tx.hash, by_hash[tx.hash]) for tx in history if by_hash[tx.hash] != 1
        ][:5]

        async def tracked() -> bool:
            rows = await ledger_rows(team.database_url, address)
            return sum(row["state"] == "mined" for row in rows) == len(history) == chain.count()

        await eventually(tracked, 15, "ledger rows in state mined != transactions mined")
    print(
        f"kill -9 ({victim_is}): {held} sends held, {len(cut)} requests cut and repeated, "
        "replica back in "
        f"{restarted:.1f} s, "
        f"{fills} fills, settled {waited:.1f} s, last tx mined in {took:.1f} s"
    )


@pytest.fixture
def owned(tmp_path: Path) -> Iterator[tuple[OwnedServer, Team]]:
    """A PostgreSQL server of the test's own, which it stops and starts, and a team on it."""
    with owned_postgres_server() as server:
        with ledger_team(server.dsn, tmp_path / "team", users=4) as team:
            yield server, team


async def test_postgres_restarted_mid_load(owned: tuple[OwnedServer, Team], tmp_path: Path) -> None:
    server, team = owned
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    env = team.env(DATABASE_TIMEOUT="1", RESEND_SECONDS="3")
    with replicas(env, 1, tmp_path / "serve") as group:
        requests: list[Request] = []
        running = True
        async with aiohttp.ClientSession() as session:
            load = asyncio.create_task(run_load(
                session, team, address, Router(group.urls), users=4, per_user=0, window=1,
                pause=0.05, keep_going=lambda: running, done=requests))  # fmt: skip
            try:
                await asyncio.sleep(2)
                await asyncio.to_thread(server.stop)
                stopped_at = time.monotonic()
                await asyncio.sleep(3)
                restarting_at = time.monotonic()
                await asyncio.to_thread(server.start)
                recovery = await eventually(
                    lambda: any(r.final.ok and r.final.started > restarting_at
                                for r in requests), 30, "no transaction accepted after the "
                    "restart", lambda: summary(requests[-10:]))  # fmt: skip
                recovered_at = time.monotonic()
                await asyncio.sleep(2)
            finally:
                running = False
                await load

            def unavailable(reply: Reply) -> bool:
                """503 "database unavailable" (-32603), or, when the signed bytes may have been
                stored as the database went, an unknown outcome (-32002) that names the
                transaction and says that the database is the cause."""
                if reply.status != 503 or reply.error is None:
                    return False
                message = str(reply.error.get("message"))
                if reply.error.get("code") == -32603:
                    return "database unavailable" in message
                return (reply.error.get("code") == -32002 and named_hash(reply) is not None
                        and "database" in message)  # fmt: skip

            while_down = [
                r
                for r in requests
                if r.final.started >= stopped_at and r.final.ended < restarting_at
            ]
            assert len(while_down) >= 4, "no request was made while the database was down"
            assert all(unavailable(r.final) for r in while_down), summary(while_down)
            unclear = [r for r in requests if not r.final.ok and not unavailable(r.final)]
            assert not unclear, summary(unclear)
            after = [r for r in requests if r.final.started >= recovered_at]
            assert after and all(r.final.ok for r in after), summary(after)

            accepted = {str(r.hash) for r in requests if r.hash}
            await mined(chain, accepted, timeout=20)
            waited = await settled(chain, team.database_url, timeout=30)
            took = await not_stuck(session, group.urls[0], team, chain, requests)
        await settled(chain, team.database_url, timeout=10)
        n_accepted, fills = accounted_for(chain, requests)
    print(
        f"PostgreSQL restart: {len(while_down)} clear refusals while down, back {recovery:.1f} "
        f"s after the start, {n_accepted} accepted, {fills} fills, settled {waited:.1f} s, "
        f"last tx mined in {took:.1f} s"
    )


async def test_sent_from_outside_the_proxy_then_the_ledger_fast_forwards(
    team: Team, tmp_path: Path
) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(), 1, tmp_path) as group:
        url = group.urls[0]
        async with aiohttp.ClientSession() as session:
            first = [await send(session, url, team, address, value) for value in (1, 2, 3)]
            assert all(reply.ok for reply in first), [reply.describe() for reply in first]
            await mined(chain, {str(reply.result).lower() for reply in first}, timeout=10)

            # Someone sends twice from the account on the node itself: the chain runs ahead.
            outside = await asyncio.to_thread(chain.impersonated_send, 2)
            await mined(chain, set(outside), timeout=10)
            assert chain.count() == 5

            count = await call(session, url, team.headers("user1"), "eth_getTransactionCount",
                               [address, "pending"])  # fmt: skip
            assert count.ok and int(count.result, 16) == 5, count.describe()
            reply = await send(session, url, team, address, 4, user="user1")
            assert reply.ok, (reply.describe(), group.problems())
            took = await mined(chain, {str(reply.result).lower()}, timeout=6)
            assert chain.history()[-1].nonce == 5
        await settled(chain, team.database_url, timeout=10)
        chain.check(frozenset(outside))
        assert await ledger_next_nonce(team.database_url, address) == 6
    print(f"fast-forward: the next proxy transaction mined in {took:.1f} s")


async def test_signed_but_never_sent_is_filled(team: Team, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(SIGNED_TX_TIMEOUT="3"), 1, tmp_path) as group:
        url = group.urls[0]
        headers = team.headers("user2")
        async with aiohttp.ClientSession() as session:

            async def sign(value: int) -> tuple[str, int]:
                tx = {"from": address, "to": RECIPIENT, "value": hex(value)}
                reply = await call(session, url, headers, "eth_signTransaction", [tx])
                assert reply.ok, reply.describe()
                return reply.result["raw"], int(reply.result["tx"]["nonce"], 16)

            # Signed, then sent by the caller: the reservation is reconciled, nothing filled.
            raw, nonce = await sign(1)
            assert nonce == 0
            sent = await call(session, url, headers, "eth_sendRawTransaction", [raw])
            assert sent.ok, sent.describe()
            assert str(sent.result).lower() == "0x" + keccak(bytes.fromhex(raw[2:])).hex()
            await mined(chain, {str(sent.result).lower()}, timeout=10)

            # Signed, never sent: its nonce is reserved, and the pending count says so.
            kept, nonce = await sign(2)
            assert nonce == 1
            count = await call(session, url, headers, "eth_getTransactionCount",
                               [address, "pending"])  # fmt: skip
            assert count.ok and int(count.result, 16) == 2, count.describe()
            after = await send(session, url, team, address, 3, user="user3")
            assert after.ok, after.describe()
            started = time.monotonic()
            # The hole at nonce 1 is filled once QSIGNER_SIGNED_TX_TIMEOUT has passed.
            await mined(chain, {str(after.result).lower()}, timeout=30)
            took = time.monotonic() - started
        history = chain.check()
        assert [tx.nonce for tx in history] == [0, 1, 2]
        assert chain.is_fill(history[1]), history[1]
        assert history[1].hash != "0x" + keccak(bytes.fromhex(kept[2:])).hex()
        assert history[2].hash == str(after.result).lower()
        await settled(chain, team.database_url, timeout=10)

        kinds: set[tuple[int, str, str]] = set()

        async def tracked() -> bool:
            rows = await ledger_rows(team.database_url, address)
            kinds.clear()
            kinds.update((row["nonce"], row["kind"], row["state"]) for row in rows)
            return {(0, "sign", "mined"), (1, "fill", "mined"), (2, "send", "mined")} <= kinds

        await eventually(
            tracked,
            10,
            "ledger rows: nonce 0 signed and mined, 1 filled, 2 sent",
            lambda: f"(nonce, kind, state) seen: {sorted(kinds)}",
        )
    print(f"signed, never sent: the next transaction mined {took:.1f} s after it was accepted")


async def test_signed_then_sent_elsewhere_is_reconciled(team: Team, tmp_path: Path) -> None:
    """Bytes from eth_signTransaction sent straight to a node, not through the proxy: once mined,
    the reservation is theirs (never filled, even after QSIGNER_SIGNED_TX_TIMEOUT)."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(SIGNED_TX_TIMEOUT="3"), 1, tmp_path) as group:
        url = group.urls[0]
        headers = team.headers("user4")
        async with aiohttp.ClientSession() as session:
            signed = await call(session, url, headers, "eth_signTransaction",
                                [{"from": address, "to": RECIPIENT, "value": hex(41)}])  # fmt: skip
            assert signed.ok, signed.describe()
            raw = str(signed.result["raw"])
            tx_hash = await asyncio.to_thread(chain.rpc, "eth_sendRawTransaction", [raw])
            assert str(tx_hash).lower() == "0x" + keccak(bytes.fromhex(raw[2:])).hex()
            await mined(chain, {str(tx_hash).lower()}, timeout=10)
            await asyncio.sleep(4.5)  # past QSIGNER_SIGNED_TX_TIMEOUT, and a recovery tick
            after = await send(session, url, team, address, 42, user="user4")
            assert after.ok, after.describe()
            await mined(chain, {str(after.result).lower()}, timeout=6)
        await settled(chain, team.database_url, timeout=10)
        history = chain.check()
        assert [tx.hash for tx in history] == [str(tx_hash).lower(), str(after.result).lower()]
        rows = await ledger_rows(team.database_url, address)
        assert not [row for row in rows if row["kind"] == "fill"], rows
        live = {(row["nonce"], row["kind"]) for row in rows
                if row["state"] not in ("released", "replaced")}  # fmt: skip
        assert live == {(0, "sign"), (1, "send")}, rows


@pytest.fixture
def own_chain(postgres: str, tmp_path: Path) -> Iterator[Team]:
    """A team with a chain and database of its own, for a test that turns the chain back."""
    with ledger_team(postgres, tmp_path / "team", users=2) as built:
        yield built


async def test_the_node_is_reset_behind_the_ledger(own_chain: Team, tmp_path: Path) -> None:
    """A dev chain reset under the proxy (anvil's evm_revert to before the account's first
    transactions): the ledger is ahead of the chain (issue 14's recovery: "rewinds or fills when
    the ledger is ahead of the chain (a node reset)"), so that the account's next transaction
    is mined."""
    team = own_chain
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    snapshot = await asyncio.to_thread(chain.rpc, "evm_snapshot", [])
    with replicas(team.env(RESEND_SECONDS="2"), 1, tmp_path / "serve") as group:
        url = group.urls[0]
        async with aiohttp.ClientSession() as session:
            first = [await send(session, url, team, address, value) for value in (1, 2, 3)]
            assert all(reply.ok for reply in first), [reply.describe() for reply in first]
            await mined(chain, {str(reply.result).lower() for reply in first}, timeout=10)
            await asyncio.sleep(1.5)  # the ledger marks them mined
            assert await asyncio.to_thread(chain.rpc, "evm_revert", [snapshot])
            assert chain.count() == 0
            after = await send(session, url, team, address, 4)
            assert after.ok, after.describe()
            try:
                took = await mined(chain, {str(after.result).lower()}, timeout=15)
            except AssertionError as exc:
                rows = await ledger_rows(team.database_url, address)
                seen = [(row["nonce"], row["state"], row["kind"]) for row in rows]
                next_nonce = await ledger_next_nonce(team.database_url, address)
                raise AssertionError(
                    f"{exc}; ledger rows {seen}, next nonce {next_nonce}, node "
                    f"count {chain.count()}"
                ) from None
        await settled(chain, team.database_url, timeout=10)
    chain = Chain(team.node_url, address)  # the blocks read before the reset are gone
    history = chain.check()
    assert history[-1].hash == str(after.result).lower()
    print(
        f"node reset: the next transaction mined in {took:.1f} s, at nonce "
        f"{history[-1].nonce} ({len(history) - 1} before it)"
    )
