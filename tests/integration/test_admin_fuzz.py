"""schemathesis fuzzes the admin API against its own OpenAPI document, with the proxy serving on
loopback in front of real anvil, PostgreSQL and SoftHSM, and an admin's API key: no answer is a
5xx, and every answer matches the document (status, content type, schema). Sized to run in
about a minute on two cores; the figures (operations, test cases, findings) are printed and
kept in the test's directory."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.admin.openapi import document
from tests.support.admin import AdminClient, admin_stack
from tests.support.anvil import run_anvil
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, in_process

SINK = "0x000000000000000000000000000000000000dEaD"
MAX_EXAMPLES = 250
# One worker: with two, schemathesis's coverage phase compiled code in two threads at once and
# met CPython 3.11's "AST constructor recursion depth mismatch" (a runtime error of its own, not
# a finding), now and then.
SEED = 20261205
# Operations whose schema-valid input may still be refused on its meaning: lists (the cursor)
# and policy drafts (the YAML).
SEMANTIC = json.dumps([f"/admin/api{path}" for path in (
    "/accounts", "/transactions", "/approvals", "/audit", "/users", "/api-keys", "/policy",
    "/policy/dry-run")])  # fmt: skip
POLICY = """\
version: 1
default: allow
rules:
  - name: big-transfers
    action: hold
    match: {value: {gt: 1000}}
approvals: {approvers: 1, expire: 1h}
"""
# The admin's API key comes from the environment (never a command line). Half the ids in paths
# are real ones (a held request, a user, a key, an account, a transaction), so that answers
# beyond 404 are checked too. A cursor the API did not give and a YAML text that is no policy
# are schema-valid and still refused (400): the document cannot say what makes them valid.
CONFIG = """
headers = {{ Authorization = "Bearer ${{QSIGNER_FUZZ_API_KEY}}" }}
request-timeout = 20.0

[dictionaries.approvals]
values = ["{approval}"]
[dictionaries.users]
values = ["victor", "ada", "gina"]
[dictionaries.keys]
values = ["{key_id}"]
[dictionaries.accounts]
values = ["{address}", "{other}"]
[dictionaries.transactions]
values = ["{tx_hash}"]

[[operations]]
include-path = ["/admin/api/approvals/{{id}}", "/admin/api/approvals/{{id}}/approve",
                "/admin/api/approvals/{{id}}/reject"]
parameters = {{ "path.id" = {{ dictionary = "approvals", probability = 0.5 }} }}
[[operations]]
include-path = "/admin/api/users/{{id}}/disable"
parameters = {{ "path.id" = {{ dictionary = "users", probability = 0.5 }} }}
[[operations]]
include-path = "/admin/api/api-keys/{{id}}/revoke"
parameters = {{ "path.id" = {{ dictionary = "keys", probability = 0.5 }} }}
[[operations]]
include-path = "/admin/api/accounts/{{address}}"
parameters = {{ "path.address" = {{ dictionary = "accounts", probability = 0.5 }} }}
[[operations]]
include-path = "/admin/api/transactions/{{hash}}"
parameters = {{ "path.hash" = {{ dictionary = "transactions", probability = 0.5 }} }}

[[operations]]
include-path = {semantic}
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 429]
"""


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True) as url:
        yield url


async def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path
) -> None:
    admins = await admin_stack(anvil, database_url, softhsm_module, auth_failure_burst=100_000,
                               auth_failure_rate=100_000)  # fmt: skip
    stack = admins.stack
    reports = tmp_path / "schemathesis-report"
    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        admin = AdminClient(url, session, admins.api_key["ada"])
        await admin.ok("PUT", "/policy", body={"source": POLICY})
        # Something to read: transactions in the ledger, decisions in the audit log, a request
        # held for approval.
        hashes = []
        for value in ("0x1", "0x2", hex(5000)):
            status, answer = await proxy.call("eth_sendTransaction", [
                {"from": stack.address, "to": SINK, "value": value}])  # fmt: skip
            assert status == 200, answer
            hashes.append(answer.get("result"))
        approval = answer["error"]["data"]["approval_id"]
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG.format(
            approval=approval, key_id=stack.api_key.split("_")[1], address=stack.address,
            other=stack.other_address, tx_hash=hashes[0], semantic=SEMANTIC))  # fmt: skip
        # The API key travels in the environment, never on a command line; schemathesis keeps
        # its cache (.schemathesis/) in its working directory: the test's, not the project.
        env = {**os.environ, "QSIGNER_FUZZ_API_KEY": admins.api_key["ada"]}
        st = Path(sys.executable).parent / "schemathesis"
        process = await asyncio.create_subprocess_exec(
            str(st), "--config-file", str(config), "run", f"{url}/admin/api/openapi.json",
            "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
            "--workers", "1", "--phases", "examples,coverage,fuzzing", "--no-color",
            "--generation-database", "none", "--report", "json,junit", "--report-dir",
            str(reports), env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    summary = text[text.rfind("=== SUMMARY ===") :] if "=== SUMMARY ===" in text else text[-3000:]
    print(summary)
    for secret in admins.secrets():
        assert secret not in text
    assert process.returncode == 0, f"schemathesis found problems (see {tmp_path}):\n" + (
        text[-8000:] if len(text) < 200_000 else summary)  # fmt: skip
    [report] = reports.glob("json-*.json")
    run = json.loads(report.read_text())
    figures = {"operations": run["operations"]["tested"],
               "test cases": run["test_cases"]["generated"],
               "findings": run["test_cases"]["unique_failures"],
               "seconds": round(run["running_time"], 1)}  # fmt: skip
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    print("schemathesis:", figures)
    assert run["operations"]["tested"] == len(document()["paths"]) + sum(
        len(item) - 1 for item in document()["paths"].values()
    ), run["operations"]
    assert run["failures"] == [] and run["errors"] == [], run["failures"]
