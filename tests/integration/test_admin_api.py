"""The admin API (/admin/api/) in front of real anvil, PostgreSQL and SoftHSM, with the proxy in
process behind a real HTTP server: each route allowed to an admin, refused to the other roles
and to another organisation's admin, and bad input answered with a clear error and nothing
written."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import (
    AdminClient,
    Admins,
    admin_stack,
)
from tests.support.anvil import rpc, run_anvil
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, in_process

SINK = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(admins: Admins) -> AsyncIterator[tuple[AdminClient, Proxy]]:
    async with in_process(admins.stack.settings) as (url, session):
        yield AdminClient(url, session, admins.api_key["ada"]), Proxy(url, session, admins.stack)


async def _send(proxy: Proxy, value: int = 1, headers: dict[str, str] | None = None) -> Any:
    tx = {"from": proxy.stack.address, "to": SINK, "value": hex(value)}
    status, answer = await proxy.call("eth_sendTransaction", [tx], headers=headers)
    assert status == 200, answer
    return answer


def _receipt(anvil: str, tx_hash: str) -> dict[str, Any]:
    for _ in range(100):
        receipt = rpc(anvil, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            return dict(receipt)
    raise AssertionError(f"{tx_hash} not mined")


async def test_an_admin_reads_accounts_transactions_audit_users_policy_and_nodes(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, proxy):
        me = await admin.ok("GET", "/me")
        assert me == {"user": "ada", "organisation": "acme", "role": "admin",
                      "credential": "api_key", "unlocked": True}  # fmt: skip
        hashes = [(await _send(proxy))["result"] for _ in range(3)]
        for tx_hash in hashes:
            _receipt(anvil, tx_hash)

        accounts = await admin.ok("GET", "/accounts")
        assert [a["address"] for a in accounts["items"]] == [admins.stack.address]
        assert accounts["next_cursor"] is None
        ledger = accounts["items"][0]["ledger"]
        assert ledger["next_nonce"] == 3 and ledger["queue_depth"] == 0, ledger
        one = await admin.ok("GET", f"/accounts/{admins.stack.address.lower()}")
        assert one["chain"] == {"mined": 3, "pending": 3}, one

        # Pages of two, newest first, then the last one.
        first = await admin.ok("GET", "/transactions", params={"limit": 2})
        assert [t["hash"] for t in first["items"]] == hashes[:0:-1]
        rest = await admin.ok("GET", "/transactions",
                              params={"limit": 2, "cursor": first["next_cursor"]})  # fmt: skip
        assert [t["hash"] for t in rest["items"]] == hashes[:1] and rest["next_cursor"] is None
        by_user = await admin.ok(
            "GET", "/transactions", params={"user": "alice", "account": admins.stack.address}
        )
        assert len(by_user["items"]) == 3
        assert (await admin.ok("GET", "/transactions", params={"user": "bob"}))["items"] == []
        sent = await admin.ok("GET", "/transactions", params={"state": "sent"})
        assert all(t["state"] == "sent" for t in sent["items"])

        life = await admin.ok("GET", f"/transactions/{hashes[1]}")
        assert life["transaction"]["nonce"] == 1 and life["transaction"]["user"] == "alice"
        kinds = [(e["content"]["kind"], e["content"]["action"]) for e in life["events"]]
        assert kinds[0] == ("decision", "allow") and ("signed", "sent") in kinds, kinds

        audit = await admin.ok("GET", "/audit", params={"kind": "decision", "limit": 2})
        assert len(audit["items"]) == 2 and audit["next_cursor"]
        assert all(e["content"]["kind"] == "decision" for e in audit["items"])
        assert audit["items"][0]["seq"] > audit["items"][1]["seq"]
        verify = await admin.ok("GET", "/audit/verify")
        assert verify["intact"] and verify["rows"] >= 6 and verify["problem"] is None, verify
        status, export = await admin.request("GET", "/audit/export")
        assert status == 200
        lines = [json.loads(line) for line in export.decode().splitlines()]
        assert lines[0]["organisation"] == "acme"
        assert {line["chain"] for line in lines[1:]} == {"acme"}

        users = await admin.ok("GET", "/users")
        assert [u["id"] for u in users["items"]] == ["ada", "alice", "bob", "victor"]
        keys = await admin.ok("GET", "/api-keys", params={"user": "alice"})
        assert [k["user"] for k in keys["items"]] == ["alice"]
        assert (await admin.ok("GET", "/policy"))["version"] is None
        nodes = await admin.ok("GET", "/nodes")
        assert nodes["chain_id"] == CHAIN_ID and nodes["nodes"][0]["ok"] is True
        assert nodes["history"][0]["ok"] is True
