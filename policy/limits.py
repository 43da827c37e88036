"""What a request adds to each limit's counter (pure): the proxy stores the counters and reserves
the charges in the same database transaction as the decision, so replicas never overshoot."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from policy.abi import (
    ERC20_TRANSFER,
    ERC20_TRANSFER_FROM,
    AbiSignature,
    DecodedCall,
    decode_call,
)
from policy.amounts import token_amount
from policy.model import Limit, Per, Policy, RequestFacts

_TOKEN_MOVES = (ERC20_TRANSFER, ERC20_TRANSFER_FROM)


@dataclass(frozen=True)
class Charge:
    """What a request adds to one limit's counter."""

    limit: str  # the limit's name
    scope: str  # "user:<id>" | "account:0x<hex lower>" | "organisation:<name>"
    amount: int  # 1 for transactions; the gas limit; wei; token smallest units
    window_seconds: int
    max: int  # the limit's max in the counted unit (token units resolved)


def scope(per: Per, facts: RequestFacts) -> str:
    """The counter a limit `per` user, account or organisation keeps for this request."""
    if per == "user":
        return f"user:{facts.user}"
    if per == "account":
        return f"account:0x{facts.account.hex()}"
    return f"organisation:{facts.organisation}"


def charges(
    policy: Policy,
    facts: RequestFacts,
    decimals: Mapping[str, int],
    *,
    decode: Callable[[tuple[AbiSignature, ...]], DecodedCall | None] | None = None,
) -> tuple[Charge, ...]:
    """The limits that apply to this request and what it adds to each.

    Only signed transactions count. A token limit applies to ERC-20 transfer / transferFrom
    calls to its token's address and counts their `amount`. A zero amount adds nothing and is
    left out: a zero-value transaction never crosses a value limit. Raises policy.abi's
    CalldataError when a transfer to a limited token does not decode, and AmountError when a
    limit's max is in a token unit whose decimals are not given. `decode` lets evaluate share
    the calls it has already decoded."""
    if not facts.is_transaction or not policy.limits:
        return ()
    found: list[Charge] = []
    for limit in policy.limits:
        amount = _counted(policy, limit, facts, decode)
        if amount <= 0:
            continue
        maximum = token_amount(limit.max, decimals)
        found.append(
            Charge(limit.name, scope(limit.per, facts), amount, limit.window_seconds, maximum)
        )
    return tuple(found)


def first_exceeded(
    request_charges: tuple[Charge, ...], used: Mapping[tuple[str, str], int]
) -> Charge | None:
    """The first charge that would take its counter past the max (used + amount > max)."""
    for charge in request_charges:
        if used.get((charge.limit, charge.scope), 0) + charge.amount > charge.max:
            return charge
    return None


def _counted(
    policy: Policy,
    limit: Limit,
    facts: RequestFacts,
    decode: Callable[[tuple[AbiSignature, ...]], DecodedCall | None] | None,
) -> int:
    if limit.kind == "transactions":
        return 1
    if limit.kind == "gas":
        return facts.gas
    if limit.kind == "value":
        return facts.value
    contract = policy.contracts[limit.token] if limit.token is not None else None
    if contract is None or facts.to != contract.address:
        return 0
    call = decode(_TOKEN_MOVES) if decode is not None else decode_call(facts.data, _TOKEN_MOVES)
    if call is None:
        return 0
    amount = call.arg("amount")
    return amount if isinstance(amount, int) else 0
