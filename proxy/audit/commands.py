"""The `quorum-signer audit ...` commands: key create, checkpoint, verify, export.

`audit verify` exits 0 when every chain checked is intact and 1 when one is not, with one line
on stderr naming the first broken, missing or reordered row (chain, seq) and the last verified
checkpoint; bad input (an unreadable export, a bad time) exits 2, as every command does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from proxy.audit import checkpoints
from proxy.audit.export import (
    Export,
    broken_reports,
    read_export,
    verify_database,
    verify_export,
    write_export,
)
from proxy.audit.records import Checkpoint, parse_timestamp, timestamp
from proxy.audit.verify import Break, ChainReport
from proxy.errors import BadInput, SystemFailure
from proxy.settings import Settings
from signer.base import checksum

T = TypeVar("T")


def add_parser(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """The `audit` subcommands, under the command line's subparsers."""

    def subcommands(parent: Any, dest: str) -> Any:
        return parent.add_subparsers(dest=dest, metavar="COMMAND", required=True,
                                     parser_class=parser_class)  # fmt: skip

    audit = subcommands(commands.add_parser("audit", help="the tamper-evident audit log"),
                        "audit_command")  # fmt: skip

    key = subcommands(audit.add_parser("key", help="the HSM key that signs checkpoints"),
                      "audit_key_command")  # fmt: skip
    key_create = key.add_parser(
        "create", help="generate the audit key inside an HSM token and register it",
        description="Generate a secp256k1 key inside the token (private key sensitive and not "
        "extractable) that signs the audit log's checkpoints from now on; print its address. "
        "Keep the address with your exports: `audit verify` checks checkpoints against it.",
    )  # fmt: skip
    key_create.add_argument("--token-label", required=True)
    key_create.add_argument("--pin-file", help="file holding the token PIN (- for stdin)")
    key_create.set_defaults(handler=key_create_command)

    checkpoint = audit.add_parser(
        "checkpoint", help="sign every chain's head now with the audit key",
        description="Log into the audit key's token and sign the head of every chain not yet "
        "signed (after verifying the rows since its last checkpoint); print how many.",
    )  # fmt: skip
    checkpoint.add_argument("--pin-file", help="file holding the token PIN (- for stdin)")
    checkpoint.set_defaults(handler=checkpoint_command)

    verify = audit.add_parser(
        "verify", help="check the audit log for tampering (exit 0 intact, 1 broken)",
        description="Check every chain (hash links, no gap, signed checkpoints) in the database, "
        "or in an export (--file); with --against, also hold it to an earlier export's rows and "
        "signed checkpoints, which catches a chain rewritten consistently. Exit 0 when intact, "
        "1 naming the first broken, missing or reordered row and the last verified checkpoint.",
    )  # fmt: skip
    verify.add_argument("--org", help="only this organisation's chain ('-': events of none)")
    verify.add_argument("--file", metavar="EXPORT", help="check this export instead")
    verify.add_argument("--against", metavar="EXPORT", help="an earlier export to hold it to")
    verify.set_defaults(handler=verify_command)

    export = audit.add_parser(
        "export", help="write the audit log as JSON lines to stdout",
        description="Write a line naming the format and the audit keys, then every row "
        "(chain by chain, in order), then the signed checkpoints, as JSON lines.",
    )  # fmt: skip
    export.add_argument("--since", metavar="TIME", help="only rows from this time on "
                        "(ISO-8601 with a zone, e.g. 2026-12-01T00:00:00Z)")  # fmt: skip
    export.add_argument("--org", help="only this organisation's chain")
    export.set_defaults(handler=export_command)


