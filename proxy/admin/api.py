"""The admin API's routes: accounts and their nonces, transactions and their life, approvals,
the audit log, users and API keys, the policy, and the nodes. Each handler reads or changes its
caller's organisation only; the wrapper (`proxy.admin.routes`) has already checked that the
caller is one of its admins and parsed the input into the route's models.

Writes go through the same services as the command line, which audit them; the admin API adds
who made the change (`by`) and `via: admin_api` to the audit row.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from policy import abi
from policy.parse import PolicyError, parse_policy
from proxy import logs
from proxy.admin import models as m
from proxy.admin import queries as q
from proxy.admin.calls import decode_call
from proxy.admin.routes import Call, route
from proxy.audit.export import export_lines, verify_database
from proxy.audit.records import AuditEvent
from proxy.errors import BadInput, Conflict, NotFound
from proxy.guard import admin as guard
from signer.base import checksum
from signer.transactions import parse_address

ACCOUNTS, TRANSACTIONS, APPROVALS, AUDIT = "accounts", "transactions", "approvals", "audit"
USERS, POLICY, NODES = "users and API keys", "policy", "nodes"
READ_ERRORS = (400, 401, 403, 429, 503)
ONE_ERRORS = (*READ_ERRORS, 404)
WRITE_ERRORS = (*ONE_ERRORS, 409, 413)


def _address(name: str, text: str) -> bytes:
    address = parse_address(name, text)
    if address is None:  # pragma: no cover (a str parses to an address or raises)
        raise BadInput(f"{name}: an address is needed")
    return address


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


def _page(items: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """The page's items (one more was fetched to tell whether another page follows) and the
    cursor of the next page."""
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    return items, q.encode_cursor(*key(items[-1]))


# --- who is calling -------------------------------------------------------------------------


@route("GET", "/me", tag=USERS, answer=m.Me, errors=(401, 403, 429, 503))
async def me(call: Call) -> m.Me:
    """The caller: user, organisation, role, and whether they may approve.

    A console calls this after sign-in to check the credential it was given."""
    p = call.principal
    return m.Me(user=p.user_id, organisation=p.organisation, role=p.role,  # type: ignore[arg-type]
                credential=call.credential, unlocked=call.unlocked)  # fmt: skip


# --- accounts -------------------------------------------------------------------------------


def _account_view(services: Any, row: Any) -> dict[str, Any]:
    address = checksum(row["address"])
    depth = services.metrics.registry.get_sample_value(
        "qsigner_ledger_queue_depth", {"account": address})  # fmt: skip
    ledger = m.NonceLedger(
        next_nonce=row["next_nonce"], in_flight=row["in_flight"],
        lowest_in_flight=row["lowest_in_flight"], last_mined_nonce=row["last_mined_nonce"],
        last_mined_at=row["last_mined_at"], chain_mined_count=row["mined_count"],
        holes=row["holes"], queue_depth=int(depth or 0))  # fmt: skip
    return {"address": address, "name": row["name"], "token_label": row["token_label"],
            "users": row["users"], "ledger": ledger}  # fmt: skip


@route("GET", "/accounts", tag=ACCOUNTS, answer=m.Page[m.AccountView], query_model=m.PageQuery,
       errors=READ_ERRORS)  # fmt: skip
async def list_accounts(call: Call) -> m.Page[m.AccountView]:
    """The organisation's accounts, with what the nonce ledger knows of each.

    `next_nonce` is the next nonce the ledger would give; `in_flight` counts transactions
    reserved, signed or sent and not yet mined; `queue_depth` is the requests of the replica
    that answers waiting for a nonce of the account."""
    query: m.PageQuery = call.query
    after = q.decode_cursor(query.cursor, (int,))
    services = call.services
    rows = await services.identity.pool.fetch(
        q.ACCOUNTS, call.principal.organisation_id, services.pool.chain_id,
        after[0] if after else None, None, query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["id"],))
    return m.Page[m.AccountView](
        items=[m.AccountView(**_account_view(services, r)) for r in rows], next_cursor=cursor
    )


@route("GET", "/accounts/{address}", tag=ACCOUNTS, answer=m.AccountDetail,
       path_model=m.AccountPath, errors=ONE_ERRORS)  # fmt: skip
async def get_account(call: Call) -> m.AccountDetail:
    """One account of the organisation, with its nonce ledger and the node's counts now.

    `chain` is null when no node answered."""
    path: m.AccountPath = call.path
    address = _address("address", path.address)
    services = call.services
    rows = await services.identity.pool.fetch(
        q.ACCOUNTS, call.principal.organisation_id, services.pool.chain_id, None, address, 1
    )
    if not rows:
        raise NotFound(f"{checksum(address)} is not an account of {call.principal.organisation}")
    chain: m.ChainCounts | None = None
    with contextlib.suppress(Exception):  # the node's counts are a bonus: the ledger answers
        mined, pending = await services.ledger.chain_counts(address, fresh=True)
        chain = m.ChainCounts(mined=mined, pending=pending)
    return m.AccountDetail(**_account_view(services, rows[0]), chain=chain)


# --- transactions ---------------------------------------------------------------------------


def _transaction(row: Any) -> m.TransactionView:
    return m.TransactionView(
        hash=_hex(row["tx_hash"]), account=checksum(row["account"]), nonce=row["nonce"],
        state=row["state"], kind=row["kind"], user=row["user_id"],
        request_id=row["request_id"], node=row["node"], block_number=row["block_number"],
        receipt_status=row["receipt_status"], reason=row["reason"],
        send_attempts=row["send_attempts"], private=row["private"],
        created_at=row["created_at"], signed_at=row["signed_at"], sent_at=row["sent_at"],
        mined_at=row["mined_at"])  # fmt: skip


@route("GET", "/transactions", tag=TRANSACTIONS, answer=m.Page[m.TransactionView],
       query_model=m.TransactionQuery, errors=READ_ERRORS)  # fmt: skip
async def list_transactions(call: Call) -> m.Page[m.TransactionView]:
    """The nonce ledger's transactions of the organisation's accounts, newest first.

    Filters: `account`, `user`, `state`, and a time range on when the ledger row was made
    (`since` inclusive, `until` exclusive)."""
    query: m.TransactionQuery = call.query
    after = q.decode_cursor(query.cursor, (datetime, int))
    account = _address("account", query.account) if query.account else None
    rows = await call.services.identity.pool.fetch(
        q.TRANSACTIONS, call.services.pool.chain_id, call.principal.organisation_id, account,
        query.user, query.state, query.since, query.until, after[0] if after else None,
        after[1] if after else None, query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["created_at"], r["id"]))
    return m.Page[m.TransactionView](items=[_transaction(r) for r in rows], next_cursor=cursor)


def _entry(row: Any) -> m.AuditEntry:
    return m.AuditEntry(seq=row["seq"], at=row["at"], hash="0x" + row["hash"].hex(),
                        content=json.loads(row["content"]))  # fmt: skip


@route("GET", "/transactions/{hash}", tag=TRANSACTIONS, answer=m.TransactionLife,
       path_model=m.TransactionPath, errors=ONE_ERRORS)  # fmt: skip
async def get_transaction(call: Call) -> m.TransactionLife:
    """One transaction's life: its ledger row (nonce, state, node, times), rows that held the
    same bytes before, and the audit rows of its request (the decision, signing, sending).
    """
    path: m.TransactionPath = call.path
    tx_hash = bytes.fromhex(path.hash[2:])
    db = call.services.identity.pool
    rows = await db.fetch(q.TRANSACTION_BY_HASH, tx_hash, call.principal.organisation_id)
    if not rows:
        raise NotFound(f"no transaction {path.hash.lower()} of {call.principal.organisation}'s "
                       "accounts in the nonce ledger")  # fmt: skip
    live = rows[0]
    by_hash = f'%"tx_hash":"{path.hash.lower()}"%'
    request_id = live["request_id"]
    by_request = (f'%"request_id":{q.like_literal(json.dumps(request_id))}%'
                  if request_id else None)  # fmt: skip
    until = live["mined_at"] or datetime.now(UTC)
    events = await db.fetch(q.TRANSACTION_EVENTS, call.principal.organisation,
                            live["created_at"], by_hash, by_request, until)  # fmt: skip
    account = checksum(live["account"])
    mine = [e for e in map(_entry, events)
            if e.content.get("tx_hash") == path.hash.lower()
            or (e.content.get("request_id") == request_id
                and e.content.get("account") in (account, None))]  # fmt: skip
    return m.TransactionLife(transaction=_transaction(live),
                             earlier=[_transaction(r) for r in rows[1:]], events=mine)  # fmt: skip


# --- approvals ------------------------------------------------------------------------------


async def _approval(call: Call, row: Any) -> m.ApprovalView:
    votes = [m.VoteView.model_validate(v) for v in json.loads(row["votes"])]
    state = row["state"]
    if state == "pending" and row["expired"]:
        state = "expired"
    decision = await call.services.identity.pool.fetchrow(
        q.HELD_DECISION, call.principal.organisation, row["created_at"],
        f'%"approval_id":"{row["id"]}"%')  # fmt: skip
    request = None
    if decision is not None:
        content = json.loads(decision["content"])
        detail = content.get("detail") or {}
        request = {
            k: detail[k]
            for k in (
                "to",
                "value",
                "data",
                "gas",
                "data_cut",
                "private",
                "typed_domain",
                "typed_primary_type",
            )
            if k in detail
        }
        request["account"] = content.get("account")
        request["request_id"] = content.get("request_id")
    return m.ApprovalView(
        id=row["id"], state=state, requester=row["requester"], method=row["method"],
        rule=row["rule"], policy_version=row["policy_version"], needed=row["needed"],
        approvals=sum(v.vote == "approve" for v in votes), votes=votes,
        summary=json.loads(row["summary"]), request=request,
        call=decode_call(request.get("data"), bool(request.get("data_cut"))) if request else None,
        created_at=row["created_at"],
        expires_at=row["expires_at"], decided_at=row["decided_at"],
        used_at=row["used_at"])  # fmt: skip


@route("GET", "/approvals", tag=APPROVALS, answer=m.Page[m.ApprovalView],
       query_model=m.ApprovalQuery, errors=READ_ERRORS)  # fmt: skip
async def list_approvals(call: Call) -> m.Page[m.ApprovalView]:
    """Requests the policy held for approval, newest first; by default those still pending.

    `state`: pending (waiting, not expired), approved, rejected, used, expired."""
    query: m.ApprovalQuery = call.query
    after = q.decode_cursor(query.cursor, (datetime, str))
    rows = await call.services.identity.pool.fetch(
        q.APPROVALS, call.principal.organisation_id, query.state,
        after[0] if after else None, after[1] if after else None, query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["created_at"], r["id"]))
    return m.Page[m.ApprovalView](items=[await _approval(call, r) for r in rows],
                                  next_cursor=cursor)  # fmt: skip


@route("GET", "/approvals/{id}", tag=APPROVALS, answer=m.ApprovalView,
       path_model=m.ApprovalPath, errors=ONE_ERRORS)  # fmt: skip
async def get_approval(call: Call) -> m.ApprovalView:
    """One held request: what it would do, the rule that held it, and the votes so far."""
    path: m.ApprovalPath = call.path
    row = await call.services.identity.pool.fetchrow(q.APPROVAL, path.id,
                                                     call.principal.organisation_id)  # fmt: skip
    if row is None:
        raise NotFound(f"no held request {path.id} in {call.principal.organisation}")
    return await _approval(call, row)


async def _vote(call: Call, approve: bool) -> m.VoteResult:
    path: m.ApprovalPath = call.path
    body: m.VoteBody = call.body
    via = "admin_api" if body.comment is None else f"admin_api: {body.comment}"
    vote = await guard.decide(call.services.identity, call.services.audit, path.id,
                              call.principal, approve, via=via)  # fmt: skip
    return m.VoteResult(approval_id=vote.approval_id, state=vote.state,  # type: ignore[arg-type]
                        approvals=vote.votes, needed=vote.needed)  # fmt: skip


@route("POST", "/approvals/{id}/approve", tag=APPROVALS, answer=m.VoteResult,
       path_model=m.ApprovalPath, body_model=m.VoteBody, writes=True, proof=True,
       errors=WRITE_ERRORS)  # fmt: skip
async def approve(call: Call) -> m.VoteResult:
    """Approve a held request, as the CLI's `approve` does.

    The caller must be an admin of the request's organisation other than its requester, and
    proved: an API key, or a JWT with the admin's password in X-Signer-Password. Once enough
    admins approved, the requester's same request goes through once. An approval already
    decided or expired answers 409."""
    return await _vote(call, True)


@route("POST", "/approvals/{id}/reject", tag=APPROVALS, answer=m.VoteResult,
       path_model=m.ApprovalPath, body_model=m.VoteBody, writes=True, proof=True,
       errors=WRITE_ERRORS)  # fmt: skip
async def reject(call: Call) -> m.VoteResult:
    """Reject a held request, as the CLI's `reject` does (the same rules as approving)."""
    return await _vote(call, False)


