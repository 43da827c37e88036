"""A signing request's decision, as the handlers ask for it: the request's facts for the policy,
the decision recorded in the audit log (with what a dry-run replays), the counters given back
when the request fails before reaching a node, and the signed outcome appended after."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from policy.model import RequestFacts
from proxy.audit.records import AuditEvent
from proxy.context import Caller, Services
from proxy.errors import DatabaseUnavailable, PolicyRefused
from proxy.filling import Private
from proxy.guard.gate import InForce, Verdict, request_digest
from proxy.rpc import RpcRequest
from signer.base import checksum
from signer.transactions import Transaction

log = logging.getLogger(__name__)

# Calldata kept in a decision's audit row for a dry-run to replay; longer is cut (and marked).
REPLAY_DATA_BYTES = 4096


def _event(caller: Caller, method: str, account: bytes, detail: Mapping[str, Any],
           digest: str | None = None) -> AuditEvent:  # fmt: skip
    principal = caller.principal
    return AuditEvent(kind="decision", organisation=principal.organisation,
                      user=principal.user_id, action="allow", request_id=caller.request_id,
                      account=checksum(account), method=method, digest=digest,
                      detail=dict(detail))  # fmt: skip


async def _account_name(services: Services, caller: Caller, account: bytes) -> str | None:
    return (await services.identity.account_for(caller.principal, account)).name


async def for_transaction(services: Services, caller: Caller, request: RpcRequest,
                          policy: InForce | None, sender: bytes, tx: Transaction,
                          private: Private | None = None) -> Verdict:  # fmt: skip
    """The transaction's verdict (a private one's over its payload, before Tessera keeps it).
    An allowed decision may still be on its way to the audit log (`Verdict.recording`):
    `recorded` waits for it, and must before anything signed is stored, sent or shown."""
    principal = caller.principal
    facts = RequestFacts(
        method=request.method, organisation=principal.organisation, user=principal.user_id,
        role=principal.role, account=sender,
        account_name=await _account_name(services, caller, sender), to=tx.to, value=tx.value,
        data=tx.data, gas=tx.gas, deploy=tx.to is None, private=private is not None,
        private_for=private.private_for if private is not None else (),
        privacy_flag=private.privacy_flag if private is not None else 0,
    )  # fmt: skip
    replay: dict[str, Any] = {"role": principal.role, "account_name": facts.account_name,
                              "to": checksum(tx.to) if tx.to else None,
                              "value": str(tx.value), "gas": tx.gas,
                              "data": "0x" + tx.data[:REPLAY_DATA_BYTES].hex(),
                              "data_cut": len(tx.data) > REPLAY_DATA_BYTES}  # fmt: skip
    if private is not None:
        replay["private"] = {"private_for": list(private.private_for),
                             "privacy_flag": private.privacy_flag}  # fmt: skip
    # What an approval is bound to: only a policy can hold a request for one.
    digest = (request_digest(principal.user_id, request.method, request.positional)
              if policy is not None else b"")  # fmt: skip
    return await services.gate.decide(principal.organisation_id, facts,
                                      _event(caller, request.method, sender, replay), digest,
                                      policy, record_later=True)  # fmt: skip


async def recorded(services: Services, verdict: Verdict) -> None:
    """Wait until the verdict's decision is in the audit log (raises what the append raised)."""
    await services.gate.recorded(verdict)


async def for_message(services: Services, caller: Caller, request: RpcRequest, account: bytes,
                      digest: bytes, typed: Mapping[str, Any] | None = None,
                      ) -> Verdict:  # fmt: skip
    principal = caller.principal
    domain = dict(typed.get("domain") or {}) if typed is not None else None
    primary = str(typed.get("primaryType")) if typed is not None else None
    facts = RequestFacts(
        method=request.method, organisation=principal.organisation, user=principal.user_id,
        role=principal.role, account=account,
        account_name=await _account_name(services, caller, account), typed_domain=domain,
        typed_primary_type=primary,
    )  # fmt: skip
    replay = {
        "role": principal.role,
        "account_name": facts.account_name,
        "typed_domain": domain,
        "typed_primary_type": primary,
    }
    policy = await services.gate.in_force(principal.organisation_id)
    bound = request_digest(principal.user_id, request.method, request.positional)
    return await services.gate.decide(
        principal.organisation_id,
        facts,
        _event(caller, request.method, account, replay, "0x" + digest.hex()),
        bound,
        policy,
    )


async def refused_by_check(services: Services, caller: Caller, request: RpcRequest,
                           sender: bytes, refusal: PolicyRefused) -> None:  # fmt: skip
    """A check on the chain refused the request before any policy: audited as a decision."""
    data = refusal.data if isinstance(refusal.data, dict) else {}
    event = _event(caller, request.method, sender, {"why": data.get("detail")})
    await services.audit.append(replace(event, action="deny", reason=data.get("reason"),
                                        rule=data.get("rule")))  # fmt: skip
    services.gate.counted("deny", data.get("reason"))


async def give_back(services: Services, caller: Caller, verdict: Verdict) -> None:
    """The request failed before reaching a node: what it counted against limits is freed,
    and the approval it used can be used again."""
    if not verdict.charged and verdict.used_approval is None:
        return
    try:
        await services.gate.release(verdict)
    except DatabaseUnavailable:
        # The reservation stays counted until its window passes: the safe side of a limit.
        log.warning("could not give back request %s's limit counts", caller.request_id)


def signed(services: Services, caller: Caller, method: str,
           account: bytes, tx_hash: bytes, nonce: int | None, outcome: str) -> None:  # fmt: skip
    """The outcome of an allowed request: its transaction hash and nonce ("sent" or "signed"),
    recorded without making the caller wait (the decision's row is in already, and the ledger
    holds the hash and nonce in any case): it rides with the next decision's statement."""
    principal = caller.principal
    services.gate.outcome(AuditEvent(
        kind="signed", organisation=principal.organisation, user=principal.user_id,
        action=outcome, request_id=caller.request_id, account=checksum(account),
        method=method, tx_hash="0x" + tx_hash.hex(), nonce=nonce))  # fmt: skip
