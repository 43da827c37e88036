"""Reading the audit log (from the database, or from an export file) and writing an export.

An export is JSON lines: a first line naming the format (with the audit keys' addresses), then
every row of every chain in seq order, then the checkpoints. A copy kept elsewhere is what
`audit verify --against` holds the database to: a rewrite consistent within the database still
differs from a checkpoint signed before it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg

from proxy.audit.records import Checkpoint, Row, parse_timestamp, timestamp
from proxy.audit.verify import Break, ChainReport, ChainVerifier, Reference
from proxy.errors import BadInput
from signer.base import checksum

FORMAT = "quorum-signer audit export"
VERSION = 1

# Every chain that has a row, a head or a checkpoint; audit_log's chains by a skip scan over its
# primary key (one index probe per chain, not a read of every row).
_CHAINS = """
    WITH RECURSIVE c(chain) AS (
        (SELECT chain FROM audit_log ORDER BY chain LIMIT 1)
        UNION ALL
        SELECT (SELECT l.chain FROM audit_log l WHERE l.chain > c.chain ORDER BY l.chain LIMIT 1)
          FROM c WHERE c.chain IS NOT NULL)
    SELECT chain FROM c WHERE chain IS NOT NULL
    UNION SELECT chain FROM audit_heads
    UNION SELECT DISTINCT chain FROM audit_checkpoints
    ORDER BY chain"""

_CHECKPOINTS = """SELECT chain, seq, hash, at, address, content, signature FROM audit_checkpoints
                   WHERE chain = $1 AND seq >= $2 ORDER BY seq, address"""


@dataclass
class Export:
    """An export file, read whole."""

    since: datetime | None
    keys: set[bytes]
    heads: dict[str, Reference] = field(default_factory=dict)  # the head records, as exported
    rows: dict[str, list[Row]] = field(default_factory=dict)
    checkpoints: dict[str, list[Checkpoint]] = field(default_factory=dict)

    @property
    def chains(self) -> list[str]:
        return sorted(set(self.rows) | set(self.checkpoints))


# --- the database ---------------------------------------------------------------------------


async def chains(conn: asyncpg.Connection, organisation: str | None = None) -> list[str]:
    found = [r["chain"] for r in await conn.fetch(_CHAINS)]
    return [c for c in found if organisation is None or c == organisation]


async def keys(conn: asyncpg.Connection) -> list[tuple[bytes, datetime]]:
    rows = await conn.fetch("SELECT address, created_at FROM audit_keys ORDER BY created_at")
    return [(r["address"], r["created_at"]) for r in rows]


async def checkpoints(conn: asyncpg.Connection, chain: str, from_seq: int = 1) -> list[Checkpoint]:
    return [Checkpoint(*r) for r in await conn.fetch(_CHECKPOINTS, chain, from_seq)]


async def rows(conn: asyncpg.Connection, chain: str, from_seq: int = 1) -> AsyncIterator[Row]:
    """The chain's rows in seq order, streamed (a cursor: `conn` must be in a transaction)."""
    async for record in conn.cursor(
        """SELECT chain, seq, at, content, prev_hash, hash FROM audit_log
            WHERE chain = $1 AND seq >= $2 ORDER BY seq""",
        chain, from_seq, prefetch=2000,
    ):  # fmt: skip
        yield Row(*record)


async def first_seq_since(conn: asyncpg.Connection, chain: str, since: datetime) -> int | None:
    """The first row of the chain at or after `since` (rows from several replicas may be a few
    milliseconds out of time order: everything from the first one on is exported)."""
    value = await conn.fetchval(
        "SELECT min(seq) FROM audit_log WHERE chain = $1 AND at >= $2", chain, since
    )
    return None if value is None else int(value)


async def write_export(conn: asyncpg.Connection, out: TextIO, *, since: datetime | None = None,
                       organisation: str | None = None) -> tuple[int, int]:  # fmt: skip
    """Write the export (in `conn`'s transaction: one snapshot); (rows, checkpoints) written."""
    written = {"row": 0, "checkpoint": 0, "header": 0}
    async for kind, line in export_lines(conn, since=since, organisation=organisation):
        out.write(line)
        written[kind] += 1
    return written["row"], written["checkpoint"]