# --- audit ----------------------------------------------------------------------------------


@route("GET", "/audit", tag=AUDIT, answer=m.Page[m.AuditEntry], query_model=m.AuditQuery,
       errors=READ_ERRORS)  # fmt: skip
async def list_audit(call: Call) -> m.Page[m.AuditEntry]:
    """The organisation's audit log, newest first, optionally of one kind and a time range."""
    query: m.AuditQuery = call.query
    after = q.decode_cursor(query.cursor, (int,))
    rows = await call.services.identity.pool.fetch(
        q.AUDIT_PAGE, call.principal.organisation, query.kind, query.since, query.until,
        after[0] if after else None, query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["seq"],))
    return m.Page[m.AuditEntry](items=[_entry(r) for r in rows], next_cursor=cursor)


@route("GET", "/audit/verify", tag=AUDIT, answer=m.AuditVerify, errors=READ_ERRORS)
async def verify_audit(call: Call) -> m.AuditVerify:
    """Check the organisation's chain as `audit verify --org` does: hash links, no gap, signed
    checkpoints. Answers whether it is intact, the first problem, and the last verified
    checkpoint (the part before it is vouched for by the audit key)."""
    organisation = call.principal.organisation
    async with call.services.identity.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            reports = await verify_database(conn, organisation=organisation)
    if not reports:
        return m.AuditVerify(intact=True, rows=0, head_seq=None, checkpoints=0,
                             last_checkpoint=None, broken_seq=None, problem=None)  # fmt: skip
    report = reports[0]
    last = report.last_checkpoint
    return m.AuditVerify(
        intact=report.broken is None, rows=report.rows, head_seq=report.head_seq,
        checkpoints=report.checkpoints,
        last_checkpoint=None if last is None else m.Checkpoint(
            seq=last.seq, at=last.at, address=checksum(last.address)),
        broken_seq=None if report.broken is None else report.broken.seq,
        problem=None if report.broken is None else str(report.broken))  # fmt: skip


