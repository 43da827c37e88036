"""Webhooks (`quorum-signer webhook add/list/remove`): an organisation's transaction events POSTed
to a receiver, signed, at least once. Real `serve` replicas (processes, as users start them) on
one PostgreSQL, SoftHSM and anvil (`--block-time 1`); a node in front that definitely rejects
some transactions, for `failed` events; the receiver is the test's own HTTP server, checking
each signature as docs/events.md tells receivers to.

What a user relies on: every event of their transactions arrives, with a valid signature; two
replicas deliver each event once; a receiver that was down gets what it missed, in order."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.cli import Cli, make_cli, query
from tests.support.faults import RejectingForwarder, fronts_in_thread
from tests.support.ledger import (
    ORGANISATION,
    Chain,
    Router,
    Team,
    eventually,
    fetch,
    ledger_team,
    mined,
    run_load,
)
from tests.support.replicas import replicas
from tests.support.webhooks import Receiver


@pytest.fixture(scope="module")
def team(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    with ledger_team(postgres, tmp_path_factory.mktemp("webhooks"), users=4) as built:
        yield built


@pytest.fixture
def cli(team: Team, tmp_path: Path) -> Cli:
    return make_cli(team.database_url, team.softhsm_conf, tmp_path)


def add_webhook(cli: Cli, receiver: Receiver, *events: str) -> str:
    """`webhook add` as a user runs it: the secret alone on the last stdout line, the id on
    stderr. Returns the id; the receiver keeps the secret."""
    args = ["webhook", "add", "--org", ORGANISATION, receiver.url]
    if events:
        args += ["--events", ",".join(events)]
    result = cli.run(*args)
    assert result.returncode == 0, result.stderr
    receiver.secret = result.stdout.strip().splitlines()[-1]
    assert receiver.secret.startswith("whsec_") and len(receiver.secret) > 40
    (webhook_id,) = [line.split(": ", 1)[1] for line in result.stderr.splitlines()
                     if line.startswith("webhook id: ")]  # fmt: skip
    assert receiver.secret not in result.stderr and "not-shown" not in result.stderr
    return webhook_id


def lifecycle(events: list[dict[str, object]]) -> dict[str, list[str]]:
    """Each transaction's events, in the order they arrived."""
    by_hash: dict[str, list[str]] = {}
    for event in events:
        by_hash.setdefault(str(event["transactionHash"]), []).append(str(event["event"]))
    return by_hash


async def ledger_events(team: Team, address: str, *kinds: str) -> set[str]:
    rows = await fetch(team.database_url,
                 "SELECT id FROM ledger_events WHERE account = $1 AND event = ANY($2::text[])",
                 bytes.fromhex(address[2:]), list(kinds))  # fmt: skip
    return {str(r["id"]) for r in rows}


async def test_two_replicas_deliver_every_event_once_signed(team: Team, cli: Cli,
                                                            tmp_path: Path) -> None:  # fmt: skip
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    node = RejectingForwarder(team.node_url, every=6)
    with Receiver().running() as receiver, fronts_in_thread(node):
        webhook_id = add_webhook(cli, receiver)
        with replicas(team.env((node.url,)), 2, tmp_path) as group:
            async with aiohttp.ClientSession() as session:
                requests = await run_load(session, team, address, Router(group.urls), users=4,
                                          per_user=10, window=2)  # fmt: skip
                accepted = {str(r.hash) for r in requests if r.hash}
                await mined(chain, accepted, timeout=30)
                assert node.rejected, "no transaction was refused: no failed event to see"

                def everything_arrived() -> bool:
                    arrived = lifecycle(receiver.events(address))
                    return all(arrived.get(h, [])[-1:] == ["mined"] for h in accepted) and all(
                        "failed" in arrived.get(h, []) for h in node.rejected
                    )

                await eventually(everything_arrived, 30, "every event delivered",
                                 lambda: f"{len(receiver.received())} deliveries")  # fmt: skip
        cli.ok("webhook", "remove", webhook_id)

    deliveries = [d for d in receiver.received() if d.event["account"] == address]
    assert all(d.genuine for d in deliveries), "a delivery whose signature does not check"
    assert all(d.event_id_header == d.event["id"] for d in deliveries)
    assert receiver.duplicates() == 0
    arrived = lifecycle([d.event for d in deliveries])
    for tx_hash in accepted:  # each in order, mined with the chain's own status
        assert arrived[tx_hash] == ["queued", "sent", "mined"], (tx_hash, arrived[tx_hash])
    statuses = {d.event["receiptStatus"] for d in deliveries if d.event["event"] == "mined"}
    assert statuses == {"0x1"}
    for tx_hash in node.rejected:
        assert arrived[tx_hash] == ["queued", "failed"], (tx_hash, arrived[tx_hash])
    failed = [d.event for d in deliveries if d.event["event"] == "failed"]
    assert all("intrinsic gas too low" in str(e["reason"]) for e in failed)
    # Nothing lost: every event the ledger wrote for the account was delivered.
    assert {d.event["id"] for d in deliveries} == await ledger_events(
        team, address, "queued", "sent", "mined", "failed", "filled"
    )
    delays = sorted(d.delay for d in deliveries)
    print(f"webhooks, two replicas: {len(deliveries)} events of {len(accepted)} mined and "
          f"{len(node.rejected)} refused transactions delivered, 0 duplicates; time to "
          f"delivery p50 {statistics.median(delays) * 1000:.0f} ms, "
          f"p99 {delays[int(0.99 * (len(delays) - 1))] * 1000:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms")  # fmt: skip


