"""The audit log on a real PostgreSQL (and SoftHSM for checkpoints): concurrent appends through
one and two replicas keep one gap-free chain; tampering done with the append-only trigger
bypassed is named by `audit verify`; a chain rewritten consistently is caught against an earlier
export's signed checkpoint; identity's security events land in the log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from proxy import store
from proxy.audit import AuditEvent, AuditLog
from proxy.audit.checkpoints import create_key
from proxy.audit.export import checkpoints as stored_checkpoints
from proxy.audit.export import verify_database
from proxy.audit.records import GENESIS, Checkpoint
from proxy.errors import LockedOut, Unauthorized
from proxy.identity import Identity
from proxy.settings import Settings
from signer.pkcs11 import Hsm
from tests.conftest import SoftHsmToken
from tests.support.cli import Cli
from tests.support.identity import acme, two_pools


@pytest.fixture
async def pools(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """Two pools on one migrated database: what two replicas have."""
    async with two_pools(database_url) as both:
        yield both


def decision(n: int, organisation: str | None = "acme") -> AuditEvent:
    return AuditEvent("decision", organisation, f"user-{n % 7}", "allow", request_id=f"r{n}",
                      method="eth_sendTransaction", nonce=n, detail={"n": n})  # fmt: skip


async def chain_rows(pool: asyncpg.Pool, chain: str) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT seq, at, content, prev_hash, hash FROM audit_log WHERE chain = $1 ORDER BY seq",
        chain))  # fmt: skip


def assert_linked(rows: list[asyncpg.Record]) -> None:
    """Seq 1, 2, ... with no gap, each row's hash SHA-256(prev_hash || content) and its
    prev_hash the hash of the row before (recomputed here, independently of the product)."""
    prev = GENESIS
    for expected_seq, row in enumerate(rows, 1):
        assert row["seq"] == expected_seq
        assert row["prev_hash"] == prev
        assert row["hash"] == hashlib.sha256(prev + row["content"].encode()).digest()
        prev = row["hash"]


async def test_concurrent_appends_from_two_replicas_keep_one_gap_free_chain(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    first, second = AuditLog(pools[0]), AuditLog(pools[1])
    try:
        # 400 events from 400 tasks at once, alternating replicas, on one chain; and a few on
        # another chain and on the chain of no organisation, interleaved.
        await asyncio.gather(*(
            (first if n % 2 else second).append(decision(n)) for n in range(400)
        ), *(first.append(decision(n, "other")) for n in range(20)),
            *(second.append(decision(n, None)) for n in range(5)))  # fmt: skip

        # append_in, in transactions of the callers, meanwhile appends go on
        async def in_transaction(n: int) -> None:
            async with pools[n % 2].acquire() as conn, conn.transaction():
                await (first if n % 2 else second).append_in(
                    conn, [decision(1000 + n), decision(2000 + n)]
                )

        await asyncio.gather(*(in_transaction(n) for n in range(20)),
                             *(first.append(decision(3000 + n)) for n in range(50)))  # fmt: skip
    finally:
        await first.close()
        await second.close()

    rows = await chain_rows(pools[0], "acme")
    assert len(rows) == 400 + 40 + 50
    assert_linked(rows)
    contents = [json.loads(r["content"]) for r in rows]
    assert sorted(c["nonce"] for c in contents) == sorted(
        [*range(400), *range(1000, 1020), *range(2000, 2020), *range(3000, 3050)]
    )
    # The two events of one append_in are adjacent: one transaction, one statement.
    for n in range(20):
        seq = next(i for i, c in enumerate(contents) if c["nonce"] == 1000 + n)
        assert contents[seq + 1]["nonce"] == 2000 + n
    assert_linked(await chain_rows(pools[0], "other"))
    assert len(await chain_rows(pools[0], "-")) == 5
    assert_linked(await chain_rows(pools[0], "-"))
    first_content = contents[0]
    assert first_content["kind"] == "decision" and first_content["time"].endswith("Z")
    assert rows[0]["content"] == json.dumps(first_content, sort_keys=True, separators=(",", ":"))
    async with pools[1].acquire() as conn, conn.transaction(isolation="repeatable_read"):
        reports = await verify_database(conn)
    assert [(r.chain, r.rows, r.broken) for r in reports] == [
        ("-", 5, None), ("acme", 490, None), ("other", 20, None)]  # fmt: skip


async def test_append_in_rolls_back_with_the_callers_transaction(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    audit = AuditLog(pools[0])
    async with pools[0].acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await audit.append_in(conn, [decision(1)])
                raise RuntimeError("the decision failed")
    await audit.append(decision(2))
    rows = await chain_rows(pools[0], "acme")
    assert [json.loads(r["content"])["nonce"] for r in rows] == [2]
    assert_linked(rows)


async def test_a_bad_event_fails_alone(pools: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    audit = AuditLog(pools[0])
    bad = AuditEvent("decision", "acme", "u", "allow", detail={"x": object()})
    results = await asyncio.gather(audit.append(bad), audit.append(decision(1)),
                                   audit.append(AuditEvent("nonsense", "acme", "u", "x")),
                                   return_exceptions=True)  # fmt: skip
    assert isinstance(results[0], TypeError) and results[1] is None
    assert isinstance(results[2], ValueError)
    assert len(await chain_rows(pools[0], "acme")) == 1
    await audit.close()


async def test_the_log_refuses_updates_and_deletes(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    audit = AuditLog(pools[0])
    await audit.append(decision(1))
    for sql in ("UPDATE audit_log SET content = '{}'", "DELETE FROM audit_log",
                "TRUNCATE audit_log"):  # fmt: skip
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pools[0].execute(sql)
    assert len(await chain_rows(pools[0], "acme")) == 1


# --- the command line: checkpoints, export, verify, tampering --------------------------------


async def _seed(database_url: str, count: int, organisation: str = "acme") -> None:
    pool = await store.connect(database_url, max_size=2)
    try:
        await store.upgrade(pool)
        audit = AuditLog(pool)
        start = await pool.fetchval(
            "SELECT coalesce(max(seq), 0) FROM audit_log WHERE chain = $1", organisation
        )
        for n in range(count):
            await audit.append(decision(start + n + 1, organisation))
        await audit.close()
    finally:
        await pool.close()


def seed(database_url: str, count: int, organisation: str = "acme") -> None:
    asyncio.run(_seed(database_url, count, organisation))


def as_superuser(database_url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Tamper as a database administrator would: the append-only triggers bypassed."""

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("SET session_replication_role = replica")
            async with conn.transaction():
                for sql, args in statements:
                    await conn.execute(sql, *args)
        finally:
            await conn.close()

    asyncio.run(run())