@route("GET", "/audit/export", tag=AUDIT, answer=None, query_model=m.ExportQuery,
       download="application/jsonl", errors=READ_ERRORS)  # fmt: skip
async def export_audit(call: Call) -> web.StreamResponse:
    """Download the organisation's audit log as `audit export --org` writes it (JSON lines:
    a header, the rows in order, the signed checkpoints), for `audit verify --file`."""
    query: m.ExportQuery = call.query
    organisation = call.principal.organisation
    await call.services.audit.append(AuditEvent(
        kind="security", organisation=organisation, user=call.principal.user_id,
        action="audit_exported", detail={"via": "admin_api", "since": None if query.since is None
                                         else query.since.isoformat()}))  # fmt: skip
    response = web.StreamResponse(headers={
        "Content-Type": "application/jsonl",
        "Content-Disposition": 'attachment; filename="audit-export.jsonl"'})  # fmt: skip
    async with call.services.identity.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            lines = export_lines(conn, since=query.since, organisation=organisation)
            # Read the first line before answering: a database failure is still a clean error.
            first = await anext(lines)
            await response.prepare(call.request)
            try:
                buffered = [first[1]]
                async for _, line in lines:
                    buffered.append(line)
                    if len(buffered) >= 500:
                        await response.write("".join(buffered).encode())
                        buffered = []
                await response.write("".join(buffered).encode())
            except Exception as exc:
                # The answer has begun: no error body can follow. The connection is cut before
                # the body's end is sent, so the client sees a download cut short, never a
                # complete-looking file.
                logs.event("admin audit export cut short", logging.WARNING,
                           error=type(exc).__name__)  # fmt: skip
                transport = call.request.transport
                if transport is not None:
                    transport.abort()
                return response
    await response.write_eof()
    return response


