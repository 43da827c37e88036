"""What the command line does with policies and held requests: install a policy version (after
validating it, announced to every replica), show it, and approve or reject a held request. The
same rows the gate reads; each change is audited."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg

from policy import abi
from policy.evaluate import evaluate
from policy.limits import charges
from policy.model import Limit, Policy, RequestFacts
from policy.parse import PolicyError, parse_policy
from proxy.audit import AuditLog
from proxy.audit.records import AuditEvent, parse_timestamp
from proxy.errors import BadInput, Conflict, Forbidden, NotFound
from proxy.guard.preflight import CHAIN_CHECKS
from proxy.identity import Identity, Principal
from proxy.identity.rowcache import RowCache


def validate(text: str) -> None:
    """A policy file that does not parse is input to fix: its line and field are named."""
    try:
        parse_policy(text)
    except PolicyError as exc:
        raise BadInput(f"policy file: {exc}") from None


async def install(identity: Identity, audit: AuditLog, organisation: str, text: str,
                  by: str | None = None) -> int:  # fmt: skip
    """Store `text` as the organisation's next policy version; every replica takes it within
    a second (NOTIFY). Returns the version. `by`: the admin who installed it through the admin
    API (the command line's operator has no user)."""
    validate(text)
    org_id = await identity.organisation_id(organisation)
    async with identity.pool.acquire() as conn, conn.transaction():
        # Versions of one organisation are numbered in order even when two operators race.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"policy:{org_id}")  # fmt: skip
        previous = await conn.fetchrow(
            """SELECT version, source, limit_since::text, installed_at FROM policy_versions
                WHERE organisation_id = $1 ORDER BY version DESC LIMIT 1""", org_id)  # fmt: skip
        now = await conn.fetchval("SELECT now()")
        since = limits_since(parse_policy(text), previous, now)
        version = 1 if previous is None else int(previous["version"]) + 1
        await conn.execute(
            """INSERT INTO policy_versions (organisation_id, version, source, installed_at,
                                            limit_since, installed_by)
               VALUES ($1, $2, $3, $4, $5::jsonb, $6)""",
            org_id, version, text, now, json.dumps(since), by)  # fmt: skip
        await RowCache.notify(conn, "policy", str(org_id))
        await audit.append_in(conn, [AuditEvent(
            kind="security", organisation=organisation, user=by, action="policy_set",
            policy_version=version, detail={"via": "admin_api"} if by else {})])  # fmt: skip
    return version


def _limit_key(policy: Policy, limit: Limit) -> tuple[Any, ...]:
    """What a limit counts: the same key in two versions means the same counter."""
    token = policy.contracts[limit.token].address if limit.token is not None else None
    return (limit.per, limit.window_seconds, limit.kind, limit.max, token)


def limits_since(policy: Policy, previous: Mapping[str, Any] | None,
                 now: datetime) -> dict[str, str]:  # fmt: skip
    """From when each limit of `policy` counts (ISO-8601): a limit the previous version
    defined exactly so keeps counting from where it did; any other starts now."""
    kept: dict[str, tuple[tuple[Any, ...], str]] = {}
    if previous is not None:
        with contextlib.suppress(PolicyError):  # a version older code accepted: start afresh
            before = parse_policy(previous["source"])
            known = json.loads(previous["limit_since"] or "{}")
            installed = previous["installed_at"].isoformat()
            kept = {limit.name: (_limit_key(before, limit), known.get(limit.name, installed))
                    for limit in before.limits}  # fmt: skip
    since: dict[str, str] = {}
    for limit in policy.limits:
        earlier = kept.get(limit.name)
        same = earlier is not None and earlier[0] == _limit_key(policy, limit)
        since[limit.name] = earlier[1] if same and earlier is not None else now.isoformat()
    return since


async def current(identity: Identity, organisation: str) -> tuple[int, str] | None:
    org_id = await identity.organisation_id(organisation)
    row = await identity.pool.fetchrow(
        "SELECT version, source FROM policy_versions WHERE organisation_id = $1 "
        "ORDER BY version DESC LIMIT 1", org_id)  # fmt: skip
    return None if row is None else (int(row["version"]), str(row["source"]))


@dataclass(frozen=True)
class Vote:
    approval_id: str
    state: str  # the approval's state after this vote: pending, approved or rejected
    votes: int
    needed: int


async def vote(identity: Identity, audit: AuditLog, approval_id: str, admin: str,
               password: str, approve: bool) -> Vote:  # fmt: skip
    """An admin of the approval's organisation, other than its requester, proving who they are
    with their own password, approves or rejects a held request."""
    principal, _ = await identity.unlock_with_password(admin, password)
    return await decide(identity, audit, approval_id, principal, approve)


async def decide(identity: Identity, audit: AuditLog, approval_id: str, principal: Principal,
                 approve: bool, via: str | None = None) -> Vote:  # fmt: skip
    """The vote of `principal`, who has proved who they are (their password, or an unlocked
    API key): an admin of the approval's organisation other than its requester, on a request
    still pending and not expired. `via` is recorded in the audit row (the admin API)."""
    admin = principal.user_id
    if principal.role != "admin":
        raise Forbidden(f"{admin} is not an admin: only admins approve or reject")
    async with identity.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT organisation_id, requester, state, needed, expires_at <= now() AS expired
               FROM approvals WHERE id = $1 FOR UPDATE""", approval_id)  # fmt: skip
        if row is None or row["organisation_id"] != principal.organisation_id:
            raise NotFound(f"no held request {approval_id} in {principal.organisation}")
        if row["requester"] == admin:
            raise Forbidden("the requester cannot approve or reject their own request")
        if row["state"] != "pending":
            raise Conflict(f"{approval_id} is already {row['state']}")
        if row["expired"]:
            raise Conflict(f"{approval_id} expired; the requester may ask again")
        try:
            await conn.execute(
                "INSERT INTO approval_votes (approval_id, user_id, vote) VALUES ($1, $2, $3)",
                approval_id, admin, "approve" if approve else "reject")  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise Conflict(f"{admin} already voted on {approval_id}") from None
        votes = int(await conn.fetchval(
            "SELECT count(*) FROM approval_votes WHERE approval_id = $1 AND vote = 'approve'",
            approval_id))  # fmt: skip
        state = "rejected" if not approve else (
            "approved" if votes >= row["needed"] else "pending")  # fmt: skip
        if state != "pending":
            # A granted approval stays usable for the policy's expiry from now.
            await conn.execute(
                """UPDATE approvals SET state = $2, decided_at = now(),
                       expires_at = CASE WHEN $2 = 'approved'
                                         THEN now() + (expires_at - created_at) ELSE expires_at END
                   WHERE id = $1""", approval_id, state)  # fmt: skip
        detail = {"approval_id": approval_id, "requester": row["requester"], "state": state}
        if via is not None:
            detail["via"] = via
        await audit.append_in(conn, [AuditEvent(
            kind="security", organisation=principal.organisation, user=admin,
            action="approved" if approve else "rejected", detail=detail)])  # fmt: skip
    return Vote(approval_id, state, votes, int(row["needed"]))


def _replayed(content: dict[str, Any]) -> RequestFacts | None:
    """The facts of an audited decision, as the gate saw them (None for rows a dry-run cannot
    replay: calldata cut for length)."""
    detail = content.get("detail") or {}
    if detail.get("data_cut"):
        return None
    to = detail.get("to")
    private = detail.get("private")
    return RequestFacts(
        method=content["method"], organisation=content["organisation"], user=content["user"],
        role=detail.get("role", ""), account=bytes.fromhex(content["account"][2:]),
        account_name=detail.get("account_name"),
        to=bytes.fromhex(to[2:]) if to else None, value=int(detail.get("value", 0)),
        data=bytes.fromhex(detail.get("data", "0x")[2:]), gas=int(detail.get("gas", 0)),
        deploy=detail.get("to") is None and "gas" in detail,
        private=private is not None,
        private_for=tuple(private["private_for"]) if private is not None else (),
        privacy_flag=int(private["privacy_flag"]) if private is not None else 0,
        typed_domain=detail.get("typed_domain"),
        typed_primary_type=detail.get("typed_primary_type"),
    )  # fmt: skip


def _as_policy_decided(content: Mapping[str, Any]) -> str:
    """The policy's own decision in an audited row: a hold that was later approved (allowed
    with its approval), rejected or expired was a hold."""
    detail = content.get("detail") or {}
    if content.get("reason") in ("approval_rejected", "approval_expired"):
        return "hold"
    if content["action"] == "allow" and detail.get("approval_id"):
        return "hold"
    return str(content["action"])


def _label(action: str, rule: str | None) -> str:
    return f"{action}({rule})" if rule else action


def replay(draft: Policy, decisions: list[dict[str, Any]],
           decimals: Mapping[str, int] | None = None) -> list[str]:  # fmt: skip
    """Each audited decision (oldest first) decided again under `draft`, its limits counted
    over the replayed history itself: one line per decision that changes (request id, old and
    new decision, rule). Pure."""
    counted: list[tuple[datetime, str, str, int]] = []
    changed: list[str] = []
    for content in decisions:
        if content.get("rule") in CHAIN_CHECKS:
            continue  # refused by a check on the chain, before any policy: no draft changes it
        facts = _replayed(content)
        if facts is None:
            continue
        moment = parse_timestamp(content["time"])
        used: dict[tuple[str, str], int] = {}
        try:
            counted_now = charges(draft, facts, decimals or {})
        except ValueError:
            counted_now = ()  # evaluate refuses what cannot be counted
        for charge in counted_now:
            used[(charge.limit, charge.scope)] = sum(
                amount for at, limit, scope, amount in counted
                if limit == charge.limit and scope == charge.scope
                and (moment - at).total_seconds() < charge.window_seconds)  # fmt: skip
        decision = evaluate(draft, facts, used, decimals or {})
        if decision.proceeds:
            counted.extend((moment, c.limit, c.scope, c.amount) for c in decision.charges)
        new = decision.action if decision.enforced else f"shadow-{decision.action}"
        new = "allow" if new == "shadow-allow" else new
        old = _as_policy_decided(content)
        if new != old:
            changed.append(f"{content.get('request_id')}\t{_label(old, content.get('rule'))}"
                           f"\t{_label(new, decision.rule)}")  # fmt: skip
    return changed


async def token_decimals(node_url: str | None, policy: Policy) -> dict[str, int]:
    """decimals() of the tokens whose units `policy` uses, read from a node (none without one:
    rules in those units then decide as the proxy does when a token cannot tell)."""
    found: dict[str, int] = {}
    if node_url is None or not policy.decimals_needed():
        return found
    call = "0x" + abi.encode_call(abi.DECIMALS, []).hex()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for name in policy.decimals_needed():
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_call",
                "params": [
                    {"to": "0x" + policy.contracts[name].address.hex(), "data": call},
                    "latest",
                ],
            }
            try:
                async with session.post(node_url, json=body) as response:
                    answer = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            decimals = abi.decimals_of(answer.get("result") if isinstance(answer, dict) else None)
            if decimals is not None:
                found[name] = decimals
    return found


async def dry_run(identity: Identity, organisation: str, text: str, last: int,
                  node_url: str | None = None) -> list[str]:  # fmt: skip
    """The organisation's last `last` audited signing decisions replayed against the policy
    `text`: the lines of those that would change. Token units are read from `node_url`."""
    try:
        draft = parse_policy(text)
    except PolicyError as exc:
        raise BadInput(f"policy file: {exc}") from None
    await identity.organisation_id(organisation)  # an unknown organisation is input to fix
    decisions = await recent_decisions(identity.pool, organisation, last)
    decimals = await token_decimals(node_url, draft)
    return replay(draft, decisions, decimals)


async def recent_decisions(db: Any, organisation: str, last: int) -> list[dict[str, Any]]:
    """The organisation's last `last` audited signing decisions, oldest first."""
    rows = await db.fetch(
        """SELECT content FROM (
               SELECT seq, content FROM audit_log
               WHERE chain = $1 AND content LIKE '{%"kind":"decision"%'
               ORDER BY seq DESC LIMIT $2) recent
           ORDER BY seq""", organisation, last)  # fmt: skip
    return [json.loads(r["content"]) for r in rows]