def _with_connection(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]],
                     *, snapshot: bool = False) -> T:  # fmt: skip
    from proxy.cli import _connect

    async def run() -> T:
        pool = await _connect(settings, max_size=1)
        try:
            async with pool.acquire() as conn:
                if not snapshot:
                    return await work(conn)
                # One snapshot for every chain and checkpoint read.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await work(conn)
        finally:
            await pool.close()

    return asyncio.run(run())


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def key_create_command(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.cli import _hsm, _read_secret

    pin = _read_secret(args.pin_file, "Token PIN")

    async def work(conn: asyncpg.Connection) -> bytes:
        loop = asyncio.get_running_loop()

        async def blocking(function: Callable[..., Any], *more: Any) -> Any:
            return await loop.run_in_executor(None, function, *more)

        with _hsm(settings) as hsm:
            return await checkpoints.create_key(conn, hsm, args.token_label, pin, blocking)

    address = _with_connection(settings, work)
    _progress("the audit key signs checkpoints from now on; keep its address with your exports")
    print(checksum(address))
    return 0


def checkpoint_command(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.cli import _hsm, _read_secret

    async def work(conn: asyncpg.Connection) -> tuple[list[Checkpoint], Break | None]:
        key = await checkpoints.audit_key(conn)
        if key is None:
            raise BadInput("no audit key: create one with `quorum-signer audit key create`")
        pin = _read_secret(args.pin_file, "Token PIN")
        loop = asyncio.get_running_loop()
        with _hsm(settings) as hsm:
            token = await loop.run_in_executor(None, hsm.login, key.token_label, pin)
            signer = await loop.run_in_executor(None, lambda: token.key(key_id=key.key_id))
            if signer.address != key.address:
                raise SystemFailure(f"the key on token {key.token_label!r} is not the audit key "
                                    f"{checksum(key.address)}")  # fmt: skip
            return await checkpoints.sign_heads(conn, signer, force=True)

    made, broken = _with_connection(settings, work)
    if broken is not None:
        print(f"quorum-signer: audit log broken, its head not signed: {broken} ({len(made)} "
              "other chains signed; see `audit verify`)", file=sys.stderr)  # fmt: skip
        return 1
    for checkpoint in made:
        _progress(f"signed chain {checkpoint.chain!r} at seq {checkpoint.seq}")
    if not made:
        _progress("every chain's head is already signed")
    print(len(made))
    return 0


def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    against = read_export(args.against) if args.against else None
    if against is not None:
        earlier = broken_reports(verify_export(against, checkpoints_alone=True))
        if earlier:
            print(f"quorum-signer: the earlier export {args.against} does not verify itself: "
                  f"{earlier[0].broken}", file=sys.stderr)  # fmt: skip
            return 1
    if args.file:
        reports = verify_export(read_export(args.file), organisation=args.org, against=against)
    else:
        reports = _with_connection(settings, lambda conn: verify_database(
            conn, organisation=args.org, against=against), snapshot=True)  # fmt: skip
    if args.org is not None and not reports:
        raise BadInput(f"no chain {args.org!r} in the audit log")
    for report in reports:
        print(_summary(report))
    broken = broken_reports(reports)
    if not broken:
        print("intact")
        return 0
    first = broken[0]
    more = f"; {len(broken) - 1} more chains broken" if len(broken) > 1 else ""
    print("broken")
    print(f"quorum-signer: audit log broken: {first.broken}; {first.describe_checkpoint()}{more}",
          file=sys.stderr)  # fmt: skip
    return 1


def _summary(report: ChainReport) -> str:
    state = "intact" if report.broken is None else f"broken at seq {report.broken.seq}"
    head = "-" if report.head_seq is None else str(report.head_seq)
    return (f"{report.chain}\t{report.rows} rows\thead {head}\t{report.checkpoints} checkpoints"
            f"\t{state}\t{report.describe_checkpoint()}")  # fmt: skip


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    since: datetime | None = None
    if args.since is not None:
        try:
            since = parse_timestamp(args.since)
        except ValueError:
            raise BadInput("--since must be an ISO-8601 time with a zone, such as "
                           "2026-12-01T00:00:00Z") from None  # fmt: skip
    written = _with_connection(settings, lambda conn: write_export(
        conn, sys.stdout, since=since, organisation=args.org), snapshot=True)  # fmt: skip
    sys.stdout.flush()
    _progress(f"exported {written[0]} rows and {written[1]} checkpoints"
              + (f" from {timestamp(since)}" if since else ""))  # fmt: skip
    return 0


__all__ = ["Export", "add_parser"]
