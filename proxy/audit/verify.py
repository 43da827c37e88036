"""Verifying a chain, pure: rows are fed in seq order (from the database or an export) and checked
against the hash chain, against the chain's own signed checkpoints, and against what an earlier
export holds; the first problem is named by (chain, seq) with the last checkpoint that held.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from proxy.audit.records import GENESIS, NO_ORGANISATION, Checkpoint, Row, link, timestamp

# After a row that does not follow the one before, how far to look for the row it should have
# followed (to tell rows reordered from rows rewritten or removed).
_REORDER_LOOKAHEAD = 10_000


@dataclass(frozen=True)
class Break:
    """The first problem in a chain: the row (chain, seq) and what is wrong with it."""

    chain: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"chain {self.chain!r} seq {self.seq}: {self.problem}"


@dataclass(frozen=True)
class Reference:
    """What an earlier export says a row's hash is: a signed checkpoint, or a row it holds."""

    seq: int
    hash: bytes
    what: str  # "the checkpoint of 2026-…", "the row in the earlier export"


@dataclass
class ChainReport:
    chain: str
    rows: int = 0
    first_seq: int | None = None
    head_seq: int | None = None
    head_hash: bytes | None = None
    checkpoints: int = 0  # checkpoints that verified and matched their row
    last_checkpoint: Checkpoint | None = None  # the last of them before the break, if any
    broken: Break | None = None

    def describe_checkpoint(self) -> str:
        last = self.last_checkpoint
        if last is None:
            return "no verified checkpoint"
        return (f"last verified checkpoint: chain {last.chain!r} seq {last.seq} "
                f"({timestamp(last.at)})")  # fmt: skip


