"""`eth_subscribe("qsigner_transactions")`: the organisation's transaction lifecycle from the nonce
ledger over WebSocket (queued, sent, mined with status, failed), scoped to the caller's
organisation and, if asked, one account. The proxy in process behind a real HTTP server, real
anvil (`--block-time 1`), PostgreSQL and SoftHSM; the failed event comes from a node that
definitely rejects the transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy import store
from proxy.identity import Identity
from proxy.identity.auth import issue_token
from signer.pkcs11 import Hsm
from tests.support.anvil import rpc, run_anvil
from tests.support.faults import RejectingForwarder, fronts_in_thread
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, build_stack, in_process
from tests.support.websocket import Socket, connect

RECIPIENT = "0x000000000000000000000000000000000000dEaD"
QUIET_SECONDS = 1.5  # a notification that should not come has had this long to come


@pytest.fixture
def chain() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as url:
        yield url


@pytest.fixture
async def proxy(chain: str, database_url: str, softhsm_conf: Path,
                softhsm_module: str) -> AsyncIterator[Proxy]:  # fmt: skip
    stack = await build_stack(chain, database_url, softhsm_module)
    async with in_process(stack.settings) as (url, session):
        yield Proxy(url, session, stack)


async def _subscribe(socket: Socket, *params: Any) -> str:
    subscription = await socket.result("eth_subscribe", ["qsigner_transactions", *params])
    assert isinstance(subscription, str) and subscription.startswith("0x")
    return subscription


async def _events(socket: Socket, subscription: str, tx_hash: str,
                  until: str = "mined") -> list[dict[str, Any]]:  # fmt: skip
    """The subscription's events of one transaction, up to the `until` event."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["event"] != until:
        event = await socket.notification(subscription)
        if event["transactionHash"] == tx_hash:
            seen.append(event)
    return seen


async def _send(proxy: Proxy, value: int = 1) -> str:
    tx = {"from": proxy.stack.address, "to": RECIPIENT, "value": hex(value)}
    tx_hash = await proxy.result("eth_sendTransaction", [tx], headers=proxy.jwt(password=True))
    assert isinstance(tx_hash, str)
    return tx_hash


async def _user_of_another_organisation(proxy: Proxy) -> str:
    """A signer of globex (the stack's other organisation); its JWT."""
    stack = proxy.stack
    pool = await store.connect(stack.database_url, max_size=2)
    try:
        with Hsm(str(stack.settings.pkcs11_module), sessions_per_token=1) as hsm:
            await Identity(pool, stack.settings).add_user("globex", "gina", "signer", hsm,
                                                          stack.pin, stack.password)  # fmt: skip
    finally:
        await pool.close()
    return issue_token(stack.settings, "gina", 3600)


async def test_a_transaction_is_streamed_from_queued_to_mined(proxy: Proxy) -> None:
    stack = proxy.stack
    gina = await _user_of_another_organisation(proxy)
    async with (
        connect(proxy.session, f"{proxy.url}/rpc/{stack.api_key}") as alice,
        connect(proxy.session, proxy.url, headers={"Authorization": f"Bearer {gina}"}) as other,
        connect(proxy.session, proxy.url, headers=proxy.jwt()) as viewer_of_account,
    ):  # fmt: skip
        everything = await _subscribe(alice)
        outsider = await _subscribe(other)
        one_account = await _subscribe(viewer_of_account, {"account": stack.address.lower()})
        tx_hash = await _send(proxy, value=7)
        events = await _events(alice, everything, tx_hash)

        assert [e["event"] for e in events] == ["queued", "sent", "mined"], events
        receipt = rpc(stack.anvil_url, "eth_getTransactionReceipt", [tx_hash])
        mined = events[-1]
        assert mined["receiptStatus"] == "0x1" == receipt["status"]
        assert mined["blockNumber"] == receipt["blockNumber"]
        for event in events:
            assert event["account"] == stack.address  # checksummed
            assert event["nonce"] == "0x0" and event["chainId"] == hex(CHAIN_ID)
            assert event["kind"] == "send" and event["user"] == "alice"
            assert event["private"] is False and event["id"].isdigit()
            assert event["time"].endswith("Z")
        assert len({e["id"] for e in events}) == 3  # each event its own id
        # The account's own subscription gets the same events; another organisation's none.
        assert await _events(viewer_of_account, one_account, tx_hash) == events
        await asyncio.sleep(QUIET_SECONDS)
        assert other.queue(outsider).empty()


