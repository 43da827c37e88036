"""Where a signing request meets its organisation's policy: the policy in force (versions in
PostgreSQL, announced to every replica by NOTIFY), the limits' counters reserved in the same
transaction as the decision and its audit row, and requests held for approval. `policy/` decides;
this module reads and writes what the decision needs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from policy import abi
from policy.evaluate import Decision, evaluate
from policy.limits import Charge, charges
from policy.model import Policy, RequestFacts
from policy.parse import parse_policy
from proxy.audit import AuditLog
from proxy.audit.records import AuditEvent
from proxy.errors import PolicyRefused
from proxy.guard.metrics import GuardMetrics
from proxy.identity.rowcache import RowCache
from proxy.nodes.pool import NodePool
from proxy.store import BoundedPool
from signer.base import checksum

log = logging.getLogger(__name__)

# The organisation's policy in force, cached by organisation id (NOTIFY `policy:<id>`). `id` is
# NULL so that dropping a user's rows (matched on `id`) never drops it.
_CURRENT_QUERY = """
    SELECT NULL::text AS id, version, source, installed_at, limit_since::text AS limit_since
    FROM policy_versions WHERE organisation_id = $1::text::bigint
    ORDER BY version DESC LIMIT 1"""

# A limit's counter: what it let through in its window, since its policy version was installed.
# Counters are locked in one statement (in the order given: sorted, so that two requests never
# wait on each other crosswise), then read in the next one: a statement sees what committed
# before it started, so the read must come after the locks were granted, not with them.
_LOCK_QUERY = (
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest($1::text[]) k"
)
_USED_QUERY = """
    SELECT coalesce((SELECT sum(amount) FROM policy_usage p
                     WHERE p.organisation_id = $1 AND p.limit_name = c.name
                       AND p.scope = c.scope AND p.state = 'reserved'
                       AND p.at > greatest(now() - make_interval(secs => c.seconds), c.since)),
                    0)
    FROM unnest($2::text[], $3::text[], $4::float8[], $5::timestamptz[])
         WITH ORDINALITY AS c(name, scope, seconds, since, i)
    ORDER BY c.i"""


_DECIMALS_RETRY_SECONDS = 60.0
# How long an allowed request's outcome row may wait for the next decision's statement to ride
# with (one statement for both, instead of one each) before it is appended on its own.
OUTCOME_DELAY_SECONDS = 0.1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class InForce:
    version: int
    policy: Policy
    since: Mapping[str, datetime]  # from when each limit counts, by name


@dataclass(frozen=True)
class Verdict:
    """A request's decision, once recorded: `decision` is None without a policy."""

    decision: Decision | None
    policy_version: int | None
    approval_id: str | None = None
    ticket: str = ""  # names the counters this decision reserved
    gas_counted: bool = False  # a gas limit counted it: corrected to the gas used once mined
    # With `decide(..., record_later=True)`: the decision's audit row, still being appended.
    # Await it (Gate.recorded) before anything signed is stored, sent or shown: nothing leaves
    # the process without its decision on record.
    recording: asyncio.Future[None] | None = field(default=None, compare=False, repr=False)

    @property
    def charged(self) -> bool:
        return self.decision is not None and bool(self.decision.charges)

    @property
    def used_approval(self) -> str | None:
        """The approval this request used up, if it went through on one."""
        return self.approval_id if self.decision is not None and self.decision.proceeds else None


def request_digest(user: str, method: str, params: Any) -> bytes:
    """What an approval is bound to: the caller, the method and the exact parameters."""
    canonical = json.dumps([user, method, params], sort_keys=True, separators=(",", ":"),
                           default=str)  # fmt: skip
    return hashlib.sha256(canonical.encode()).digest()