class ChainVerifier:
    """Feed one chain's rows in seq order, then `finish()`.

    `complete`: the rows start at seq 1 (a whole chain); otherwise at any seq, the first row's
    prev_hash taken on trust (an export made with --since). `checkpoints` are the chain's own
    (signatures checked against `keys`); `references` come from an earlier export and bind
    the rows at their seqs to the hashes they name.
    """

    def __init__(self, chain: str, *, complete: bool = True,
                 checkpoints: Iterable[Checkpoint] = (), keys: Collection[bytes] = (),
                 references: Iterable[Reference] = ()) -> None:  # fmt: skip
        self.report = ChainReport(chain)
        self._complete = complete
        self._expected: int | None = 1 if complete else None
        self._prev: bytes | None = GENESIS if complete else None
        self._breaks: list[Break] = []
        self._stopped = False
        self._wanted: tuple[int, bytes] | None = None  # (seq, prev_hash) of a row out of place
        self._looked = 0
        self._checkpoints: list[Checkpoint] = []
        for checkpoint in checkpoints:
            problem = checkpoint.problem(keys)
            if problem is None:
                self._checkpoints.append(checkpoint)
            else:
                self._breaks.append(
                    Break(
                        chain, checkpoint.seq, f"the checkpoint of this row is not valid: {problem}"
                    )
                )
        self._checkpoints.sort(key=lambda c: c.seq)
        self._references = sorted(references, key=lambda r: r.seq)
        self._next_checkpoint = 0
        self._next_reference = 0
        self._matched: list[Checkpoint] = []  # verified and matching their rows, in seq order

    def feed(self, row: Row) -> None:
        report = self.report
        if self._stopped:
            self._look_for_reorder(row)
            return
        if report.first_seq is None:
            report.first_seq = row.seq
            if self._expected is None:
                self._expected = row.seq
                self._skip_before(row.seq)
        problem = self._problem(row)
        if problem is not None:
            self._stop(problem)
            return
        report.rows += 1
        report.head_seq, report.head_hash = row.seq, row.hash
        self._expected, self._prev = row.seq + 1, row.hash
        self._match_checkpoints(row)
        if not self._stopped:
            self._check_references(row)

    def _problem(self, row: Row) -> Break | None:
        chain = self.report.chain
        expected = row.seq if self._expected is None else self._expected
        if row.seq > expected:
            return Break(
                chain,
                expected,
                "missing: the row is not there"
                + (f" (the next is seq {row.seq})" if row.seq > expected + 1 else ""),
            )
        if row.seq < expected:
            return Break(chain, row.seq, "the row appears twice or out of order")
        if link(row.prev_hash, row.content) != row.hash:
            return Break(chain, row.seq, "edited: its hash does not match its content")
        if self._prev is not None and row.prev_hash != self._prev:
            self._wanted = (row.seq, row.prev_hash)
            return Break(chain, row.seq, f"does not follow seq {row.seq - 1}: a row was "
                         "rewritten, removed or inserted before it")  # fmt: skip
        content = _content_problem(chain, row)
        if content is not None:
            return Break(chain, row.seq, content)
        return None

    def _stop(self, problem: Break) -> None:
        self._breaks.append(problem)
        self._stopped = True

    def _look_for_reorder(self, row: Row) -> None:
        """A row that followed another than the one before it: if a later row is the one it
        followed, the rows were reordered (say so: that is what an investigator looks for)."""
        if self._wanted is None or self._looked >= _REORDER_LOOKAHEAD:
            return
        self._looked += 1
        seq, prev_hash = self._wanted
        if row.hash == prev_hash:
            self._breaks = [b if b.seq != seq or not b.problem.startswith("does not follow")
                            else Break(b.chain, seq, f"reordered: it follows seq {row.seq}, "
                                       "which was after it")
                            for b in self._breaks]  # fmt: skip
            self._wanted = None

    def _skip_before(self, seq: int) -> None:
        """A partial chain: checkpoints and references before its first row cannot be checked."""
        while (self._next_checkpoint < len(self._checkpoints)
               and self._checkpoints[self._next_checkpoint].seq < seq):  # fmt: skip
            self._next_checkpoint += 1
        while (self._next_reference < len(self._references)
               and self._references[self._next_reference].seq < seq):  # fmt: skip
            self._next_reference += 1

    def _match_checkpoints(self, row: Row) -> None:
        report = self.report
        while (self._next_checkpoint < len(self._checkpoints)
               and self._checkpoints[self._next_checkpoint].seq <= row.seq):  # fmt: skip
            checkpoint = self._checkpoints[self._next_checkpoint]
            self._next_checkpoint += 1
            if checkpoint.seq < row.seq:
                continue  # a row before it broke the chain: already reported
            if checkpoint.hash != row.hash:
                self._stop(Break(report.chain, row.seq, "rewritten: its hash differs from the "
                                 f"checkpoint signed at {timestamp(checkpoint.at)}"))  # fmt: skip
                return
            report.checkpoints += 1
            self._matched.append(checkpoint)

    def _check_references(self, row: Row) -> None:
        while (self._next_reference < len(self._references)
               and self._references[self._next_reference].seq <= row.seq):  # fmt: skip
            reference = self._references[self._next_reference]
            self._next_reference += 1
            if reference.seq == row.seq and reference.hash != row.hash:
                self._stop(
                    Break(
                        self.report.chain,
                        row.seq,
                        f"rewritten: its hash differs from {reference.what}",
                    )
                )
                return

    def finish(self) -> ChainReport:
        report = self.report
        if not self._stopped:
            after = report.head_seq if report.head_seq is not None else 0
            beyond = [
                (c.seq, f"the checkpoint signed at {timestamp(c.at)}")
                for c in self._checkpoints[self._next_checkpoint :]
            ]
            beyond += [(r.seq, r.what) for r in self._references[self._next_reference :]]
            if beyond and report.first_seq is None and not self._complete:
                after = min(seq for seq, _ in beyond) - 1
            if beyond:
                seq, what = max(beyond)
                self._breaks.append(Break(report.chain, after + 1, "missing: the chain ends at "
                                          f"seq {after} but {what} names seq {seq}"))  # fmt: skip
        if self._breaks:
            report.broken = min(self._breaks, key=lambda b: b.seq)
        before = [c for c in self._matched
                  if report.broken is None or c.seq < report.broken.seq]  # fmt: skip
        report.last_checkpoint = before[-1] if before else None
        return report


def _content_problem(chain: str, row: Row) -> str | None:
    try:
        content = json.loads(row.content)
    except ValueError:
        return "its content is not JSON"
    if not isinstance(content, Mapping):
        return "its content is not a JSON object"
    organisation = content.get("organisation")
    if (organisation if organisation is not None else NO_ORGANISATION) != chain:
        return "its content belongs to another chain"
    if content.get("time") != timestamp(row.at):
        return "its time does not match its content"
    return None
