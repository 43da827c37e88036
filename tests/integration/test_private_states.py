"""GoQuorum multi-tenancy (issue 13, item 9): the `Quorum-PSI` header reaches the node only when
the caller's organisation holds that private state (`org set-psi`), else the call is refused
with 4100; an organisation with exactly one PSI has it sent when the caller gives none, one with
several must name one; once any organisation holds PSIs, a caller whose organisation holds none
is refused (the node's default state may be another organisation's). Checked on what a
recording node actually received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.cli import Cli, query
from tests.support.tenants import Tenants, tenants, within_a_second


def _psis(database_url: str, org: str) -> list[str]:
    rows = query(database_url, """SELECT p.psi FROM organisation_private_states p
                                  JOIN organisations o ON o.id = p.organisation_id
                                  WHERE o.name = $1 ORDER BY p.psi""", org)  # fmt: skip
    return [r["psi"] for r in rows]


def test_set_psi_from_the_command_line(cli: Cli, database_url: str) -> None:
    cli.ok("db", "upgrade")
    cli.ok("org", "create", "acme")
    assert cli.ok("org", "set-psi", "--org", "acme", "PS1", "PS2", "PS1") == "PS1 PS2"
    assert _psis(database_url, "acme") == ["PS1", "PS2"]
    assert cli.ok("org", "set-psi", "--org", "acme", "PS3") == "PS3"  # replaces the set
    assert _psis(database_url, "acme") == ["PS3"]
    cli.bad("org", "set-psi", "--org", "nope", "PS1", match="no organisation named 'nope'")
    for wrong in ("bad psi", "", "x" * 200, "ps\u00e9"):
        cli.bad("org", "set-psi", "--org", "acme", "PS4", wrong, match="a PSI is")
    assert _psis(database_url, "acme") == ["PS3"]  # a refused command changes nothing
    result = cli.run("org", "set-psi", "--org", "acme")  # none: cleared
    assert result.returncode == 0 and result.stdout == "\n", result
    assert "no private states" in result.stderr
    assert _psis(database_url, "acme") == []


async def _answer(tenancy: Tenants, user: str, psi: str | None = None
                  ) -> tuple[dict[str, object], object]:  # fmt: skip
    """eth_getBalance as `user`, with `psi` in Quorum-PSI; (the JSON-RPC answer, the Quorum-PSI
    the node got, None if none or if nothing reached it)."""
    tenancy.node.clear()
    headers = {} if psi is None else {"Quorum-PSI": psi}
    _, answer = await tenancy.call(user, "eth_getBalance", [tenancy.ops, "latest"], headers)
    received = tenancy.node.calls("eth_getBalance")
    sent = {k.lower(): v for k, v in received[0].headers.items()} if received else {}
    return answer, sent.get("quorum-psi")


async def _read(tenancy: Tenants, user: str, psi: str | None = None) -> tuple[int, object]:
    """(JSON-RPC error code or 0, the Quorum-PSI the node got) for `_answer`."""
    answer, sent = await _answer(tenancy, user, psi)
    error = answer.get("error")
    return (error["code"] if isinstance(error, dict) else 0), sent


async def _refusal(tenancy: Tenants, user: str, psi: str | None = None) -> str:
    """The message of the 4100 refusal of `user`'s read (asserting that nothing was sent)."""
    answer, sent = await _answer(tenancy, user, psi)
    error = answer.get("error")
    assert isinstance(error, dict) and error["code"] == 4100 and sent is None, (answer, sent)
    return str(error["message"])


@pytest.fixture
async def tenancy(database_url: str, softhsm_conf: Path,
                  softhsm_module: str) -> AsyncIterator[Tenants]:  # fmt: skip
    async with tenants(database_url, softhsm_module) as served:
        yield served


async def test_the_header_reaches_the_node_only_for_the_organisations_psis(
    tenancy: Tenants, cli: Cli, database_url: str
) -> None:
    # No PSI configured: a caller's header is refused, nothing is sent without one.
    assert await _read(tenancy, "alice", "PS-ACME") == (4100, None)
    assert await _read(tenancy, "alice") == (0, None)

    cli.ok("org", "set-psi", "--org", "acme", "PS-ACME", "PS-ACME-2")
    cli.ok("org", "set-psi", "--org", "globex", "PS-GLOBEX")

    async def acme_holds_its_psi() -> bool:
        return await _read(tenancy, "alice", "PS-ACME") == (0, "PS-ACME")

    await within_a_second(acme_holds_its_psi)  # the running proxy saw the change
    assert await _read(tenancy, "bob", "PS-ACME-2") == (0, "PS-ACME-2")
    assert await _read(tenancy, "alice", "PS-GLOBEX") == (4100, None)  # another org's state
    assert await _read(tenancy, "alice", "ps-acme") == (4100, None)  # PSIs are exact
    # Two PSIs and none named: refused, since the node's default state may be another's.
    message = await _refusal(tenancy, "alice")
    assert "Quorum-PSI" in message and "globex" not in message and "GLOBEX" not in message
    assert await _read(tenancy, "gina") == (0, "PS-GLOBEX")  # exactly one: always sent
    assert await _read(tenancy, "gina", "PS-GLOBEX") == (0, "PS-GLOBEX")
    assert await _read(tenancy, "gina", "PS-ACME") == (4100, None)

    # The check is served from memory: a change behind the proxy's back (no NOTIFY) is not
    # seen, while `org set-psi` (which notifies) is, within a second.
    conn = await asyncpg.connect(database_url)
    await conn.execute("DELETE FROM organisation_private_states WHERE psi = 'PS-ACME'")
    await conn.close()
    assert await _read(tenancy, "alice", "PS-ACME") == (0, "PS-ACME")
    cli.ok("org", "set-psi", "--org", "acme")

    async def acme_psis_cleared() -> bool:
        return await _read(tenancy, "alice", "PS-ACME-2") == (4100, None)

    await within_a_second(acme_psis_cleared)
    assert await _read(tenancy, "gina") == (0, "PS-GLOBEX")


