"""Ten users of one organisation send 30 transactions each, at once, from one account (issue 14):
through one `serve`, through two on one database, then with two nodes behind both. Every request
gets its own hash, the account's mined nonces are exactly 0..N-1, and every signature is low-s.

Each user keeps 3 of its transactions under way at a time (30 at once in all): within the default
QSIGNER_MAX_IN_FLIGHT (64) and its queue, so that none is refused for being too many.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.cli import Cli
from tests.support.faults import fronts_in_thread
from tests.support.forwarder import Forwarder
from tests.support.ledger import (
    RECIPIENT,
    Chain,
    Router,
    Team,
    call,
    eventually,
    ledger_rows,
    ledger_team,
    metric,
    mined,
    row_hash,
    run_load,
    settled,
    summary,
)
from tests.support.replicas import replicas

USERS, PER_USER, WINDOW = 10, 30, 3
N = USERS * PER_USER


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("ledger-load")) as built:
        yield built


@pytest.mark.parametrize(("serves", "nodes"), [(1, 1), (2, 1), (2, 2)],
                         ids=["one-serve", "two-serves", "two-serves-two-nodes"])  # fmt: skip
async def test_ten_users_one_account(team: Team, serves: int, nodes: int, tmp_path: Path) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    fronts = [Forwarder(team.node_url) for _ in range(nodes)] if nodes > 1 else []
    with fronts_in_thread(*fronts):
        upstreams = tuple(front.url for front in fronts) or (team.node_url,)
        with replicas(team.env(upstreams), serves, tmp_path) as group:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                requests = await run_load(
                    session,
                    team,
                    address,
                    Router(group.urls),
                    users=USERS,
                    per_user=PER_USER,
                    window=WINDOW,
                )
            answered = time.monotonic() - started
            assert len(requests) == N
            assert all(r.final.ok for r in requests), (summary(requests), group.problems())
            hashes = {r.hash for r in requests if r.hash}
            assert len(hashes) == N, "two requests were answered with one hash"

            waited = await mined(chain, hashes, timeout=30)
            met = await settled(chain, team.database_url, timeout=15)
            history = chain.check()  # nonces exactly 0..N-1, count N, every signature low-s
            assert len(history) == N
            assert {tx.hash for tx in history} == hashes
            by_hash = {tx.hash: tx for tx in history}
            # each request became the transaction it asked for (its tag is its value)
            assert all(by_hash[str(r.hash)].value == r.tag for r in requests)

            async def tracked() -> bool:  # the receipt poller marked each row mined
                rows = await ledger_rows(team.database_url, address)
                return sorted(str(row_hash(r)) for r in rows if r["state"] == "mined") == sorted(
                    hashes)  # fmt: skip

            marked = await eventually(tracked, 15, "ledger rows in state mined != mined hashes")

            # The bar: at most 2 database round trips per transaction, counted.
            async with aiohttp.ClientSession() as session:
                trips = [await metric(session, url, "qsigner_ledger_db_round_trips_total")
                         for url in group.urls]  # fmt: skip
                allocated = [await metric(session, url, "qsigner_ledger_nonces_total",
                                          event="allocated") for url in group.urls]  # fmt: skip
            assert sum(allocated) == N, allocated
            assert sum(trips) <= 2 * N, f"{sum(trips) / N:.2f} round trips per transaction"
        for secret in team.secrets():
            assert secret not in group.log_text(), "a secret reached the logs"
        if fronts:  # sender -> node affinity: one node gets all of the account's sends
            sends = [front.methods().count("eth_sendRawTransaction") for front in fronts]
            assert sorted(sends)[0] == 0, f"one account's sends went to both nodes: {sends}"
    print(
        f"{serves} serve(s), {nodes} node(s): {N} answered in {answered:.1f} s, "
        f"all mined {waited:.1f} s later, ledger met the chain {met:.1f} s later, rows marked "
        f"mined {marked:.1f} s later, {sum(trips) / N:.2f} database round trips each"
    )


async def test_beyond_the_in_flight_bound_refused_without_a_nonce(
    team: Team, tmp_path: Path
) -> None:
    """QSIGNER_MAX_IN_FLIGHT=4, and the node holds the account's sends unanswered for a moment:
    four under way, four more waiting, the other 16 of 24 refused at once with HTTP 429 /
    -32005; a refusal takes no nonce, so once the node answers the chain has no gap."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    node = Forwarder(team.node_url)
    node.held = {"eth_sendRawTransaction"}
    with fronts_in_thread(node), replicas(team.env((node.url,), MAX_IN_FLIGHT="4"), 1,
                                          tmp_path) as group:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            calls = [asyncio.create_task(call(
                session, group.urls[0], team.headers(team.users[i % USERS]),
                "eth_sendTransaction", [{"from": address, "to": RECIPIENT, "value": hex(i)}]))
                for i in range(1, 25)]  # fmt: skip
            await eventually(lambda: sum(task.done() for task in calls) >= 16, 8,
                             "the requests beyond the bound were not refused at once",
                             lambda: f"{sum(t.done() for t in calls)} answered, node holds "
                                     f"{node.holding}")  # fmt: skip
            held = node.holding
            node.release()
            replies = await asyncio.gather(*calls)
        refused = [reply for reply in replies if not reply.ok]
        for reply in refused:
            assert reply.status == 429 and reply.error is not None, reply.describe()
            assert reply.error["code"] == -32005, reply.describe()
        assert len(refused) == 16, [reply.describe() for reply in replies]
        accepted = {str(reply.result).lower() for reply in replies if reply.ok}
        await mined(chain, accepted, timeout=10)
        await settled(chain, team.database_url, timeout=10)
        assert {tx.hash for tx in chain.check()} == accepted
    print(
        f"in-flight bound 4: the node held {held}, {len(accepted)} of 24 taken, "
        f"{len(refused)} refused with 429"
    )


