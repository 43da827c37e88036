"""The admin API (/admin/api/) in front of real anvil, PostgreSQL and SoftHSM, with the proxy in
process behind a real HTTP server: each route allowed to an admin, refused to the other roles
and to another organisation's admin, and bad input answered with a clear error and nothing
written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.admin import (
    ADMIN_PASSWORD,
    HOLD_BIG,
    AdminClient,
    Admins,
    admin_stack,
    audit_rows,
    error_of,
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


async def _held(proxy: Proxy, value: int, headers: dict[str, str] | None = None) -> str:
    answer = await _send(proxy, value, headers)
    assert answer["error"]["data"]["reason"] == "approval_required", answer
    return str(answer["error"]["data"]["approval_id"])


async def _count(database_url: str, sql: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def test_other_roles_and_other_organisations_are_refused(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    # Every route is tried with bad credentials: the failed-authentication throttle (tested on
    # its own) would otherwise answer 429 before the end.
    admins = await admin_stack(anvil, database_url, softhsm_module, auth_failure_burst=1000)
    stack = admins.stack
    async with serving(admins) as (admin, proxy):
        await admin.ok("PUT", "/policy", body={"source": textwrap.dedent(HOLD_BIG)})
        approval = await _held(proxy, 5000)
        tx_hash = (await _send(proxy))["result"]
        routes = [("GET", "/me"), ("GET", "/accounts"), ("GET", f"/accounts/{stack.address}"),
                  ("GET", "/transactions"), ("GET", f"/transactions/{tx_hash}"),
                  ("GET", "/approvals"), ("GET", f"/approvals/{approval}"),
                  ("POST", f"/approvals/{approval}/approve"),
                  ("POST", f"/approvals/{approval}/reject"), ("GET", "/audit"),
                  ("GET", "/audit/verify"), ("GET", "/audit/export"), ("GET", "/users"),
                  ("POST", "/users/victor/disable"), ("GET", "/api-keys"),
                  ("POST", f"/api-keys/{stack.api_key.split('_')[1]}/revoke"),
                  ("GET", "/policy"), ("POST", "/policy/validate"), ("POST", "/policy/dry-run"),
                  ("PUT", "/policy"), ("GET", "/nodes")]  # fmt: skip
        body = {"source": "version: 1\n"}
        # (A "signed" row of the send above may still ride in with a later statement.)
        audited = 'SELECT count(*) FROM audit_log WHERE content NOT LIKE \'%"kind":"signed"%\''
        before = await _count(database_url, audited)
        # No credentials, a signer's JWT and API key, a viewer's JWT: refused on every route.
        for credential, code in (("", "unauthorized"), (admins.jwt["alice"], "forbidden"),
                                 (stack.api_key, "forbidden"), (admins.jwt["victor"], "forbidden"),
                                 ("qsk_0000000000000000_" + "x" * 43, "unauthorized"),
                                 ("not-a-jwt", "unauthorized")):  # fmt: skip
            caller = admin.as_(credential)
            for method, path in routes:
                status, answer = await caller.request(
                    method, path, body=body if "policy" in path else None,
                    headers={} if credential else {"Authorization": ""})  # fmt: skip
                message = error_of(answer, code)
                assert status == (401 if code == "unauthorized" else 403), (method, path, answer)
                assert credential[:20] not in message or not credential
        assert await _count(database_url, audited) == before
        assert await _count(database_url, "SELECT count(*) FROM approval_votes") == 0
        assert await _count(database_url, "SELECT count(*) FROM policy_versions") == 1

        # globex's admin sees only globex: acme's things are not found, its lists are empty.
        gina = admin.as_(admins.api_key["gina"])
        for method, path in routes:
            if path.count("/") < 2 or path.startswith(("/audit", "/policy", "/nodes", "/me")):
                continue
            status, answer = await gina.request(method, path)
            assert status == 404, (method, path, answer)
            error_of(answer, "not_found")
        accounts = await gina.ok("GET", "/accounts")
        assert [a["address"] for a in accounts["items"]] == [stack.other_address]
        for path in ("/transactions", "/approvals", "/api-keys?user=alice"):
            assert (await gina.ok("GET", path))["items"] == [], path
        own = (await gina.ok("GET", "/audit"))["items"]
        assert own and {e["content"]["organisation"] for e in own} == {"globex"}
        assert [u["id"] for u in (await gina.ok("GET", "/users"))["items"]] == ["gina"]
        assert (await gina.ok("GET", "/policy"))["version"] is None
        assert await _count(database_url, "SELECT count(*) FROM approval_votes") == 0
        assert await _count(database_url, "SELECT count(*) FROM users WHERE status = 'disabled'"
                            ) == 0  # fmt: skip

        # Credentials never go in the URL; unknown routes and methods answer in the same shape.
        status, answer = await admin.as_("").request(
            "GET", "/accounts", params={"apikey": admins.api_key["ada"]},
            headers={"Authorization": ""})  # fmt: skip
        assert status == 400 and "never go in the URL" in error_of(answer, "bad_input")
        assert admins.api_key["ada"] not in json.dumps(answer)
        status, answer = await admin.request("GET", "/accounts",
                                             params={"q": admins.api_key["ada"]})  # fmt: skip
        assert status == 400 and "never go in the URL" in error_of(answer, "bad_input")
        status, answer = await admin.request("GET", "/no-such-thing")
        assert status == 404 and error_of(answer, "not_found")
        status, answer = await admin.request("DELETE", "/accounts")
        assert status == 405 and error_of(answer, "method_not_allowed")


async def test_approving_and_rejecting_as_the_cli_does(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, proxy):
        installed = await admin.ok("PUT", "/policy", body={"source": textwrap.dedent(HOLD_BIG)})
        assert installed == {"version": 1}
        approval = await _held(proxy, 5000)
        pending = await admin.ok("GET", "/approvals")
        [shown] = pending["items"]
        assert shown["id"] == approval and shown["state"] == "pending" and shown["approvals"] == 0
        assert shown["requester"] == "alice" and shown["rule"] == "big-transfers"
        assert shown["summary"]["value"] == "5000" and shown["request"]["to"] == SINK, shown
        assert shown["call"] is None, shown  # a plain transfer of value: no calldata to decode
        assert await admin.ok("GET", f"/approvals/{approval}") == shown

        async with audit_rows(database_url) as written:
            # A JWT alone does not prove the admin; a wrong password neither; the requester's
            # role cannot vote; nothing is written by any of them.
            jwt_only = admin.as_(admins.jwt["ada"])
            assert (await jwt_only.ok("GET", "/me"))["unlocked"] is False
            status, answer = await jwt_only.request("POST", f"/approvals/{approval}/approve")
            assert status == 401 and "X-Signer-Password" in error_of(answer, "unauthorized")
            status, answer = await admin.as_(admins.jwt["ada"], "wrong").request(
                "POST", f"/approvals/{approval}/approve")  # fmt: skip
            assert status == 401 and error_of(answer, "unauthorized")
            status, answer = await admin.request("POST", f"/approvals/{approval}/approve",
                                                 body={"comment": "x" * 501})  # fmt: skip
            assert status == 400 and error_of(answer, "bad_input")
            assert answer["error"]["problems"][0]["location"] == "body.comment"
        assert [(r["action"], r["user"]) for r in written] == [("wrong_password", "ada")]
        assert await _count(database_url, "SELECT count(*) FROM approval_votes") == 0

        async with audit_rows(database_url) as written:
            vote = await admin.ok("POST", f"/approvals/{approval}/approve",
                                  body={"comment": "checked with treasury"})  # fmt: skip
        assert vote == {"approval_id": approval, "state": "approved", "approvals": 1, "needed": 1}
        [row] = written
        assert row["action"] == "approved" and row["user"] == "ada", row
        assert row["detail"]["via"] == "admin_api: checked with treasury", row
        status, answer = await admin.as_(admins.jwt["bob"], ADMIN_PASSWORD).request(
            "POST", f"/approvals/{approval}/reject")  # fmt: skip
        assert status == 409 and "already approved" in error_of(answer, "conflict")
        # The requester's same request now goes through, once, and is mined.
        tx_hash = (await _send(proxy, 5000))["result"]
        assert _receipt(anvil, tx_hash)["status"] == "0x1"
        assert (await admin.ok("GET", f"/approvals/{approval}"))["state"] == "used"

        # An admin's own held request: not theirs to decide; another admin rejects it with a
        # JWT and their password.
        own = await _held(proxy, 7000, headers={"Authorization": f"Bearer {admins.jwt['ada']}",
                                                "X-Signer-Password": ADMIN_PASSWORD})  # fmt: skip
        status, answer = await admin.request("POST", f"/approvals/{own}/approve")
        assert status == 403 and "own request" in error_of(answer, "forbidden")
        bob = admin.as_(admins.jwt["bob"], ADMIN_PASSWORD)
        rejected = await bob.ok("POST", f"/approvals/{own}/reject")
        assert rejected["state"] == "rejected"
        listed = await admin.ok("GET", "/approvals", params={"state": "rejected"})
        assert [a["id"] for a in listed["items"]] == [own]
        assert listed["items"][0]["votes"][0]["user"] == "bob"
        status, answer = await admin.request("POST", "/approvals/apr_0123456789abcdef/approve")
        assert status == 404 and error_of(answer, "not_found")
        status, answer = await admin.request("POST", "/approvals/not-an-id/approve")
        assert status == 400 and error_of(answer, "bad_input")


async def test_an_expired_approval_cannot_be_decided(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, proxy):
        await admin.ok("PUT", "/policy", body={"source": textwrap.dedent(HOLD_BIG).replace(
            "expire: 1h", "expire: 1s")})  # fmt: skip
        approval = await _held(proxy, 5000)
        await asyncio.sleep(1.5)
        assert (await admin.ok("GET", "/approvals"))["items"] == []
        expired = await admin.ok("GET", "/approvals", params={"state": "expired"})
        assert [(a["id"], a["state"]) for a in expired["items"]] == [(approval, "expired")]
        status, answer = await admin.request("POST", f"/approvals/{approval}/approve")
        assert status == 409 and "expired" in error_of(answer, "conflict")
        assert await _count(database_url, "SELECT count(*) FROM approval_votes") == 0


async def test_policy_validate_dry_run_and_set(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, proxy):
        for value in (1, 5000):
            assert "result" in await _send(proxy, value)
        bad = "version: 1\nrules:\n  - name: x\n    match: {}\n    action: maybe\n"
        check = await admin.ok("POST", "/policy/validate", body={"source": bad})
        assert check["valid"] is False and "line 5" in check["error"], check
        good = textwrap.dedent(HOLD_BIG)
        assert await admin.ok("POST", "/policy/validate", body={"source": good}) == {
            "valid": True, "error": None}  # fmt: skip
        status, answer = await admin.request("POST", "/policy/dry-run", body={"source": bad})
        assert status == 400 and "line 5" in error_of(answer, "bad_input")
        dry = await admin.ok("POST", "/policy/dry-run", body={"source": good})
        assert dry["replayed"] == 2
        assert [(c["old"], c["new"]) for c in dry["changed"]] == [
            ("allow", "hold(big-transfers)")], dry  # fmt: skip

        async with audit_rows(database_url) as written:
            for body in ({"source": bad}, {"source": ""}, {"source": good, "extra": 1}, {},
                         {"source": 7}):  # fmt: skip
                status, answer = await admin.request("PUT", "/policy", body=body)
                assert status == 400, (body, answer)
                error_of(answer, "bad_input")
            status, answer = await admin.request("PUT", "/policy", raw=b"{not json")
            assert status == 400 and error_of(answer, "bad_input")
        assert written == [] and (await admin.ok("GET", "/policy"))["version"] is None

        async with audit_rows(database_url) as written:
            assert await admin.ok("PUT", "/policy", body={"source": good}) == {"version": 1}
        assert [(r["action"], r["user"], r["policy_version"]) for r in written] == [
            ("policy_set", "ada", 1)]  # fmt: skip
        shown = await admin.ok("GET", "/policy")
        assert shown["version"] == 1 and shown["source"] == good and shown["installed_by"] == "ada"
        held = await _send(proxy, 5000)
        assert held["error"]["data"]["reason"] == "approval_required"  # in force at once


async def test_disabling_users_and_revoking_api_keys(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    stack = admins.stack
    async with serving(admins) as (admin, proxy):
        viewer = {"Authorization": f"Bearer {admins.jwt['victor']}"}
        status, _ = await proxy.call("eth_accounts", [], headers=viewer)
        assert status == 200
        async with audit_rows(database_url) as written:
            for path, code in (("/users/ada/disable", "conflict"),
                               ("/users/nobody/disable", "not_found"),
                               ("/users/gina/disable", "not_found"),
                               ("/users/bad%20id/disable", "bad_input")):  # fmt: skip
                status, answer = await admin.request("POST", path)
                error_of(answer, code)
        assert written == []
        async with audit_rows(database_url) as written:
            disabled = await admin.ok("POST", "/users/victor/disable")
        assert disabled["id"] == "victor" and disabled["status"] == "disabled"
        assert [(r["action"], r["user"], r["detail"]) for r in written] == [
            ("user_disabled", "victor", {"by": "ada", "via": "admin_api"})]  # fmt: skip
        status, _ = await proxy.call("eth_accounts", [], headers=viewer)
        assert status == 401

        key_id = stack.api_key.split("_")[1]
        signer = {"Authorization": f"Bearer {stack.api_key}"}
        assert (await proxy.call("eth_accounts", [], headers=signer))[0] == 200
        async with audit_rows(database_url) as written:
            revoked = await admin.ok("POST", f"/api-keys/{key_id}/revoke")
        assert revoked["id"] == key_id and revoked["revoked_at"] is not None
        assert [(r["action"], r["detail"]["by"]) for r in written] == [("apikey_revoked", "ada")]
        assert (await proxy.call("eth_accounts", [], headers=signer))[0] == 401
        async with audit_rows(database_url) as written:
            status, answer = await admin.request("POST", f"/api-keys/{key_id}/revoke")
            assert status == 409 and error_of(answer, "conflict")
            gina_key = admins.api_key["gina"].split("_")[1]
            status, answer = await admin.request("POST", f"/api-keys/{gina_key}/revoke")
            assert status == 404 and error_of(answer, "not_found")
            status, answer = await admin.request("POST", "/api-keys/XYZ/revoke")
            assert status == 400 and error_of(answer, "bad_input")
        assert written == []
        revoked_keys = await admin.ok("GET", "/api-keys", params={"revoked": "true"})
        assert [k["id"] for k in revoked_keys["items"]] == [key_id]


async def test_bad_input_is_named_and_metrics_count_routes_by_outcome(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, _proxy):
        await admin.ok("GET", "/me")
        for path, params, location in (
            ("/transactions", {"limit": "0"}, "query.limit"),
            ("/transactions", {"limit": "many"}, "query.limit"),
            ("/transactions", {"state": "lost"}, "query.state"),
            ("/transactions", {"since": "2026-01-01T00:00:00"}, "query.since"),
            ("/transactions", {"account": "0x1234"}, "query.account"),
            ("/transactions", {"colour": "red"}, "query.colour"),
            ("/audit", {"kind": "gossip"}, "query.kind"),
            ("/approvals", {"state": "maybe"}, "query.state"),
        ):
            status, answer = await admin.get(path, **params)
            assert status == 400, (path, params, answer)
            error_of(answer, "bad_input")
            assert answer["error"]["problems"][0]["location"] == location, answer
        status, answer = await admin.get("/transactions", cursor="garbage")
        assert status == 400 and "cursor" in error_of(answer, "bad_input")
        status, answer = await admin.request("GET", "/accounts?limit=1&limit=2")
        assert status == 400 and "once" in error_of(answer, "bad_input")
        address = admins.stack.address
        mixed = address[:2] + address[2:].swapcase()
        status, answer = await admin.request("GET", f"/accounts/{mixed}")
        assert status == 400 and "checksum" in error_of(answer, "bad_input")
        status, answer = await admin.request(
            "POST", "/policy/validate", raw=b"{" + b" " * (1024 * 1024 + 10) + b"}"
        )
        assert status == 413 and error_of(answer, "too_large")
        await admin.as_(admins.jwt["alice"]).request("GET", "/accounts")

        async with admin.session.get(f"{admin.url}/metrics") as response:
            metrics = await response.text()
        for line in ('qsigner_admin_requests_total{outcome="ok",route="GET /admin/api/me"}',
                     'qsigner_admin_requests_total{outcome="bad_input",'
                     'route="GET /admin/api/transactions"} 7.0',
                     'qsigner_admin_requests_total{outcome="forbidden",'
                     'route="GET /admin/api/accounts"} 1.0',
                     'qsigner_admin_requests_total{outcome="too_large",'
                     'route="POST /admin/api/policy/validate"} 1.0'):  # fmt: skip
            assert line in metrics, line


async def test_audit_verify_names_a_tampered_row(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    async with serving(admins) as (admin, proxy):
        for _ in range(2):
            assert "result" in await _send(proxy)
        assert (await admin.ok("GET", "/audit/verify"))["intact"] is True
        conn = await asyncpg.connect(database_url)
        try:  # as a database administrator would: the append-only triggers bypassed
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                """UPDATE audit_log SET content = replace(content, '"alice"', '"mallory"')
                    WHERE chain = 'acme' AND seq = (SELECT min(seq) FROM audit_log
                       WHERE chain = 'acme' AND content LIKE '%"kind":"decision"%')""")  # fmt: skip
            seq = await conn.fetchval("SELECT seq FROM audit_log WHERE content LIKE '%mallory%'")
        finally:
            await conn.close()
        verify = await admin.ok("GET", "/audit/verify")
        assert verify["intact"] is False and verify["broken_seq"] == seq, verify
        assert "edited" in verify["problem"], verify
        # Another organisation's chain is not concerned.
        assert (await admin.as_(admins.api_key["gina"]).ok("GET", "/audit/verify"))["intact"]