def with_key(cli: Cli, token: tuple[str, str]) -> tuple[str, str]:
    """An audit key on the test's token: (its address, the PIN file)."""
    label, pin = token
    pin_file = cli.secret_file("pin", pin)
    return cli.ok(
        "audit", "key", "create", "--token-label", label, "--pin-file", pin_file
    ), pin_file


def export(cli: Cli, name: str, *args: str) -> Path:
    result = cli.run("audit", "export", *args)
    assert result.returncode == 0, result.stderr
    path = cli.tmp / name
    path.write_text(result.stdout)
    return path


def export_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_checkpoint_export_and_verify_through_the_command_line(
    cli: Cli, token: tuple[str, str], database_url: str
) -> None:
    label, pin = token
    assert cli.ok("db", "upgrade") == str(store.migrations()[-1][0])
    cli.ok("org", "create", "acme")
    pin_file = cli.secret_file("pin", pin)
    password_file = cli.secret_file("password", "correct horse")
    cli.ok("account", "create", "--org", "acme", "--token-label", label, "--pin-file", pin_file)
    cli.ok("user", "add", "--org", "acme", "--user", "alice", "--pin-file", pin_file,
           "--password-file", password_file)  # fmt: skip
    created = cli.run("apikey", "create", "--user", "alice", "--password-file", password_file)
    key_id = re.search(r"key id: (\w+)", created.stderr).group(1)  # type: ignore[union-attr]
    cli.ok("apikey", "revoke", key_id)
    cli.ok("user", "disable", "--user", "alice")
    seed(database_url, 20)
    seed(database_url, 3, "globex")

    cli.bad("audit", "checkpoint", "--pin-file", pin_file, match="no audit key")
    assert cli.ok("audit", "verify") == "intact"
    address = cli.ok("audit", "key", "create", "--token-label", label, "--pin-file", pin_file)
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address)
    assert cli.ok("audit", "checkpoint", "--pin-file", pin_file) == "2"  # acme and globex
    assert cli.ok("audit", "checkpoint", "--pin-file", pin_file) == "0"  # nothing new
    verified = cli.run("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.splitlines()[-1] == "intact"
    assert "acme\t24 rows\thead 24\t1 checkpoints\tintact" in verified.stdout

    path = export(cli, "full.jsonl")
    lines = export_lines(path)
    assert lines[0]["format"] == "quorum-signer audit export"
    assert [k["address"] for k in lines[0]["keys"]] == [address]
    rows = [line for line in lines if line.get("type") == "row"]
    assert [(r["chain"], r["seq"]) for r in rows] == [
        *(("acme", n) for n in range(1, 25)), *(("globex", n) for n in range(1, 4))]  # fmt: skip
    security = [json.loads(r["content"])["action"] for r in rows[:4]]
    assert security == ["user_added", "apikey_created", "apikey_revoked", "user_disabled"]
    checkpoints = [line for line in lines if line.get("type") == "checkpoint"]
    assert {(c["chain"], c["seq"]) for c in checkpoints} == {("acme", 24), ("globex", 3)}
    assert all(line["type"] == "checkpoint" for line in lines[1 + len(rows) :])
    for checkpoint in checkpoints:  # the signature recovers the audit key's address
        signer = Account.recover_message(encode_defunct(text=checkpoint["content"]),
                                         signature=checkpoint["signature"])  # fmt: skip
        assert signer == address
        assert json.loads(checkpoint["content"])["hash"] == checkpoint["hash"]
    assert cli.ok("audit", "verify", "--file", str(path)) == "intact"
    assert cli.ok("audit", "verify", "--org", "globex") == "intact"
    assert cli.ok("audit", "verify", "--against", str(path)) == "intact"

    # --since: the rows from then on, verifiable alone; a time after everything: none.
    since = json.loads(rows[10]["content"])["time"]
    partial = export(cli, "partial.jsonl", "--since", since)
    partial_rows = [r for r in export_lines(partial) if r.get("type") == "row"]
    assert partial_rows and all(r["at"] >= since for r in partial_rows)
    assert len(partial_rows) < len(rows)
    assert cli.ok("audit", "verify", "--file", str(partial)) == "intact"
    assert len(export_lines(export(cli, "none.jsonl", "--since", "2999-01-01T00:00:00Z"))) == 1

    # Bad input: exit 2 and one line.
    cli.bad("audit", "export", "--since", "yesterday", match="--since")
    cli.bad("audit", "verify", "--file", str(cli.tmp / "nope.jsonl"), match="cannot read")
    cli.bad("audit", "verify", "--file", pin_file, match="not JSON|not an audit export")
    cli.bad("audit", "verify", "--org", "initech", match="no chain 'initech'")
    broken_file = cli.tmp / "broken.jsonl"
    broken_file.write_text(path.read_text().replace('"seq":5,', '"seq":"five",', 1))
    cli.bad("audit", "verify", "--file", str(broken_file), match="line 6: 'seq'")


TAMPERING = {
    "edited": (
        [
            (
                "UPDATE audit_log SET content = replace(content, '\"allow\"', '\"deny\"') "
                "WHERE chain = 'acme' AND seq = 9",
                (),
            )
        ],
        9,
        "edited",
    ),
    "deleted": ([("DELETE FROM audit_log WHERE chain = 'acme' AND seq = 9", ())], 9, "missing"),
    "cut off the end": (
        [("DELETE FROM audit_log WHERE chain = 'acme' AND seq = 20", ())],
        20,
        "missing",
    ),
    "swapped": (
        [
            ("UPDATE audit_log SET seq = 1000000 WHERE chain = 'acme' AND seq = 9", ()),
            ("UPDATE audit_log SET seq = 9 WHERE chain = 'acme' AND seq = 10", ()),
            ("UPDATE audit_log SET seq = 10 WHERE chain = 'acme' AND seq = 1000000", ()),
        ],
        9,
        "reordered",
    ),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_verify_names_the_first_tampered_row(
    how: str, cli: Cli, token: tuple[str, str], database_url: str
) -> None:
    statements, seq, word = TAMPERING[how]
    seed(database_url, 5)
    _, pin_file = with_key(cli, token)
    assert cli.ok("audit", "checkpoint", "--pin-file", pin_file) == "1"  # acme at seq 5
    seed(database_url, 15)
    seed(database_url, 4, "globex")
    assert cli.ok("audit", "verify") == "intact"
    as_superuser(database_url, *statements)
    line = cli.broken("audit", "verify", match=rf"chain 'acme' seq {seq}: {word}")
    assert "last verified checkpoint: chain 'acme' seq 5" in line
    assert cli.ok("audit", "verify", "--org", "globex") == "intact"
    # The audit key never vouches for the tampered chain; the intact one is signed.
    cli.broken("audit", "checkpoint", "--pin-file", pin_file,
               match=rf"not signed: chain 'acme' seq {seq}: {word}.*1 other chains")  # fmt: skip
    assert cli.ok("audit", "verify", "--org", "globex") == "intact"
    # An export of the tampered log carries the damage: the file fails the same way.
    damaged = export(cli, "damaged.jsonl")
    cli.broken("audit", "verify", "--file", str(damaged), match=rf"seq {seq}: {word}")


def _rewrite(database_url: str, from_seq: int, drop_checkpoints: bool) -> None:
    """Rewrite the acme chain from `from_seq` on, consistently: one row's content changed, every
    hash after it recomputed (and the head moved), as an administrator covering tracks would."""
    rows = asyncio.run(_rows(database_url))
    statements: list[tuple[str, tuple[object, ...]]] = []
    prev = rows[from_seq - 2]["hash"] if from_seq > 1 else GENESIS
    for row in rows[from_seq - 1 :]:
        content = row["content"]
        if row["seq"] == from_seq:
            content = content.replace('"allow"', '"deny"')
        new_hash = hashlib.sha256(prev + content.encode()).digest()
        statements.append(("UPDATE audit_log SET content = $1, prev_hash = $2, hash = $3 "
                           "WHERE chain = 'acme' AND seq = $4",
                           (content, prev, new_hash, row["seq"])))  # fmt: skip
        prev = new_hash
    statements.append(("UPDATE audit_heads SET hash = $1 WHERE chain = 'acme'", (prev,)))
    if drop_checkpoints:
        statements.append(("DELETE FROM audit_checkpoints", ()))
    as_superuser(database_url, *statements)


async def _rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await chain_rows(conn, "acme")  # type: ignore[arg-type]
    finally:
        await conn.close()


def test_a_consistent_rewrite_is_caught_against_an_earlier_export(
    cli: Cli, token: tuple[str, str], database_url: str
) -> None:
    seed(database_url, 10)
    address, pin_file = with_key(cli, token)
    assert cli.ok("audit", "checkpoint", "--pin-file", pin_file) == "1"  # acme at seq 10
    earlier = export(cli, "earlier.jsonl")
    # Only the header and the signed checkpoint: what the signature alone proves.
    signed_only = cli.tmp / "signed-only.jsonl"
    signed_only.write_text("".join(line + "\n" for line in earlier.read_text().splitlines()
                                   if '"type":"row"' not in line))  # fmt: skip
    seed(database_url, 5)  # the log grows after the export: still consistent with it
    assert cli.ok("audit", "verify", "--against", str(earlier)) == "intact"
    assert cli.ok("audit", "verify", "--against", str(signed_only)) == "intact"

    # Rewritten with the checkpoints left in place: the database's own checkpoint catches it.
    _rewrite(database_url, 4, drop_checkpoints=False)
    cli.broken("audit", "verify", match=r"chain 'acme' seq 10: rewritten: .*checkpoint")
    # ... and with them deleted too, the chain is consistent in itself ...
    _rewrite(database_url, 4, drop_checkpoints=True)
    assert cli.ok("audit", "verify") == "intact"
    # ... but not with the export kept elsewhere: its rows, and its signed checkpoint alone.
    cli.broken("audit", "verify", "--against", str(earlier),
               match=r"chain 'acme' seq 4: rewritten: .*earlier export")  # fmt: skip
    cli.broken("audit", "verify", "--against", str(signed_only),
               match=r"chain 'acme' seq 10: rewritten: .*checkpoint signed at")  # fmt: skip
    # A forged export (the rewritten rows, signed by another key) does not stand in for it.
    forged = earlier.read_text().replace(address[2:], "11" * 20)
    (cli.tmp / "forged.jsonl").write_text(forged)
    cli.broken("audit", "verify", "--against", str(cli.tmp / "forged.jsonl"),
               match="earlier export .* does not verify itself")  # fmt: skip


# --- the server's checkpoint signer, and identity's security events --------------------------


async def test_the_server_signs_checkpoints_once_its_process_is_logged_in(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], hsm_token: SoftHsmToken, softhsm_module: str
) -> None:
    pool = pools[0]

    async def blocking(function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    address = await create_key(pool, hsm_token.hsm, hsm_token.label, hsm_token.pin, blocking)
    # A replica whose process never logged into the audit key's token signs nothing.
    with Hsm(softhsm_module) as other:
        elsewhere = AuditLog(pool, hsm=other, checkpoint_rows=10, checkpoint_seconds=3600)
        await asyncio.gather(*(elsewhere.append(decision(n)) for n in range(12)))
        assert elsewhere.checkpointer is not None
        assert await elsewhere.checkpointer.round() == []
        await elsewhere.close()
    # One logged in (here, as after a user's unlock) signs once 10 rows were appended.
    audit = AuditLog(pool, hsm=hsm_token.hsm, checkpoint_rows=10, checkpoint_seconds=3600)
    await audit.start()
    try:
        for n in range(12, 30):
            await audit.append(decision(n))
        for _ in range(100):
            if await pool.fetchval("SELECT count(*) FROM audit_checkpoints"):
                break
            await asyncio.sleep(0.05)
    finally:
        await audit.close()
    stored = await checkpoints_of(pool, "acme")
    assert len(stored) >= 1 and stored[0].seq >= 10
    for checkpoint in stored:
        assert checkpoint.problem({address}) is None
        assert checkpoint.hash == (await chain_rows(pool, "acme"))[checkpoint.seq - 1]["hash"]
    # Due by time: a chain whose last checkpoint is older than checkpoint_seconds.
    timely = AuditLog(pool, hsm=hsm_token.hsm, checkpoint_rows=1000, checkpoint_seconds=1)
    await timely.append(decision(99))
    assert timely.checkpointer is not None
    assert await timely.checkpointer.round() == []  # the last one is younger than a second
    await asyncio.sleep(1.1)
    (made,) = await timely.checkpointer.round()
    assert made.seq == 31 and made.problem({address}) is None
    await timely.close()


async def checkpoints_of(pool: asyncpg.Pool, chain: str) -> list[Checkpoint]:
    async with pool.acquire() as conn:
        return await stored_checkpoints(conn, chain)


async def test_security_events_through_the_real_unlock_path(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], hsm_token: SoftHsmToken
) -> None:
    settings = Settings(pbkdf2_iterations=100_000, lockout_attempts=2, lockout_seconds=60)
    pool = pools[0]
    identity = Identity(pool, settings)
    await acme(identity, hsm_token, {"alice": "right"})
    with pytest.raises(Unauthorized):
        await identity.unlock_with_password("alice", "wrong")
    with pytest.raises(Unauthorized):
        await identity.unlock_with_password("alice", "wrong again")  # the second locks
    with pytest.raises(LockedOut):
        await identity.unlock_with_password("alice", "right")
    rows = await chain_rows(pool, "acme")
    events = [json.loads(r["content"]) for r in rows]
    assert [(e["kind"], e["action"], e["user"]) for e in events] == [
        ("security", "user_added", "alice"),
        ("security", "wrong_password", "alice"),
        ("security", "wrong_password", "alice"),
        ("security", "lockout", "alice"),
    ]
    assert events[1]["detail"] == {"attempts": 1} and events[3]["detail"] == {"seconds": 60}
    assert all("right" not in r["content"] and "wrong" not in json.dumps(e["detail"])
               for r, e in zip(rows, events, strict=True))  # fmt: skip
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        (report,) = await verify_database(conn)
    assert report.broken is None and report.rows == 4