# --- users and API keys ---------------------------------------------------------------------


def _user(row: Any) -> m.UserView:
    return m.UserView(id=row["id"], role=row["role"], status=row["status"],
                      locked_until=row["locked_until"], created_at=row["created_at"],
                      accounts=[checksum(a) for a in row["accounts"]],
                      api_keys=row["api_keys"])  # fmt: skip


@route("GET", "/users", tag=USERS, answer=m.Page[m.UserView], query_model=m.PageQuery,
       errors=READ_ERRORS)  # fmt: skip
async def list_users(call: Call) -> m.Page[m.UserView]:
    """The organisation's users: role, status, lock, accounts granted, active API keys."""
    query: m.PageQuery = call.query
    after = q.decode_cursor(query.cursor, (str,))
    rows = await call.services.identity.pool.fetch(
        q.USERS, call.principal.organisation_id, after[0] if after else None, None,
        query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["id"],))
    return m.Page[m.UserView](items=[_user(r) for r in rows], next_cursor=cursor)


@route("POST", "/users/{id}/disable", tag=USERS, answer=m.UserView, path_model=m.UserPath,
       writes=True, errors=WRITE_ERRORS)  # fmt: skip
async def disable_user(call: Call) -> m.UserView:
    """Disable a user of the organisation, as `user disable` does: they can no longer sign or
    read, at once on every replica. An admin cannot disable themselves."""
    path: m.UserPath = call.path
    principal = call.principal
    if path.id == principal.user_id:
        raise Conflict("an admin cannot disable themselves: ask another admin")
    await call.services.identity.disable_user(
        path.id, organisation_id=principal.organisation_id, by=principal.user_id
    )
    row = await call.services.identity.pool.fetchrow(
        q.USERS, principal.organisation_id, None, path.id, 1)  # fmt: skip
    return _user(row)