async def test_once_any_organisation_holds_psis_a_caller_without_one_is_refused(
    tenancy: Tenants, cli: Cli, database_url: str
) -> None:
    # No organisation holds a PSI (no multi-tenancy): nothing is sent, and that is remembered.
    assert await _read(tenancy, "alice") == (0, None)
    assert await _read(tenancy, "gina") == (0, None)

    # globex opts the deployment into multi-tenancy: acme holds no PSI, so leaving the header out
    # would read the node's default state (perhaps globex's): refused, whatever the method.
    cli.ok("org", "set-psi", "--org", "globex", "PS-GLOBEX")

    async def acme_refused() -> bool:
        return await _read(tenancy, "alice") == (4100, None)

    await within_a_second(acme_refused)  # the running proxy saw the change
    message = await _refusal(tenancy, "alice")
    assert "org set-psi" in message and "acme" in message, message
    assert "globex" not in message and "GLOBEX" not in message, message
    assert await _read(tenancy, "bob") == (4100, None)
    assert await _read(tenancy, "alice", "PS-GLOBEX") == (4100, None)
    status, answer = await tenancy.call("alice", "eth_accounts", [])
    assert answer["error"]["code"] == 4100, (status, answer)
    assert await _read(tenancy, "gina") == (0, "PS-GLOBEX")

    # The check is served from memory: rows removed behind the proxy's back (no NOTIFY) are not
    # seen, while `org set-psi` (which notifies) is.
    conn = await asyncpg.connect(database_url)
    await conn.execute("DELETE FROM organisation_private_states")
    await conn.close()
    assert await _read(tenancy, "alice") == (4100, None)
    cli.ok("org", "set-psi", "--org", "acme", "PS-ACME")

    async def acme_served() -> bool:
        return await _read(tenancy, "alice") == (0, "PS-ACME")

    await within_a_second(acme_served)

    # Every organisation's PSIs cleared: back to a deployment without multi-tenancy.
    cli.ok("org", "set-psi", "--org", "globex")
    cli.ok("org", "set-psi", "--org", "acme")

    async def no_tenancy() -> bool:
        return await _read(tenancy, "alice") == (0, None)

    await within_a_second(no_tenancy)
    assert await _read(tenancy, "gina") == (0, None)
    assert await _read(tenancy, "gina", "PS-GLOBEX") == (4100, None)


# GoQuorum's private reads (the private-transaction issue): the same binding as every call.
PRIVATE_READS = {
    "eth_getQuorumPayload": ["0x" + "ab" * 64],
    "eth_getPrivateTransactionReceipt": ["0x" + "cd" * 32],
    "eth_getPrivacyPrecompileAddress": [],
    "eth_getContractPrivacyMetadata": ["0x" + "ef" * 20],
}


@pytest.mark.parametrize("method", sorted(PRIVATE_READS))
async def test_private_reads_carry_only_the_organisations_psi(
    tenancy: Tenants, cli: Cli, method: str
) -> None:
    """Organisation A cannot read with organisation B's PSI; A's single PSI is sent when the
    caller names none. Checked on what reached the node."""
    cli.ok("org", "set-psi", "--org", "acme", "PS-ACME")
    cli.ok("org", "set-psi", "--org", "globex", "PS-GLOBEX")

    async def read(user: str, psi: str | None) -> tuple[int, object]:
        tenancy.node.clear()
        headers = {} if psi is None else {"Quorum-PSI": psi}
        _, answer = await tenancy.call(user, method, PRIVATE_READS[method], headers)
        received = tenancy.node.calls(method)
        sent = {k.lower(): v for k, v in received[0].headers.items()} if received else {}
        error = answer.get("error")
        return (error["code"] if isinstance(error, dict) else 0), sent.get("quorum-psi")

    async def bound() -> bool:
        return await read("alice", None) == (0, "PS-ACME")

    await within_a_second(bound)
    assert await read("alice", "PS-GLOBEX") == (4100, None)  # B's state: refused, not sent
    assert await read("alice", "PS-ACME") == (0, "PS-ACME")
    assert await read("gina", "PS-ACME") == (4100, None)
    assert await read("gina", None) == (0, "PS-GLOBEX")
