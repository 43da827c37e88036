"""`quorum-signer tx show HASH` and `tx list` (contract section 1) run as a user runs them, on
ledger rows the proxy itself wrote: transactions sent, refused and signed through the proxy in
process, in front of real anvil, PostgreSQL and SoftHSM. Bad input exits 2, an unknown hash 1."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from signer.ecdsa import keccak256
from tests.support.anvil import rpc, run_anvil
from tests.support.cli import Cli, query
from tests.support.forwarder import forwarder
from tests.support.proxy_client import Proxy
from tests.support.stack import CHAIN_ID, build_stack, in_process

HEADER = "nonce\tstate\thash\tuser\tcreated\taccount\tchain"
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def anvil() -> Any:
    with run_anvil(chain_id=CHAIN_ID, quorum_like=True, extra=("--block-time", "1")) as url:
        yield url


def _show(cli: Cli, tx_hash: str) -> dict[str, str]:
    result = cli.run("tx", "show", tx_hash)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def _list(cli: Cli, *args: str) -> list[list[str]]:
    result = cli.run("tx", "list", *args)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header == HEADER
    return [row.split("\t") for row in rows]


async def _until_mined(database_url: str, count: int, seconds: float = 20) -> None:
    """The tracker records receipts on its own time: wait for `count` rows marked mined."""
    sql = "SELECT count(*) FROM ledger_transactions WHERE state = 'mined'"
    deadline = asyncio.get_running_loop().time() + seconds
    while (await asyncio.to_thread(query, database_url, sql))[0][0] < count:
        assert asyncio.get_running_loop().time() < deadline, "the ledger saw no receipts"
        await asyncio.sleep(0.2)


async def test_show_and_list_tell_what_the_ledger_knows(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str, cli: Cli
) -> None:
    async with forwarder(anvil) as node:
        stack = await build_stack(anvil, database_url, softhsm_module, upstreams=(node.url,))
        async with in_process(stack.settings) as (url, session):
            proxy = Proxy(url, session, stack)
            tx = {"from": stack.address, "to": stack.address, "value": "0x1"}

            async def call(method: str, request_id: str) -> Any:
                headers = {**proxy.jwt(True), "X-Request-Id": request_id}
                return (await proxy.call(method, [tx], headers=headers))[1]

            refusal = {"code": -32000, "message": "intrinsic gas too low"}
            node.errors["eth_sendRawTransaction"] = refusal
            refused = await call("eth_sendTransaction", "req-refused")
            assert refused["error"]["message"] == "intrinsic gas too low", refused
            del node.errors["eth_sendRawTransaction"]
            first = (await call("eth_sendTransaction", "req-first"))["result"]
            second = (await call("eth_sendTransaction", "req-second"))["result"]
            signed = (await call("eth_signTransaction", "req-signed"))["result"]
            await _until_mined(database_url, 2)
    released = "SELECT tx_hash FROM ledger_transactions WHERE state = 'released'"
    (refused_hash,) = [
        "0x" + row["tx_hash"].hex()
        for row in await asyncio.to_thread(query, database_url, released)
    ]
    signed_hash = "0x" + keccak256(bytes.fromhex(signed["raw"][2:])).hex()
    on_chain = {h: rpc(anvil, "eth_getTransactionReceipt", [h]) for h in (first, second)}
    nonce_of = {h: int(rpc(anvil, "eth_getTransactionByHash", [h])["nonce"], 16)
                for h in (first, second)}  # fmt: skip

    # A mined transaction: everything, times in order.
    shown = _show(cli, first)
    assert list(shown) == ["hash", "account", "chain id", "nonce", "state", "kind", "private",
                           "user", "request id", "node", "block", "status", "reason",
                           "send attempts", "created", "signed", "sent", "mined"]  # fmt: skip
    assert shown == {
        **shown,
        "hash": first, "account": stack.address, "chain id": str(CHAIN_ID),
        "nonce": str(nonce_of[first]), "state": "mined", "kind": "send", "private": "-",
        "user": "alice",
        "request id": "req-first", "node": node.url,
        "block": str(int(on_chain[first]["blockNumber"], 16)), "status": "1 (success)",
        "reason": "-", "send attempts": "1",
    }  # fmt: skip
    times = [shown[name] for name in ("created", "signed", "sent", "mined")]
    for moment in times:
        assert re.fullmatch(ISO_UTC, moment), moment
    assert times == sorted(times, key=datetime.fromisoformat)
    # Any case of the hash finds it.
    assert _show(cli, "0X" + first[2:].upper()) == shown

    # Refused by the node: released, with the node's reason, never sent.
    refused_shown = _show(cli, refused_hash)
    assert {name: refused_shown[name] for name in ("state", "request id", "reason", "sent",
            "block", "status", "mined", "send attempts")} == {
        "state": "released", "request id": "req-refused",
        "reason": "refused by the node: intrinsic gas too low", "sent": "-", "block": "-",
        "status": "-", "mined": "-", "send attempts": "0"}  # fmt: skip
    # Signed for the caller (eth_signTransaction) and not sent yet.
    signed_shown = _show(cli, signed_hash)
    assert (signed_shown["state"], signed_shown["kind"], signed_shown["node"]) == (
        "signed", "sign", "-")  # fmt: skip
    assert int(signed_shown["nonce"]) == int(signed["tx"]["nonce"], 16)

    # The list: newest first, every row of the ledger.
    rows = _list(cli)
    assert [row[2] for row in rows] == [signed_hash, second, first, refused_hash]
    assert [row[1] for row in rows] == ["signed", "mined", "mined", "released"]
    assert [row[0] for row in rows[1:3]] == [str(nonce_of[second]), str(nonce_of[first])]
    assert {(row[3], row[5], row[6]) for row in rows} == {("alice", stack.address, str(CHAIN_ID))}
    assert all(re.fullmatch(ISO_UTC, row[4]) for row in rows)
    assert [row[4] for row in rows] == sorted((row[4] for row in rows), reverse=True)
    # Filters.
    assert [row[2] for row in _list(cli, "--state", "mined")] == [second, first]
    assert [row[2] for row in _list(cli, "--state", "released")] == [refused_hash]
    assert _list(cli, "--account", stack.address.lower()) == rows
    assert _list(cli, "--account", stack.address, "--state", "signed") == rows[:1]
    assert _list(cli, "--limit", "1") == rows[:1]
    assert _list(cli, "--account", stack.other_address) == []


def test_bad_input_exits_2_an_unknown_hash_1(cli: Cli) -> None:
    unknown = "0x" + "ab" * 32
    # A database without the ledger's schema: the fix is named.
    cli.bad("tx", "list", match=r"no nonce ledger yet: run `quorum-signer db upgrade`")
    cli.bad("tx", "show", unknown, match="db upgrade")
    cli.ok("db", "upgrade")

    for text in ("0x1234", "ab" * 32, "0x" + "g" * 64, "0x" + "ab" * 33, ""):
        cli.bad("tx", "show", text, match="HASH must be a transaction hash: 0x and 64 hex digits")
    cli.bad("tx", "show", match="required: HASH")
    cli.bad("tx", "list", "--account", "0x1234", match="--account must be a 20-byte address")
    cli.bad("tx", "list", "--account", "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            match="wrong EIP-55 checksum")  # fmt: skip
    cli.bad("tx", "list", "--account", "treasury", match="0x-prefixed hex")
    cli.bad("tx", "list", "--state", "pending", match="invalid choice: 'pending'")
    cli.bad("tx", "list", "--limit", "0", match="positive number")
    cli.bad("tx", "list", "--limit", "x", match="invalid int value")

    # Well formed but not in the ledger: an answer, not a failure of the input.
    cli.broken("tx", "show", unknown, match=f"no transaction {unknown} in the nonce ledger")
    empty = cli.run("tx", "list")
    assert (empty.returncode, empty.stdout, empty.stderr) == (
        0, HEADER + "\n", "no transaction in the ledger matches\n")  # fmt: skip
    for command in (("tx", "show"), ("tx", "list")):
        help_text = cli.run(*command, "--help")
        assert help_text.returncode == 0 and "usage: quorum-signer tx" in help_text.stdout

    # The database unreachable: the system fails, exit 1, the password not shown.
    down = Cli(dict(cli.env, QSIGNER_DATABASE_URL="postgresql://nobody:hunter2@127.0.0.1:1/x"),
               cli.tmp)  # fmt: skip
    for args in (("tx", "show", unknown), ("tx", "list")):
        line = down.broken(*args, match="QSIGNER_DATABASE_URL: cannot connect")
        assert "hunter2" not in line


def test_one_hash_in_two_rows_and_text_from_callers(cli: Cli, database_url: str) -> None:
    """The same bytes stored again after a refusal: both rows, the live one first. A request id
    is whatever a caller put in X-Request-Id: shown on one line, its control characters defused."""
    cli.ok("db", "upgrade")
    tx_hash = bytes(range(32))
    for state, request_id in (("released", "before"), ("signed", "evil\x1b[2J\tid\nnext")):
        query(database_url, """INSERT INTO ledger_transactions (chain_id, account, nonce, state,
            kind, tx_hash, raw, user_id, request_id, reason) VALUES (1, $1, 7, $2, 'send', $3,
            '\\x00', 'bob', $4, $5)""", b"\x11" * 20, state, tx_hash, request_id,
            "refused by the node: nonce too low\n(twice)" if state == "released" else None,
        )  # fmt: skip
    result = cli.run("tx", "show", "0x" + tx_hash.hex())
    assert result.returncode == 0
    assert result.stderr == "2 rows of the ledger hold this hash: the live one first\n"
    live, gave_up = (dict(line.split(": ", 1) for line in block.splitlines())
                     for block in result.stdout.split("\n\n"))  # fmt: skip
    assert (live["state"], live["request id"], live["reason"]) == (
        "signed", "evil?[2J id next", "-")  # fmt: skip
    assert (gave_up["state"], gave_up["request id"], gave_up["reason"]) == (
        "released", "before", "refused by the node: nonce too low (twice)")  # fmt: skip