def _key(row: Any) -> m.ApiKeyView:
    return m.ApiKeyView(id=row["id"], user=row["user_id"], created_at=row["created_at"],
                        revoked_at=row["revoked_at"])  # fmt: skip


@route("GET", "/api-keys", tag=USERS, answer=m.Page[m.ApiKeyView], query_model=m.ApiKeyQuery,
       errors=READ_ERRORS)  # fmt: skip
async def list_api_keys(call: Call) -> m.Page[m.ApiKeyView]:
    """The organisation's API keys (ids only: a key's secret is shown once, at creation),
    newest first; optionally one user's, or only revoked or active ones."""
    query: m.ApiKeyQuery = call.query
    after = q.decode_cursor(query.cursor, (datetime, str))
    rows = await call.services.identity.pool.fetch(
        q.API_KEYS, call.principal.organisation_id, query.user, query.revoked,
        after[0] if after else None, after[1] if after else None, query.limit + 1)  # fmt: skip
    rows, cursor = _page(list(rows), query.limit, lambda r: (r["created_at"], r["id"]))
    return m.Page[m.ApiKeyView](items=[_key(r) for r in rows], next_cursor=cursor)


@route("POST", "/api-keys/{id}/revoke", tag=USERS, answer=m.ApiKeyView,
       path_model=m.ApiKeyPath, writes=True, errors=WRITE_ERRORS)  # fmt: skip
async def revoke_api_key(call: Call) -> m.ApiKeyView:
    """Revoke an API key of the organisation, as `apikey revoke` does: it no longer
    authenticates, at once on every replica. A key already revoked answers 409."""
    path: m.ApiKeyPath = call.path
    principal = call.principal
    await call.services.identity.revoke_api_key(
        path.id, organisation_id=principal.organisation_id, by=principal.user_id
    )
    rows = await call.services.identity.pool.fetch(
        "SELECT id, user_id, created_at, revoked_at FROM api_keys WHERE id = $1", path.id
    )
    return _key(rows[0])


# --- policy ---------------------------------------------------------------------------------