async def test_a_receiver_that_was_down_gets_what_it_missed_in_order(
    team: Team, cli: Cli, tmp_path: Path
) -> None:
    address = await team.new_account()
    chain = Chain(team.node_url, address)
    with Receiver().running() as receiver:
        webhook_id = add_webhook(cli, receiver, "mined", "failed")
        with replicas(team.env(WEBHOOK_RETRY_MAX="1"), 1, tmp_path) as group:
            async with aiohttp.ClientSession() as session:
                first = await run_load(session, team, address, Router(group.urls), users=1,
                                       per_user=3, window=1)  # fmt: skip
                first_hashes = {str(r.hash) for r in first if r.hash}
                await eventually(lambda: set(lifecycle(receiver.events(address))) >= first_hashes,
                                 20, "the first events delivered")  # fmt: skip

                receiver.down()
                missed = await run_load(session, team, address, Router(group.urls), users=2,
                                        per_user=5, window=2, first_tag=100)  # fmt: skip
                missed_hashes = {str(r.hash) for r in missed if r.hash}
                await mined(chain, missed_hashes, timeout=30)
                listing = cli.ok("webhook", "list", "--org", ORGANISATION)
                assert listing.startswith(webhook_id) and "failing" in listing, listing
                assert "not-shown" not in listing and "/hooks" not in listing  # host only
                while_down = len(receiver.events(address))

                receiver.up()
                await eventually(
                    lambda: set(lifecycle(receiver.events(address))) >= missed_hashes, 30,
                    "the missed events delivered once the receiver is back",
                )  # fmt: skip
            listing = cli.ok("webhook", "list", "--org", ORGANISATION)
            assert "\tok" in listing and "failing" not in listing, listing

            cli.ok("webhook", "remove", webhook_id)
            async with aiohttp.ClientSession() as session:
                after = await run_load(session, team, address, Router(group.urls), users=1,
                                       per_user=2, window=1, first_tag=200)  # fmt: skip
            await mined(chain, {str(r.hash) for r in after if r.hash}, timeout=20)

    events = receiver.events(address)
    assert while_down == len(first_hashes)
    assert len(events) == len(first_hashes) + len(missed_hashes)
    assert {e["event"] for e in events} == {"mined"}  # --events mined,failed: no others
    assert receiver.duplicates() == 0
    ids = [int(str(e["id"])) for e in events]
    assert ids == sorted(ids), "delivered out of order"
    assert {str(e["transactionHash"]) for e in events} == first_hashes | missed_hashes
    rows = await fetch(team.database_url,
                       "SELECT state, count(*) FROM webhook_deliveries WHERE webhook_id = $1 "
                       "GROUP BY state", webhook_id)  # fmt: skip
    assert {r["state"] for r in rows} == {"delivered"}


def test_webhook_commands_refuse_bad_input_and_write_nothing(team: Team, cli: Cli) -> None:
    def webhooks() -> int:
        return int(query(team.database_url, "SELECT count(*) FROM webhooks")[0][0])

    before = webhooks()
    cli.bad("webhook", "add", "--org", ORGANISATION, "ftp://example.com/x", match="http")
    cli.bad("webhook", "add", "--org", ORGANISATION, "https://user:pw@example.com/",
            match="credentials")  # fmt: skip
    cli.bad("webhook", "add", "--org", ORGANISATION, "https://example.com/", "--events",
            "mined,confirmed", match="not confirmed")  # fmt: skip
    cli.bad("webhook", "add", "--org", "no-such-org", "https://example.com/",
            match="no organisation")  # fmt: skip
    cli.bad("webhook", "remove", "wh_nothing", match="no webhook")
    cli.bad("webhook", "list", "--org", "no-such-org", match="no organisation")
    assert webhooks() == before
    error = cli.run("webhook", "add", "--org", ORGANISATION, "https://user:pw@example.com/")
    assert "pw" not in error.stderr
