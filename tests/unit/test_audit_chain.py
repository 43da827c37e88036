"""The audit chain's verification, pure: each kind of tampering is named at the right (chain, seq)
with the last checkpoint that held, and checkpoints verify only with the right key's signature."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from eth_account import Account
from eth_account.messages import encode_defunct

from proxy.audit.records import (
    GENESIS,
    AuditEvent,
    Checkpoint,
    Row,
    checkpoint_content,
    checkpoint_digest,
    content_of,
    link,
)
from proxy.audit.verify import ChainReport, ChainVerifier, Reference
from signer.software import SoftwareSigner

KEY = SoftwareSigner(
    bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
)
OTHER = SoftwareSigner(bytes(31) + b"\x07")
START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def chain(count: int, name: str = "acme") -> list[Row]:
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        at = START + timedelta(milliseconds=seq)
        content = content_of(AuditEvent("decision", None if name == "-" else name, "alice",
                                        "allow", nonce=seq), at)  # fmt: skip
        row = Row(name, seq, at, content, prev, link(prev, content))
        rows.append(row)
        prev = row.hash
    return rows


def signed(row: Row, key: SoftwareSigner = KEY, at: datetime = START) -> Checkpoint:
    content = checkpoint_content(row.chain, row.seq, row.hash, at)
    signature = key.sign_digest(checkpoint_digest(content)).to_bytes()
    return Checkpoint(row.chain, row.seq, row.hash, at, key.address, content, signature)


def verify(rows: list[Row], *, complete: bool = True, checkpoints: Sequence[Checkpoint] = (),
           references: Sequence[Reference] = ()) -> ChainReport:  # fmt: skip
    verifier = ChainVerifier(rows[0].chain if rows else "acme", complete=complete,
                             checkpoints=checkpoints, keys={KEY.address},
                             references=references)  # fmt: skip
    for row in rows:
        verifier.feed(row)
    return verifier.finish()


def rehash(rows: list[Row]) -> list[Row]:
    """Recompute every link, as someone rewriting the table consistently would."""
    out, prev = [], GENESIS
    for row in rows:
        row = dataclasses.replace(row, prev_hash=prev, hash=link(prev, row.content))
        out.append(row)
        prev = row.hash
    return out


def test_an_intact_chain_verifies_with_its_checkpoints() -> None:
    rows = chain(10)
    report = verify(rows, checkpoints=[signed(rows[3]), signed(rows[7])])
    assert report.broken is None and report.rows == 10 and report.head_seq == 10
    assert report.checkpoints == 2
    assert report.last_checkpoint is not None and report.last_checkpoint.seq == 8


def test_an_edited_row_is_named() -> None:
    rows = chain(10)
    rows[5] = dataclasses.replace(rows[5], content=rows[5].content.replace("allow", "deny"))
    report = verify(rows, checkpoints=[signed(rows[2])])
    assert report.broken is not None and (report.broken.chain, report.broken.seq) == ("acme", 6)
    assert report.broken.problem.startswith("edited")
    assert report.last_checkpoint is not None and report.last_checkpoint.seq == 3


def test_an_edited_row_with_its_own_hash_recomputed_breaks_the_next_link() -> None:
    rows = chain(10)
    edited = rows[5].content.replace("allow", "deny")
    rows[5] = dataclasses.replace(rows[5], content=edited, hash=link(rows[5].prev_hash, edited))
    report = verify(rows)
    assert report.broken is not None and report.broken.seq == 7
    assert "does not follow seq 6" in report.broken.problem


def test_a_deleted_row_is_named_missing() -> None:
    rows = chain(10)
    del rows[4]
    report = verify(rows)
    assert report.broken is not None and report.broken.seq == 5
    assert report.broken.problem.startswith("missing")


def test_a_deleted_first_row_is_missing_in_a_whole_chain_but_not_in_a_partial_one() -> None:
    rows = chain(5)[1:]
    assert verify(rows).broken is not None and verify(rows).broken.seq == 1  # type: ignore[union-attr]
    assert verify(rows, complete=False).broken is None


def test_two_swapped_rows_are_named_reordered() -> None:
    rows = chain(10)
    a, b = rows[3], rows[4]
    rows[3], rows[4] = dataclasses.replace(b, seq=4), dataclasses.replace(a, seq=5)
    report = verify(rows)
    assert report.broken is not None and report.broken.seq == 4
    assert report.broken.problem.startswith("reordered")


def test_rows_of_another_chain_or_with_another_time_are_refused() -> None:
    moved = chain(3, "globex")
    rows = chain(3)
    rows[1] = dataclasses.replace(moved[1], chain="acme", prev_hash=rows[0].hash,
                                  hash=link(rows[0].hash, moved[1].content))  # fmt: skip
    report = verify(rows)
    assert report.broken is not None and report.broken.seq == 2
    assert "another chain" in report.broken.problem
    rows = chain(3)
    rows[2] = dataclasses.replace(rows[2], at=rows[2].at + timedelta(hours=1))
    report = verify(rows)
    assert report.broken is not None and "time" in report.broken.problem


def test_a_consistently_rewritten_chain_passes_alone_but_not_against_a_checkpoint() -> None:
    original = chain(10)
    checkpoint = signed(original[6])
    rewritten = list(original)
    rewritten[2] = dataclasses.replace(rewritten[2], content=rewritten[2].content.replace(
        '"nonce":3', '"nonce":33'))  # fmt: skip
    rewritten = rehash(rewritten)
    assert verify(rewritten).broken is None  # a rewrite the hash chain alone cannot see
    report = verify(rewritten, checkpoints=[checkpoint])
    assert report.broken is not None and report.broken.seq == 7
    assert "checkpoint" in report.broken.problem
    reference = Reference(checkpoint.seq, checkpoint.hash, "the checkpoint of the export")
    report = verify(rewritten, references=[reference])
    assert report.broken is not None and report.broken.seq == 7
    assert verify(original + chain(12)[10:], references=[reference]).broken is None


def test_rows_cut_off_the_end_are_missing_when_a_checkpoint_names_them() -> None:
    rows = chain(10)
    checkpoint = signed(rows[8])
    report = verify(rows[:6], checkpoints=[checkpoint])
    assert report.broken is not None and report.broken.seq == 7
    assert report.broken.problem.startswith("missing")
    report = verify([], checkpoints=[checkpoint])
    assert report.broken is not None and report.broken.seq == 1


def test_a_checkpoint_with_a_wrong_signature_or_key_is_not_valid() -> None:
    rows = chain(5)
    forged = signed(rows[2], key=OTHER)
    report = verify(rows, checkpoints=[forged])
    assert report.broken is not None and report.broken.seq == 3
    assert "not an audit key" in report.broken.problem
    claimed = dataclasses.replace(forged, address=KEY.address)
    assert "does not verify" in (claimed.problem({KEY.address}) or "")
    bent = dataclasses.replace(signed(rows[2]), seq=2)
    assert "does not state" in (bent.problem({KEY.address}) or "")
    garbage = dataclasses.replace(signed(rows[2]), signature=bytes(64) + b"\x1b")
    assert garbage.problem({KEY.address}) is not None


def test_a_checkpoint_verifies_with_standard_tools() -> None:
    """The signed text is an EIP-191 personal message: eth-account recovers the audit key."""
    checkpoint = signed(chain(2)[1])
    recovered = Account.recover_message(encode_defunct(text=checkpoint.content),
                                        signature=checkpoint.signature)  # fmt: skip
    assert bytes.fromhex(recovered[2:]) == KEY.address
    assert json.loads(checkpoint.content) == {
        "type": "quorum-signer audit checkpoint", "chain": "acme", "seq": 2,
        "hash": "0x" + checkpoint.hash.hex(), "time": "2026-12-01T10:00:00.000Z"}  # fmt: skip


def test_content_is_canonical_json() -> None:
    at = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    text = content_of(AuditEvent("security", "acme", "al\u00efce", "wrong_password",
                                 detail={"b": 1, "a": "x\udcff"}), at)  # fmt: skip
    assert text.isascii() and " " not in text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert json.loads(text)["time"] == "2026-12-01T10:00:00.123Z"
    assert AuditEvent("security", None, None, "x").chain == "-"