@route("GET", "/policy", tag=POLICY, answer=m.PolicyView, errors=READ_ERRORS)
async def show_policy(call: Call) -> m.PolicyView:
    """The policy in force: its version, its YAML, when and by whom it was installed."""
    row = await call.services.identity.pool.fetchrow(q.POLICY, call.principal.organisation_id)
    if row is None:
        return m.PolicyView(version=None, source=None, installed_at=None, installed_by=None)
    return m.PolicyView(version=row["version"], source=row["source"],
                        installed_at=row["installed_at"],
                        installed_by=row["installed_by"])  # fmt: skip


def _check(source: str) -> str | None:
    try:
        parse_policy(source)
    except PolicyError as exc:
        return f"policy file: {exc}"
    return None


@route("POST", "/policy/validate", tag=POLICY, answer=m.PolicyCheck, body_model=m.PolicyDraft,
       errors=(*READ_ERRORS, 413))  # fmt: skip
async def validate_policy(call: Call) -> m.PolicyCheck:
    """Check a draft policy without installing it: whether it is valid, else what to fix
    (the line and the field)."""
    body: m.PolicyDraft = call.body
    error = _check(body.source)
    return m.PolicyCheck(valid=error is None, error=error)


async def _decimals(call: Call, source: str) -> dict[str, int]:
    """decimals() of the tokens whose units the draft uses, read from the node pool."""
    draft = parse_policy(source)
    found: dict[str, int] = {}
    data = "0x" + abi.encode_call(abi.DECIMALS, []).hex()
    for name in draft.decimals_needed():
        target = "0x" + draft.contracts[name].address.hex()
        with contextlib.suppress(Exception):  # a token that cannot tell: decided as the gate does
            answer = await call.services.pool.call("eth_call", [{"to": target, "data": data},
                                                                "latest"])  # fmt: skip
            decimals = abi.decimals_of(answer)
            if decimals is not None:
                found[name] = decimals
    return found


@route("POST", "/policy/dry-run", tag=POLICY, answer=m.DryRun, body_model=m.DryRunBody,
       errors=(*READ_ERRORS, 413))  # fmt: skip
async def dry_run_policy(call: Call) -> m.DryRun:
    """Replay the organisation's last audited requests against a draft, as `policy set
    --dry-run` does, and answer the decisions that would change. Installs nothing; a draft
    that is not valid answers 400 naming the line and the field."""
    body: m.DryRunBody = call.body
    error = _check(body.source)
    if error is not None:
        raise BadInput(error)
    decisions = await guard.recent_decisions(call.services.identity.pool,
                                             call.principal.organisation, body.last)  # fmt: skip
    lines = guard.replay(parse_policy(body.source), decisions,
                         await _decimals(call, body.source))  # fmt: skip
    changed = []
    for line in lines:
        request_id, old, new = line.split("\t")
        changed.append(m.ChangedDecision(request_id=None if request_id == "None" else request_id,
                                         old=old, new=new))  # fmt: skip
    return m.DryRun(replayed=len(decisions), changed=changed)


@route("PUT", "/policy", tag=POLICY, answer=m.PolicyInstalled, body_model=m.PolicyDraft,
       writes=True, errors=(*READ_ERRORS, 413))  # fmt: skip
async def set_policy(call: Call) -> m.PolicyInstalled:
    """Install a policy as the organisation's next version, as `policy set` does: validated
    first (nothing is installed when it is not valid), in force on every replica within a
    second, audited with the admin who installed it."""
    body: m.PolicyDraft = call.body
    version = await guard.install(call.services.identity, call.services.audit,
                                  call.principal.organisation, body.source,
                                  by=call.principal.user_id)  # fmt: skip
    return m.PolicyInstalled(version=version)


# --- nodes ----------------------------------------------------------------------------------


@route("GET", "/nodes", tag=NODES, answer=m.Nodes, errors=(401, 403, 429))
async def nodes(call: Call) -> m.Nodes:
    """The nodes as this replica's pool sees them (in rotation or why not, latest block,
    requests under way), and their changes in and out of rotation since it started."""
    pool = call.services.pool
    return m.Nodes(
        chain_id=pool.chain_id,
        nodes=[m.NodeView(url=n.url, ok=n.ok, block=n.block, chain_id=n.chain_id,
                          reason=n.reason, in_flight=n.in_flight) for n in pool.status()],
        history=[m.HealthChangeView(at=c.at, url=c.url, ok=c.ok, reason=c.reason)
                 for c in pool.health_history()])  # fmt: skip