def refusal_for(decision: Decision, version: int | None,
                approval_id: str | None = None) -> PolicyRefused:  # fmt: skip
    data: dict[str, Any] = {"reason": decision.reason, "rule": decision.rule,
                            "detail": decision.detail, "policy_version": version}  # fmt: skip
    if approval_id is not None:
        data["approval_id"] = approval_id
    return PolicyRefused(f"refused by policy: {decision.detail}", data)


class Gate:
    def __init__(self, db: BoundedPool, rows: RowCache, pool: NodePool, audit: AuditLog,
                 metrics: GuardMetrics | None = None) -> None:  # fmt: skip
        self.db = db
        self.rows = rows
        self.pool = pool
        self.audit = audit
        self.metrics = metrics or GuardMetrics(None)
        self._watcher: asyncio.Future[None] | None = None
        self._closing = asyncio.Event()
        self._later: set[asyncio.Task[None]] = set()
        self._parsed: dict[tuple[int, int], InForce] = {}
        self._decimals: dict[bytes, int] = {}
        self._no_decimals: dict[bytes, float] = {}  # tokens that did not answer, until when
        self._outcomes: list[AuditEvent] = []  # outcome rows waiting for a statement
        self._outcome_timer: asyncio.TimerHandle | None = None

    async def start(self, every: float = 5.0) -> None:
        """Keep the pending-approvals gauge fresh (a count every few seconds)."""

        async def watch() -> None:
            # Stopped by an event, not only by cancelling: a cancellation that lands inside a
            # database call can be swallowed there (asyncio.wait_for racing its result), and a
            # loop that goes on after it would never end.
            while not self._closing.is_set():
                try:
                    pending = await self.db.fetchval(
                        "SELECT count(*) FROM approvals WHERE state = 'pending' "
                        "AND expires_at > now()")  # fmt: skip
                    self.metrics.approvals_pending.set(int(pending))
                except Exception:
                    log.debug("approvals gauge not refreshed", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), every)

        self._watcher = asyncio.ensure_future(watch())

    async def close(self) -> None:
        self._closing.set()
        self._flush_outcomes()
        if self._watcher is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.shield(self._watcher)
            self._watcher.cancel()
        if self._later:  # outcomes still being recorded: let them land
            await asyncio.wait(self._later, timeout=10)

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Record something the caller need not wait for (a request's outcome, after its
        decision was recorded); finished before the app closes."""
        task = asyncio.ensure_future(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def counted(self, action: str, reason: str | None) -> None:
        self.metrics.decisions.labels(action, reason or "none").inc()

    def outcome(self, event: AuditEvent) -> None:
        """Record an allowed request's outcome without making anyone wait: it rides with the
        next decision appended (one statement for both), or is appended on its own within
        OUTCOME_DELAY_SECONDS; in any case before the app closes."""
        self._outcomes.append(event)
        if self._outcome_timer is None:
            self._outcome_timer = asyncio.get_running_loop().call_later(
                OUTCOME_DELAY_SECONDS, self._flush_outcomes)  # fmt: skip

    def _flush_outcomes(self) -> None:
        """Start appending the outcomes waiting; started before a decision's append, they join
        its statement (the audit log batches what is queued at once)."""
        if self._outcome_timer is not None:
            self._outcome_timer.cancel()
            self._outcome_timer = None
        outcomes, self._outcomes = self._outcomes, []
        for event in outcomes:
            self.later(self._append_outcome(event))

    async def _append_outcome(self, event: AuditEvent) -> None:
        try:
            await self.audit.append(event)
        except Exception:
            log.warning("could not audit the outcome of request %s (%s)", event.request_id,
                        event.tx_hash)  # fmt: skip

    def _record(self, event: AuditEvent, reason: str | None) -> asyncio.Future[None]:
        """Append a decision's row (with the outcomes waiting, in one statement), then count
        it; the append runs on its own task."""
        self._flush_outcomes()

        async def record() -> None:
            await self.audit.append(event)
            self.counted(event.action, reason)

        recording = asyncio.ensure_future(record())
        recording.add_done_callback(_retrieved)
        return recording

    @staticmethod
    async def recorded(verdict: Verdict) -> None:
        """Wait until the verdict's decision is on record (raises what the append raised)."""
        if verdict.recording is not None:
            await asyncio.shield(verdict.recording)

    async def in_force(self, organisation_id: int) -> InForce | None:
        row = await self.rows.row("policy", str(organisation_id), _CURRENT_QUERY)
        if row is None:
            return None
        key = (organisation_id, int(row["version"]))
        cached = self._parsed.get(key)
        if cached is None:
            since = {name: datetime.fromisoformat(at)
                     for name, at in json.loads(row["limit_since"]).items()}  # fmt: skip
            cached = InForce(key[1], parse_policy(row["source"]), since)
            self._parsed[key] = cached
        return cached

    def revert_errors(
        self, policy: InForce | None, to: bytes | None
    ) -> tuple[abi.AbiSignature, ...]:
        """The custom errors the policy names for the contract at `to`, to decode a revert."""
        if policy is None or to is None:
            return ()
        contract = policy.policy.contract_at(to)
        return contract.errors if contract is not None else ()

    async def _decimals_of(self, policy: Policy) -> dict[str, int]:
        """decimals() of the tokens whose units the policy uses; read once per address (a
        token's decimals never change). A token that does not answer is left out: evaluation
        then refuses what needs it."""
        names = policy.decimals_needed()
        now = time.monotonic()
        missing = [policy.contracts[n].address for n in names
                   if policy.contracts[n].address not in self._decimals
                   and self._no_decimals.get(policy.contracts[n].address, 0.0) <= now]  # fmt: skip

        async def read(address: bytes) -> None:
            try:
                data = "0x" + abi.encode_call(abi.DECIMALS, []).hex()
                answer = await self.pool.call(
                    "eth_call", [{"to": "0x" + address.hex(), "data": data}, "latest"]
                )
                decimals = abi.decimals_of(answer)
                if decimals is not None:
                    self._decimals[address] = decimals
                    return
            except Exception:
                log.warning("decimals() of %s could not be read", checksum(address))
            # Asked again a minute later, not on every request meanwhile.
            self._no_decimals[address] = time.monotonic() + _DECIMALS_RETRY_SECONDS

        if missing:
            await asyncio.gather(*(read(a) for a in missing))
        return {n: self._decimals[policy.contracts[n].address] for n in names
                if policy.contracts[n].address in self._decimals}  # fmt: skip

    async def decide(self, organisation_id: int, facts: RequestFacts, event: AuditEvent,
                     digest: bytes, policy: InForce | None, *,
                     record_later: bool = False) -> Verdict:  # fmt: skip
        """Decide, reserve the limits' counters and append the decision's audit row, all in one
        transaction when anything is counted; refuse (PolicyRefused) what does not proceed.
        With `record_later`, an allowed decision that counts nothing returns while its row is
        still being appended (`Verdict.recording`), so that the caller's next round trip (a
        nonce's reservation) overlaps it; the caller awaits it before anything signed is
        stored, sent or shown."""
        if policy is None:
            recording = self._record(replace(event, action="allow"), None)
            if record_later:
                return Verdict(None, None, recording=recording)
            await asyncio.shield(recording)
            return Verdict(None, None)
        decimals = await self._decimals_of(policy.policy)
        try:
            counted = charges(policy.policy, facts, decimals)
        except ValueError:
            counted = ()  # calldata or units that do not resolve: evaluate refuses them
        first = evaluate(policy.policy, facts, {}, decimals)
        if (first.action == "deny" and first.enforced) or (not counted and first.action != "hold"):
            # Decided without counters: a deny wins whatever they hold (and a limit crossed
            # with nothing used is crossed), and nothing is counted or held otherwise.
            recording = self._record(self._event(event, first, policy.version), first.reason)
            if record_later and first.proceeds:
                return Verdict(first, policy.version, recording=recording)
            await asyncio.shield(recording)
            if not first.proceeds:
                raise refusal_for(first, policy.version)
            return Verdict(first, policy.version)
        self._flush_outcomes()
        async with self.db.acquire() as conn, conn.transaction():
            used = await self._used(conn, organisation_id, policy, counted)
            decision = evaluate(policy.policy, facts, used, decimals)
            approval_id: str | None = None
            if decision.action == "hold" and decision.enforced:
                decision, approval_id = await self._held(
                    conn, organisation_id, facts, digest, policy, used, decimals, decision
                )
            ticket = secrets.token_hex(12)
            kinds = {limit.name: limit.kind for limit in policy.policy.limits}
            if decision.proceeds and decision.charges:
                await conn.executemany(
                    """INSERT INTO policy_usage (organisation_id, limit_name, kind, scope, amount,
                                                 ticket, request_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    [(organisation_id, c.limit, kinds[c.limit], c.scope, c.amount, ticket,
                      event.request_id or "") for c in decision.charges])  # fmt: skip
            recorded = self._event(event, decision, policy.version, approval_id)
            await self.audit.append_in(conn, [recorded])
        self.counted(recorded.action, decision.reason)
        for charge in decision.charges if decision.proceeds else ():
            taken = used.get((charge.limit, charge.scope), 0) + charge.amount
            self.metrics.limit_utilisation.labels(charge.limit).set(
                min(1.0, taken / charge.max) if charge.max else 1.0)  # fmt: skip
        if not decision.proceeds:
            raise refusal_for(decision, policy.version, approval_id)
        gas = any(kinds[c.limit] == "gas" for c in decision.charges)
        return Verdict(decision, policy.version, approval_id, ticket, gas)

    @staticmethod
    def _event(event: AuditEvent, decision: Decision, version: int,
               approval_id: str | None = None) -> AuditEvent:  # fmt: skip
        action = (
            decision.action
            if decision.enforced
            else ("allow" if decision.action == "allow" else f"shadow-{decision.action}")
        )
        detail = dict(event.detail)
        if approval_id is not None:
            detail["approval_id"] = approval_id
        if decision.detail:
            detail["why"] = decision.detail
        return replace(event, action=action, reason=decision.reason, rule=decision.rule,
                       policy_version=version, detail=detail)  # fmt: skip

    async def _used(self, conn: asyncpg.Connection, organisation_id: int, policy: InForce,
                    counted: tuple[Charge, ...]) -> dict[tuple[str, str], int]:  # fmt: skip
        """Each applicable counter, locked (per organisation, limit and scope) until this
        transaction ends, so that concurrent requests on every replica see each other."""
        ordered = sorted(counted, key=lambda c: (c.limit, c.scope))
        await conn.fetchval(_LOCK_QUERY, [f"limit:{organisation_id}:{c.limit}:{c.scope}"
                                          for c in ordered])  # fmt: skip
        sums = await conn.fetch(
            _USED_QUERY, organisation_id, [c.limit for c in ordered], [c.scope for c in ordered],
            [float(c.window_seconds) for c in ordered],
            [policy.since.get(c.limit, _EPOCH) for c in ordered])  # fmt: skip
        return {(c.limit, c.scope): int(row[0]) for c, row in zip(ordered, sums, strict=True)}

    async def _held(self, conn: asyncpg.Connection, organisation_id: int, facts: RequestFacts,
                    digest: bytes, policy: InForce, used: Mapping[tuple[str, str], int],
                    decimals: Mapping[str, int], held: Decision,
                    ) -> tuple[Decision, str | None]:  # fmt: skip
        """A held request: through once if approved (the approval is used up here), else its
        approval's id (created on the first request), or why it will not go through."""
        row = await conn.fetchrow(
            """SELECT id, state, expires_at <= now() AS expired FROM approvals
               WHERE requester = $1 AND request_digest = $2 AND used_at IS NULL
               ORDER BY created_at DESC LIMIT 1 FOR UPDATE""", facts.user, digest)  # fmt: skip
        if row is not None and row["state"] == "approved" and not row["expired"]:
            decision = evaluate(policy.policy, facts, used, decimals, approved=True)
            if decision.proceeds:
                await conn.execute(
                    "UPDATE approvals SET state = 'used', used_at = now() WHERE id = $1", row["id"]
                )
            return decision, row["id"]
        if row is not None and (row["state"] == "rejected" or row["expired"]):
            # Told once; a later repeat asks for a new approval (an expired one is no longer
            # live, so that the new one may take its place).
            await conn.execute(
                """UPDATE approvals SET used_at = now(),
                       state = CASE WHEN state = 'rejected' THEN state ELSE 'expired' END
                   WHERE id = $1""", row["id"])  # fmt: skip
            if row["state"] == "rejected":
                told = replace(held, action="deny", reason="approval_rejected",
                               detail=f"approval {row['id']} was rejected")  # fmt: skip
            else:
                told = replace(held, action="deny", reason="approval_expired", detail=(
                    f"approval {row['id']} expired; repeat the request to ask again"))  # fmt: skip
            return told, row["id"]
        if row is not None:  # pending
            return held, row["id"]
        approval_id = "apr_" + secrets.token_hex(8)
        summary = {
            "account": checksum(facts.account),
            "method": facts.method,
            "to": checksum(facts.to) if facts.to else None,
            "value": str(facts.value),
        }
        created = await conn.fetchval(
            """INSERT INTO approvals (id, organisation_id, requester, request_digest, method,
                   summary, rule, policy_version, needed, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9,
                       now() + make_interval(secs => $10))
               ON CONFLICT (requester, request_digest) WHERE state IN ('pending', 'approved')
               DO NOTHING RETURNING id""",
            approval_id, organisation_id, facts.user, digest, facts.method, json.dumps(summary),
            held.rule or "", policy.version, policy.policy.approvals.approvers,
            float(policy.policy.approvals.expire_seconds))  # fmt: skip
        if created is None:  # the same request, held at the same moment elsewhere: its approval
            created = await conn.fetchval(
                """SELECT id FROM approvals WHERE requester = $1 AND request_digest = $2
                   AND state IN ('pending', 'approved')""", facts.user, digest)  # fmt: skip
        return held, created

    async def release(self, verdict: Verdict) -> None:
        """The request failed before reaching a node: what it counted is given back, and the
        approval it used is usable again (while not expired, and unless the requester asked
        for a new one meanwhile)."""
        async with self.db.acquire() as conn, conn.transaction():
            if verdict.charged:
                await conn.execute(
                    "UPDATE policy_usage SET state = 'released' "
                    "WHERE ticket = $1 AND state = 'reserved'", verdict.ticket)  # fmt: skip
            if verdict.used_approval is not None:
                await conn.execute(
                    """UPDATE approvals a SET state = 'approved', used_at = NULL
                        WHERE id = $1 AND state = 'used' AND expires_at > now()
                          AND NOT EXISTS (
                              SELECT 1 FROM approvals o
                               WHERE o.requester = a.requester
                                 AND o.request_digest = a.request_digest
                                 AND o.state IN ('pending', 'approved'))""",
                    verdict.used_approval)  # fmt: skip

    async def sent(self, ticket: str, tx_hash: bytes) -> None:
        """The transaction a gas limit counted: its receipt will correct the count."""
        await self.db.execute(
            "UPDATE policy_usage SET tx_hash = $2 WHERE ticket = $1 AND kind = 'gas'",
            ticket, tx_hash)  # fmt: skip


def _retrieved(recording: asyncio.Future[None]) -> None:
    """A recording nobody awaited (its request failed first) must not be reported as an
    exception never retrieved."""
    if not recording.cancelled():
        recording.exception()
