"""The web console at /admin/ in a real browser: Debian's chromium, headless, driven by
playwright-core (tests/browser/console.mjs), against the proxy in process in front of real anvil
(a block a second), PostgreSQL and SoftHSM. A held request approved from the console is mined;
the nonce timeline moves from sent to mined without a reload; the audit view shows a tampered
row; a viewer, a signer and another organisation's admin see and do nothing of acme's. Every
page is served under a strict Content-Security-Policy, and no credential is ever in a URL the
console requested. Screenshots of each view are kept under the test's tmp directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from policy import abi
from tests.support.admin import ADMIN_PASSWORD, HOLD_BIG, AdminClient, Admins, admin_stack
from tests.support.anvil import rpc, run_anvil
from tests.support.node_scripts import ROOT, run_client_async
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, in_process

SCRIPT = ROOT / "tests" / "browser" / "console.mjs"
CHROMIUM = Path("/usr/bin/chromium")
SINK = "0x000000000000000000000000000000000000dEaD"
FILES = ("", "app.js", "api.js", "live.js", "console.css")


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as url:
        yield url


@pytest.fixture
def browser_ready() -> None:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed (scripts/install-system-deps installs it)")
    if not (ROOT / "node_modules" / "playwright-core").exists():
        pytest.fail("playwright-core is not installed (npm ci; `make deps` does it)")


@contextlib.asynccontextmanager
async def serving(admins: Admins) -> AsyncIterator[tuple[str, AdminClient, Proxy]]:
    async with in_process(admins.stack.settings) as (url, session):
        yield (
            url,
            AdminClient(url, session, admins.api_key["ada"]),
            Proxy(url, session, admins.stack),
        )


async def browse(scenario: str, url: str, shots: Path, admins: Admins,
                 **values: str) -> dict[str, Any]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QSIGNER_", "CONSOLE_"))}
    env.update(CONSOLE_SCENARIO=scenario, CONSOLE_URL=url, CONSOLE_SHOTS=str(shots),
               CONSOLE_SECRETS="\n".join(admins.secrets()), **values)  # fmt: skip
    report = await run_client_async(SCRIPT, env, timeout=150)
    print(f"{scenario}: screenshots", *report["shots"], sep="\n  ")
    assert "failure" not in report, report["failure"]
    secrets = admins.secrets()
    for requested in report["urls"] + report["sockets"]:
        assert not any(s in requested for s in secrets), "a credential in a requested URL"
        assert "qsk_" not in requested and not re.search(r"eyJ[\w-]+\.", requested), requested
    sockets = report["sockets"]
    assert all(re.fullmatch(r"ws://127\.0\.0\.1:\d+/", s) for s in sockets), sockets
    assert report["csp"] == [], report["csp"]
    assert report["errors"] == [], report["errors"]
    assert report["secretsInHtml"] == 0
    return report


def _transfer_call() -> str:
    holder = bytes.fromhex("00000000000000000000000000000000000000be")
    return "0x" + abi.encode_call(abi.ERC20_TRANSFER, [holder, 25 * 10**18]).hex()


async def test_console_approves_watches_nonces_and_shows_a_tampered_audit_row(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path,
    browser_ready: None,
) -> None:  # fmt: skip
    admins = await admin_stack(anvil, database_url, softhsm_module)
    stack = admins.stack
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with serving(admins) as (url, admin, proxy):
        await admin.ok("PUT", "/policy", body={"source": textwrap.dedent(HOLD_BIG)})
        held_tx = {"from": stack.address, "to": SINK, "value": hex(5000), "data": _transfer_call()}
        _, answer = await proxy.call("eth_sendTransaction", [held_tx])
        assert answer["error"]["data"]["reason"] == "approval_required", answer
        approval = answer["error"]["data"]["approval_id"]

        report = await browse("admin", url, shots, admins, ADMIN_KEY=admins.api_key["ada"],
                              SIGNER_KEY=stack.api_key, APPROVAL_ID=approval,
                              ACCOUNT=stack.address, HELD_TX=json.dumps(held_tx))  # fmt: skip
        seen = report["seen"]
        assert seen["who"].startswith("ada · acme · admin"), seen["who"]
        # The confirmation showed the decoded transaction and the rule.
        for expected in ("transfer(address,uint256)", "25000000000000000000",
                         "0x00000000000000000000000000000000000000Be", SINK, "5000 wei",
                         "big-transfers", "alice", "0 of 1"):  # fmt: skip
            assert expected in seen["dialog"], (expected, seen["dialog"])
        assert f"{approval}: approved (1 of 1)" in seen["status"]
        # Approved in the console, then mined: checked on chain.
        mined_hash = seen["hash"]
        receipt = rpc(anvil, "eth_getTransactionReceipt", [mined_hash])
        assert receipt is not None and receipt["status"] == "0x1", receipt
        mined = rpc(anvil, "eth_getTransactionByHash", [seen["hash"]])
        assert mined["input"] == held_tx["data"] and int(mined["value"], 16) == 5000
        # The timeline showed it sent, then mined, without reloading the page.
        states = seen["states"]
        assert "sent" in states and states[-1] == "mined", states
        assert states.index("sent") < states.index("mined") and not seen["reloaded"], states
        assert "decision · allow" in seen["life"] and "signed · sent" in seen["life"], seen["life"]
        assert "null" not in seen["life"] and "undefined" not in seen["life"], seen["life"]
        assert seen["audit"] == "true"
        assert "victor" in seen["users"] and "gina" not in seen["users"]
        assert seen["validate"] == "Valid."
        assert seen["invalid"].startswith("Not valid: policy file: line "), seen["invalid"]
        assert "hodl" in seen["invalid"]
        # The draft lifting the threshold would have let the held request through.
        assert re.match(r"Replayed \d+ requests; [1-9]\d* decisions would change\.",
                        seen["dryRun"]), seen["dryRun"]  # fmt: skip
        assert "hold(big-transfers) → allow" in seen["dryRun"], seen["dryRun"]
        assert CHAIN_ID == 1337 and "Chain id 1337" in seen["nodes"]
        assert not seen["phoneOverflow"], "the page is wider than a phone's screen"
        # The vote is audited, with the console's comment.
        conn = await asyncpg.connect(database_url)
        try:
            vote = await conn.fetchval("SELECT content FROM audit_log WHERE chain = 'acme' AND "
                                       "content LIKE '%\"action\":\"approved\"%'")  # fmt: skip
            assert "checked with the treasurer" in vote

            # A tampered row: the audit view shows the chain broken there.
            tampered = await conn.fetchval(
                "SELECT min(seq) FROM audit_log WHERE chain = 'acme' AND content LIKE "
                "'%\"action\":\"allow\"%'")  # fmt: skip
            # As a database administrator would: the append-only trigger bypassed.
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "UPDATE audit_log SET content = replace(content, '\"allow\"', '\"deny\"') "
                "WHERE chain = 'acme' AND seq = $1", tampered)  # fmt: skip
        finally:
            await conn.close()
        other_tx = {"from": stack.address, "to": SINK, "value": hex(7000)}
        _, answer = await proxy.call("eth_sendTransaction", [other_tx])
        other = answer["error"]["data"]["approval_id"]
        report = await browse("audit", url, shots, admins, ADMIN_KEY=admins.api_key["ada"],
                              ADMIN_JWT=admins.jwt["bob"], JWT_PASSWORD=ADMIN_PASSWORD,
                              APPROVAL_ID=other)  # fmt: skip
        seen = report["seen"]
        assert seen["intact"] == "false" and seen["broken"] == str(tampered), seen
        assert f"BROKEN at seq {tampered}" in seen["banner"]
        assert seen["tampered"] == [str(tampered)], seen
        # With a JWT the console is read-only until the admin gives their password.
        assert "read-only" in seen["jwt"]["who"] and seen["jwt"]["canApprove"] == 0, seen["jwt"]
        assert "Sign in with your password" in seen["jwt"]["dialog"]
        unlocked = seen["jwtWithPassword"]
        assert unlocked["who"].startswith("bob · acme · admin"), unlocked
        assert "read-only" not in unlocked["who"]
        assert unlocked["canApprove"] == 1, unlocked
        # The key revoked from the users view no longer authenticates.
        assert re.fullmatch(r"key [0-9a-f]{16} revoked", seen["revoked"]), seen["revoked"]
        status, _ = await admin.as_(admins.api_key["bob"]).request("GET", "/me")
        assert status == 401

        # A viewer and a signer cannot sign in; globex's admin sees and does nothing of acme's.
        report = await browse("outsiders", url, shots, admins, VIEWER_JWT=stack.viewer_jwt,
                              SIGNER_KEY=stack.api_key, OTHER_KEY=admins.api_key["gina"],
                              ACCOUNT=stack.address, ACME_TX=mined_hash,
                              APPROVAL_ID=other)  # fmt: skip
    seen = report["seen"]
    for who in ("viewer", "signer"):
        refused = seen["refused"][who]
        assert refused["error"].startswith("forbidden:") and refused["navHidden"], refused
        assert refused["stored"] == 0, refused
    assert seen["otherApprovals"] == [] and seen["otherTransactions"] == 0
    assert "not_found" in seen["otherAccount"] and "not_found" in seen["otherTx"]
    assert seen["otherApprove"] == 404
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM approval_votes WHERE approval_id = $1",
                                   other) == 0  # fmt: skip
    finally:
        await conn.close()
    assert len(list(shots.glob("*.png"))) >= 14
    if os.environ.get("CONSOLE_KEEP_SCREENSHOTS"):
        shutil.copytree(shots, os.environ["CONSOLE_KEEP_SCREENSHOTS"], dirs_exist_ok=True)


async def test_every_answer_under_admin_has_the_strict_policy_and_no_secret(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module)
    secrets = admins.secrets()
    async with serving(admins) as (url, admin, _):
        session = admin.session
        for path, status, kind in (
            *((f"/admin/{f}", 200, None) for f in FILES),
            ("/admin/api/me", 401, "application/json"), ("/admin/api/openapi.json", 200, None),
            ("/admin/nope.js", 404, None), ("/admin/api/nope", 404, "application/json"),
        ):  # fmt: skip
            async with session.get(url + path, allow_redirects=False) as response:
                body = await response.text()
                assert response.status == status, (path, response.status)
                csp = response.headers["Content-Security-Policy"]
                for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                                  "frame-ancestors 'none'", "object-src 'none'"):  # fmt: skip
                    assert directive in csp, (path, csp)
                assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
                host = url.removeprefix("http://")
                assert f"connect-src 'self' ws://{host} wss://{host};" in csp
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Referrer-Policy"] == "no-referrer"
                assert not any(s in body for s in secrets), path
                if kind:
                    assert response.content_type == kind
        async with session.get(url + "/admin", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/admin/"
            assert "Content-Security-Policy" in response.headers
        # Outside /admin/ nothing changes.
        async with session.get(url + "/healthz") as response:
            assert "Content-Security-Policy" not in response.headers
        # The page: no inline script or style, no remote origin, no form field that could put
        # a credential in a URL.
        async with session.get(url + "/admin/") as response:
            page = await response.text()
        assert response.content_type == "text/html"
        assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page)), page
        assert "<style" not in page and " style=" not in page and "http" not in page
        assert not re.search(r"<(input|select|textarea)[^>]* name=", page), page
        for name in FILES[1:]:
            async with session.get(url + "/admin/" + name) as response:
                source = await response.text()
            assert "innerHTML" not in source and "eval(" not in source, name
            assert "http://" not in source and "https://" not in source, name
            assert response.content_type == ("text/css" if name.endswith("css")
                                             else "text/javascript")  # fmt: skip