async def export_lines(
    conn: asyncpg.Connection, *, since: datetime | None = None, organisation: str | None = None
) -> AsyncIterator[tuple[str, str]]:
    """The export's lines, each with its kind (header, row, checkpoint), read in `conn`'s
    transaction (one snapshot): what `write_export` writes and the admin API streams."""
    starts: dict[str, int] = {}
    for chain in await chains(conn, organisation):
        start = 1 if since is None else await first_seq_since(conn, chain, since)
        if start is not None:
            starts[chain] = start
    heads = await conn.fetch("SELECT chain, seq, hash FROM audit_heads ORDER BY chain")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": timestamp(datetime.now(UTC)),
        "since": None if since is None else timestamp(since),
        "organisation": organisation,
        "keys": [{"address": checksum(a), "created_at": timestamp(t)} for a, t in await keys(conn)],
        # Where each chain's head record says it ends (not trusted, but a row cut off the end
        # before any checkpoint covers it shows against it).
        "heads": [
            {"chain": h["chain"], "seq": h["seq"], "hash": _hex(h["hash"])}
            for h in heads
            if h["chain"] in starts
        ],
    }
    yield "header", _line(header)
    for chain, start in starts.items():
        async for row in rows(conn, chain, start):
            yield "row", _line({"type": "row", "chain": row.chain, "seq": row.seq,
                                "at": timestamp(row.at), "content": row.content,
                                "prev_hash": _hex(row.prev_hash),
                                "hash": _hex(row.hash)})  # fmt: skip
    for chain, start in starts.items():
        for c in await checkpoints(conn, chain, start):
            yield "checkpoint", _line({"type": "checkpoint", "chain": c.chain, "seq": c.seq,
                                       "hash": _hex(c.hash), "at": timestamp(c.at),
                                       "address": checksum(c.address), "content": c.content,
                                       "signature": _hex(c.signature)})  # fmt: skip