async def test_every_transaction_is_tracked(team: Team, tmp_path: Path) -> None:
    """`quorum-signer tx show HASH` and `tx list` print what the ledger knows: the request's own
    user, the nonce and block the chain has, state mined."""
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with replicas(team.env(), 2, tmp_path / "serve") as group:
        async with aiohttp.ClientSession() as session:
            requests = await run_load(session, team, address, Router(group.urls), users=3,
                                      per_user=4, window=2)  # fmt: skip
        assert all(r.final.ok for r in requests), summary(requests)
        hashes = {str(r.hash) for r in requests}
        await mined(chain, hashes, timeout=10)
        await settled(chain, team.database_url, timeout=10)

        async def tracked() -> bool:
            rows = await ledger_rows(team.database_url, address)
            return sum(row["state"] == "mined" for row in rows) == len(hashes)

        await eventually(tracked, 10, "ledger rows not marked mined")
    by_hash = {tx.hash: tx for tx in chain.check()}
    cli = Cli(team.env(), tmp_path)
    for request in requests[:3]:
        result = await asyncio.to_thread(cli.run, "tx", "show", str(request.hash))
        assert result.returncode == 0, result.stderr
        shown = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines()
                     if ": " in line)  # fmt: skip
        tx = by_hash[str(request.hash)]
        assert shown.get("hash", "").lower() == request.hash, shown
        assert shown.get("account", "").lower() == address.lower(), shown
        assert (shown.get("nonce"), shown.get("state"), shown.get("kind"), shown.get("user"),
                shown.get("block")) == (str(tx.nonce), "mined", "send", request.user,
                                        str(tx.block)), shown  # fmt: skip
    unknown = await asyncio.to_thread(cli.run, "tx", "show", "0x" + "ab" * 32)
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1, unknown

    listed = await asyncio.to_thread(cli.run, "tx", "list", "--account", address, "--state",
                                     "mined", "--limit", "5")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.strip().splitlines()]
    if lines and lines[0][0] == "nonce":  # a header line (the command's --help says so)
        assert lines.pop(0)[:5] == ["nonce", "state", "hash", "user", "created"], listed.stdout
    assert len(lines) == 5 and all(len(line) >= 5 for line in lines), listed.stdout
    assert all(line[1] == "mined" and line[2].lower() in hashes for line in lines), listed.stdout
    assert all(int(line[0]) == by_hash[line[2].lower()].nonce for line in lines), listed.stdout
    created = [line[4] for line in lines]
    assert created == sorted(created, reverse=True), "tx list is not newest first"