async def test_unsubscribed_gets_nothing_more_and_bad_filters_are_refused(proxy: Proxy) -> None:
    stack = proxy.stack
    async with connect(proxy.session, f"{proxy.url}/rpc/{stack.api_key}") as socket:
        for params, needle in (
            ([{"account": stack.other_address}], "not an account of your organisation"),
            ([{"account": "0x1234"}], "0x address"),
            ([{"acount": stack.address}], "at most one object"),
            (["0xabc"], "at most one object"),
        ):  # fmt: skip
            answer = await socket.request("eth_subscribe", ["qsigner_transactions", *params])
            assert answer["error"]["code"] == -32602 and needle in answer["error"]["message"]
        kept = await _subscribe(socket)
        dropped = await _subscribe(socket, {"account": stack.address})
        assert await socket.result("eth_unsubscribe", [dropped]) is True
        answer = await socket.request("eth_unsubscribe", [dropped])
        assert answer["error"]["code"] == -32602  # gone
        tx_hash = await _send(proxy)
        await _events(socket, kept, tx_hash)
        assert socket.queue(dropped).empty()
    # Over HTTP there is nowhere to send notifications.
    _, answer = await proxy.call("eth_subscribe", ["qsigner_transactions"])
    assert answer["error"]["code"] == -32601


async def test_a_definite_rejection_is_a_failed_event(chain: str, database_url: str,
                                                     softhsm_conf: Path,
                                                     softhsm_module: str) -> None:  # fmt: skip
    node = RejectingForwarder(chain, every=1)  # every transaction refused before any pool
    with fronts_in_thread(node):
        stack = await build_stack(chain, database_url, softhsm_module, upstreams=(node.url,))
        async with in_process(stack.settings) as (url, session):
            proxy = Proxy(url, session, stack)
            async with connect(session, f"{url}/rpc/{stack.api_key}") as socket:
                subscription = await _subscribe(socket)
                tx = {"from": stack.address, "to": RECIPIENT, "value": "0x1"}
                _, answer = await proxy.call("eth_sendTransaction", [tx])
                assert answer["error"]["message"] == "intrinsic gas too low"
                tx_hash = node.rejected[0]
                events = await _events(socket, subscription, tx_hash, until="failed")
    assert [e["event"] for e in events] == ["queued", "failed"]
    assert events[-1]["reason"] and "intrinsic gas too low" in events[-1]["reason"]
    assert "receiptStatus" not in events[-1]


async def test_events_are_written_with_the_ledger_change_only(proxy: Proxy) -> None:
    """A state change that rolls back leaves no event; one that commits leaves exactly one."""
    conn = await asyncpg.connect(proxy.stack.database_url)
    try:
        tx_hash = await _send(proxy)
        async with asyncio.timeout(30):
            mined = "SELECT count(*) FROM ledger_events WHERE event = 'mined' AND tx_hash = $1"
            while await conn.fetchval(mined, bytes.fromhex(tx_hash[2:])) == 0:
                await asyncio.sleep(0.1)
        before = await conn.fetchval("SELECT count(*) FROM ledger_events")
        with pytest.raises(asyncpg.RaiseError):
            async with conn.transaction():
                await conn.execute("UPDATE ledger_transactions SET state = 'sent', "
                                   "block_number = NULL WHERE tx_hash = $1",
                                   bytes.fromhex(tx_hash[2:]))  # fmt: skip
                await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'rolled back'; END $$")
        assert await conn.fetchval("SELECT count(*) FROM ledger_events") == before
        rows = await conn.fetch("SELECT event FROM ledger_events WHERE tx_hash = $1 ORDER BY id",
                                bytes.fromhex(tx_hash[2:]))  # fmt: skip
        assert [r["event"] for r in rows] == ["queued", "sent", "mined"]
    finally:
        await conn.close()


async def test_a_lost_listener_catches_up_with_nothing_twice(proxy: Proxy) -> None:
    """The replica's events connection is cut (as a database failover or a network blip cuts
    it) in the very transaction that writes an event (a reorganisation taking a mined
    transaction back to `sent`): nobody listens when it commits, yet the subscription gets it,
    once, when the connection is back."""
    async with connect(proxy.session, f"{proxy.url}/rpc/{proxy.stack.api_key}") as socket:
        subscription = await _subscribe(socket)
        tx_hash = await _send(proxy)
        await _events(socket, subscription, tx_hash)
        conn = await asyncpg.connect(proxy.stack.database_url)
        try:
            async with conn.transaction():
                await conn.execute("UPDATE ledger_transactions SET state = 'sent', "
                                   "block_number = NULL, receipt_status = NULL "
                                   "WHERE tx_hash = $1", bytes.fromhex(tx_hash[2:]))  # fmt: skip
                cut = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                    "application_name = 'qsigner-events' AND datname = current_database()"
                )
        finally:
            await conn.close()
        assert cut == 1, f"{cut} events listeners of this database were cut"
        event = await socket.notification(subscription)
        assert (event["event"], event["transactionHash"]) == ("sent", tx_hash), event
        # ... and the receipt poller finds it mined again: that comes as usual, and nothing
        # comes twice.
        again = await socket.notification(subscription)
        assert (again["event"], again["transactionHash"]) == ("mined", tx_hash), again
        await asyncio.sleep(QUIET_SECONDS)
        assert socket.queue(subscription).empty(), "an event delivered twice"
