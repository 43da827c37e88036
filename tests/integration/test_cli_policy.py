"""`quorum-signer policy set / show`, `approve` and `reject` run as a user runs them, against a
proxy in process in front of real anvil, PostgreSQL and SoftHSM: a bad file names its line and
field and installs nothing, a good one is in force at once, a held request is approved by
another admin and goes through, and a dry-run prints the decisions a draft would change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signer.pkcs11 import Hsm
from tests.support.anvil import run_anvil
from tests.support.cli import Cli, make_cli
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process

SINK = "0x000000000000000000000000000000000000dEaD"
HOLD_BIG = """\
version: 1
rules:
  - name: big-transfers
    action: hold
    match: {value: {gt: "1 ether"}}
"""


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True) as url:
        yield url


async def _stack(anvil: str, database_url: str, module: str, cli: Cli) -> Stack:
    stack = await build_stack(anvil, database_url, module)
    from proxy import store
    from proxy.identity import Identity

    pool = await store.connect(database_url, max_size=2)
    try:
        with Hsm(module, sessions_per_token=1) as hsm:
            await Identity(pool, stack.settings).add_user(
                "acme", "ada", "admin", hsm, stack.pin, "ada-password-1",
                token_label=stack.token_label)  # fmt: skip
    finally:
        await pool.close()
    return stack


async def _send(proxy: Proxy, value: int) -> dict[str, Any]:
    _, answer = await proxy.call("eth_sendTransaction", [
        {"from": proxy.stack.address, "to": SINK, "value": hex(value)}])  # fmt: skip
    return dict(answer)


async def test_policy_set_show_approve_reject_and_dry_run(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path
) -> None:
    cli = make_cli(database_url, softhsm_conf, tmp_path)
    stack = await _stack(anvil, database_url, softhsm_module, cli)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: x\n    action: maybe\n    match: {}\n")
    cli.bad("policy", "set", "--org", "acme", str(bad), match=r"line 4.*rules\[0\]\.action")
    assert cli.run("policy", "show", "--org", "acme").stdout == ""  # nothing was installed
    cli.bad("policy", "set", "--org", "nobody", str(bad))
    good = tmp_path / "hold.yaml"
    good.write_text(HOLD_BIG)
    assert cli.ok("policy", "set", "--org", "acme", str(good)) == "1"
    shown = cli.run("policy", "show", "--org", "acme")
    assert shown.returncode == 0 and shown.stdout == HOLD_BIG, shown

    async with in_process(stack.settings) as (url, session):
        proxy = Proxy(url, session, stack)
        held = await _send(proxy, 2 * 10**18)
        assert held["error"]["data"]["reason"] == "approval_required", held
        approval = held["error"]["data"]["approval_id"]
        assert "result" in await _send(proxy, 10**17)  # below the threshold: not held
        alice = cli.secret_file("alice.pw", stack.password)
        cli.bad("approve", approval, "--user", "alice", "--password-file", alice,
                match="admin")  # fmt: skip
        ada = cli.secret_file("ada.pw", "ada-password-1")
        wrong = cli.secret_file("wrong.pw", "not-her-password")
        assert cli.run("approve", approval, "--user", "ada", "--password-file",
                       wrong).returncode != 0  # fmt: skip
        assert cli.ok("approve", approval, "--user", "ada", "--password-file", ada) == "approved"
        cli.bad("reject", approval, "--user", "ada", "--password-file", ada, match="already")
        assert "result" in await _send(proxy, 2 * 10**18)
        again = await _send(proxy, 2 * 10**18)
        assert cli.ok("reject", again["error"]["data"]["approval_id"], "--user", "ada",
                      "--password-file", ada) == "rejected"  # fmt: skip
        refused = await _send(proxy, 2 * 10**18)
        assert refused["error"]["data"]["reason"] == "approval_rejected", refused
        broke = await _send(proxy, 10**24)  # above the balance: a check on the chain refuses
        assert broke["error"]["data"]["reason"] == "insufficient_funds", broke

    # The policy in force, replayed against its own decisions, changes none of them (approved,
    # rejected and chain-refused requests included).
    same = cli.run("policy", "set", "--org", "acme", "--dry-run", str(good))
    assert same.returncode == 0 and same.stdout == "", same

    # Everything allowed instead: the held and the rejected requests would change.
    draft = tmp_path / "allow.yaml"
    draft.write_text("version: 1\ndefault: allow\n")
    result = cli.run("policy", "set", "--org", "acme", "--dry-run", str(draft))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and all("\tallow" in line for line in lines), lines
    assert any("hold(big-transfers)" in line for line in lines), lines
    assert cli.ok("policy", "show", "--org", "acme") != ""  # the dry-run installed nothing
    shown = cli.run("policy", "show", "--org", "acme")
    assert shown.stdout == HOLD_BIG