def _line(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n"


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


# --- an export file -------------------------------------------------------------------------


def read_export(path: str) -> Export:
    """An export file, checked line by line; `BadInput` naming the line of anything malformed
    (a file that is not an export is input to fix, not a broken log)."""
    try:
        handle = Path(path).open(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            lines = enumerate(handle, 1)
            export = _header(path, next(lines, (1, "")))
            for number, text in lines:
                if text.strip():
                    _entry(export, _object(path, number, text), path, number)
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not UTF-8 text") from None
    return export


def _object(path: str, number: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise BadInput(f"{path} line {number}: not JSON") from None
    if not isinstance(value, dict):
        raise BadInput(f"{path} line {number}: not a JSON object")
    return value


def _header(path: str, first: tuple[int, str]) -> Export:
    number, text = first
    if not text.strip():
        raise BadInput(f"{path}: empty, not an audit export")
    header = _object(path, number, text)
    if header.get("format") != FORMAT:
        raise BadInput(f"{path}: not an audit export (its first line names no {FORMAT!r})")
    if header.get("version") != VERSION:
        raise BadInput(f"{path}: export version {header.get('version')!r} is not {VERSION}")
    field_of = _fields(path, number, header)
    since = field_of("since", parse_timestamp, optional=True)
    listed = field_of("keys", list)
    found = {_address(path, number, k.get("address") if isinstance(k, dict) else None)
             for k in listed}  # fmt: skip
    heads = {}
    for head in field_of("heads", list, optional=True) or []:
        if not isinstance(head, dict):
            raise BadInput(f"{path} line {number}: 'heads' is malformed")
        head_field = _fields(path, number, head)
        heads[head_field("chain", str)] = Reference(head_field("seq", int),
                                                    head_field("hash", _bytes),
                                                    "the chain's head record")  # fmt: skip
    return Export(since, found, heads)


def _entry(export: Export, value: dict[str, Any], path: str, number: int) -> None:
    field_of = _fields(path, number, value)
    chain, seq = field_of("chain", str), field_of("seq", int)
    if value.get("type") == "row":
        export.rows.setdefault(chain, []).append(Row(
            chain, seq, field_of("at", parse_timestamp), field_of("content", str),
            field_of("prev_hash", _bytes), field_of("hash", _bytes)))  # fmt: skip
    elif value.get("type") == "checkpoint":
        export.checkpoints.setdefault(chain, []).append(Checkpoint(
            chain, seq, field_of("hash", _bytes), field_of("at", parse_timestamp),
            _address(path, number, value.get("address")), field_of("content", str),
            field_of("signature", _bytes)))  # fmt: skip
    else:
        raise BadInput(f"{path} line {number}: neither a row nor a checkpoint")


def _fields(path: str, number: int, value: dict[str, Any]) -> Callable[..., Any]:
    def field_of(name: str, kind: Callable[[Any], Any], optional: bool = False) -> Any:
        raw = value.get(name)
        if raw is None and optional:
            return None
        try:
            if kind in (str, int, list):
                if type(raw) is not kind:
                    raise ValueError(name)
                return raw
            return kind(raw)
        except (ValueError, TypeError, AttributeError):
            raise BadInput(f"{path} line {number}: {name!r} is missing or malformed") from None

    return field_of


def _bytes(text: str) -> bytes:
    if not text.startswith("0x"):
        raise ValueError(text)
    return bytes.fromhex(text[2:])


def _address(path: str, number: int, text: Any) -> bytes:
    try:
        address = _bytes(text)
    except (ValueError, TypeError, AttributeError):
        address = b""
    if len(address) != 20:
        raise BadInput(f"{path} line {number}: an address is missing or malformed")
    return address


# --- verification ---------------------------------------------------------------------------


def references(earlier: Export, chain: str) -> list[Reference]:
    """What an earlier export binds a chain to: its signed checkpoints (signatures checked
    against its own keys) and its rows."""
    found = [Reference(c.seq, c.hash, f"the checkpoint signed at {timestamp(c.at)} in the "
                       "earlier export") for c in earlier.checkpoints.get(chain, [])
             if c.problem(earlier.keys) is None]  # fmt: skip
    found += [Reference(r.seq, r.hash, "the same row in the earlier export")
              for r in earlier.rows.get(chain, [])]  # fmt: skip
    return found


def verify_export(export: Export, *, organisation: str | None = None,
                  against: Export | None = None,
                  checkpoints_alone: bool = False) -> list[ChainReport]:  # fmt: skip
    """Every chain of an export file (checkpoints checked against the keys its first line
    names), and, with `against`, held to what an earlier export says. With
    `checkpoints_alone`, a chain of which the file keeps only checkpoints is fine (an earlier
    export cut down to its signed checkpoints: the small part worth keeping elsewhere)."""
    names = set(export.chains) | (set(against.chains) if against is not None else set())
    reports = []
    for chain in sorted(c for c in names if organisation is None or c == organisation):
        if checkpoints_alone and not export.rows.get(chain):
            report = ChainReport(chain)
            for checkpoint in export.checkpoints.get(chain, []):
                problem = checkpoint.problem(export.keys)
                if problem is not None and report.broken is None:
                    report.broken = Break(chain, checkpoint.seq, f"its checkpoint is not valid: "
                                          f"{problem}")  # fmt: skip
            reports.append(report)
            continue
        bound = references(against, chain) if against else []
        if chain in export.heads:
            bound.append(export.heads[chain])
        verifier = ChainVerifier(
            chain, complete=export.since is None, checkpoints=export.checkpoints.get(chain, []),
            keys=export.keys, references=bound,
        )  # fmt: skip
        for row in export.rows.get(chain, []):
            verifier.feed(row)
        reports.append(verifier.finish())
    return reports


async def verify_database(conn: asyncpg.Connection, *, organisation: str | None = None,
                          against: Export | None = None) -> list[ChainReport]:  # fmt: skip
    """Every chain in the database (in `conn`'s transaction: one snapshot), checkpoints checked
    against the registered audit keys, and with `against` held to an earlier export."""
    registered = {address for address, _ in await keys(conn)}
    names = set(await chains(conn, organisation))
    if against is not None:
        names |= {c for c in against.chains if organisation is None or c == organisation}
    # The head record is not to be trusted, but a row cut off the end (or a rewrite that left
    # it behind) shows against it even where no checkpoint covers the end yet.
    heads = {r["chain"]: Reference(r["seq"], r["hash"], "the chain's head record")
             for r in await conn.fetch("SELECT chain, seq, hash FROM audit_heads")}  # fmt: skip
    reports = []
    for chain in sorted(names):
        bound = references(against, chain) if against else []
        if chain in heads:
            bound.append(heads[chain])
        verifier = ChainVerifier(chain, checkpoints=await checkpoints(conn, chain),
                                 keys=registered, references=bound)  # fmt: skip
        async for row in rows(conn, chain):
            verifier.feed(row)
        reports.append(verifier.finish())
    return reports


def broken_reports(reports: Iterable[ChainReport]) -> list[ChainReport]:
    return [r for r in reports if r.broken is not None]
