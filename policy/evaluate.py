"""The decision for one signing request (pure): rules, then limits over counters the proxy
hands in. Deny beats hold beats allow, then the policy's `default` (contract section 6)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from policy.abi import AbiSignature, CalldataError, DecodedCall, decode_call
from policy.amounts import AmountError, format_duration, format_units, format_wei, token_amount
from policy.limits import Charge, charges, first_exceeded
from policy.model import (
    TYPED_DATA_METHODS,
    Condition,
    Limit,
    Match,
    Operand,
    Policy,
    RequestFacts,
    Rule,
    TypedDataMatch,
    signature_kind,
)

# RequestFacts lives in policy.model (limits need it too); the spec names it with evaluate.
__all__ = ["Decision", "RequestFacts", "evaluate"]

# approval_rejected and approval_expired are told by the proxy, which keeps the approvals.
Reason = Literal[
    "denied", "limit_exceeded", "approval_required", "approval_rejected", "approval_expired"
]

_COMPARE: Mapping[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


@dataclass(frozen=True)
class Decision:
    action: Literal["allow", "deny", "hold"]  # what the policy decided
    enforced: bool  # False under mode: shadow (the request goes ahead)
    reason: Reason | None
    rule: str | None  # the deciding rule's or limit's name; None for the default
    detail: str  # one line a user reads
    charges: tuple[Charge, ...]  # to reserve when the request goes ahead

    @property
    def proceeds(self) -> bool:
        return self.action == "allow" or not self.enforced


class _Unmatchable(Exception):
    """A rule cannot be decided: one of its token amounts cannot be scaled (calldata that does
    not decode comes up as policy.abi's CalldataError). Such a rule matches as a deny."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def evaluate(
    policy: Policy,
    facts: RequestFacts,
    used: Mapping[tuple[str, str], int],
    decimals: Mapping[str, int],
    approved: bool = False,
) -> Decision:
    """Decide one request. `used[(limit, scope)]` is what that counter holds in its window
    before this request; `decimals` are the token decimals policy.decimals_needed() named;
    `approved` lets a matching hold rule through (never a deny or a limit)."""
    context = _Context(facts, decimals)
    hold: Rule | None = None
    allow: Rule | None = None
    unmatchable: tuple[Rule, str] | None = None
    for rule in policy.rules:
        try:
            if not _holds(rule.match, context):
                continue
        except _Unmatchable as signal:
            unmatchable = unmatchable or (rule, signal.detail)
            continue
        except CalldataError as error:
            unmatchable = unmatchable or (rule, f"the calldata does not decode: {error}")
            continue
        if rule.action == "deny":
            detail = f"rule {rule.name} denies this request"
            return _decided(
                policy, "deny", "denied", rule.name, detail, _shadow(policy, facts, decimals)
            )
        if rule.action == "hold":
            hold = hold or rule
        else:
            allow = allow or rule
    if unmatchable is not None:
        rule, detail = unmatchable
        detail = f"rule {rule.name}: {detail}"
        return _decided(
            policy, "deny", "denied", rule.name, detail, _shadow(policy, facts, decimals)
        )

    try:
        request_charges = charges(policy, facts, decimals, decode=context.decode)
    except CalldataError as error:
        limit = _token_limit_at(policy, facts)
        return _decided(
            policy, "deny", "denied", limit, f"limit {limit}: the calldata does not decode: {error}"
        )
    except AmountError as error:
        limit = _uncountable_limit(policy, decimals)
        return _decided(policy, "deny", "denied", limit, f"limit {limit}: {error}")
    crossed = first_exceeded(request_charges, used)
    if crossed is not None:
        detail = _limit_detail(
            policy, crossed, used.get((crossed.limit, crossed.scope), 0), decimals
        )
        return _decided(policy, "deny", "limit_exceeded", crossed.limit, detail, request_charges)

    if hold is not None and not approved:
        count = policy.approvals.approvers
        detail = f"rule {hold.name} holds this request for {count} approval{'s' * (count != 1)}"
        return _decided(policy, "hold", "approval_required", hold.name, detail, request_charges)
    if hold is not None:
        # The hold was the decision; its approval lifts it (a rule matched: default is moot).
        detail = f"approved (rule {hold.name} held it)"
        return _decided(policy, "allow", None, hold.name, detail, request_charges)
    if allow is not None:
        detail = f"allowed by rule {allow.name}"
        return _decided(policy, "allow", None, allow.name, detail, request_charges)
    if policy.default == "deny":
        return _decided(
            policy, "deny", "denied", None, "no rule allows this request", request_charges
        )
    return _decided(
        policy, "allow", None, None, "no rule matched: allowed by default", request_charges
    )


def _shadow(policy: Policy, facts: RequestFacts, decimals: Mapping[str, int]) -> tuple[Charge, ...]:
    """A denied request's charges, which only shadow mode reserves (the request goes ahead and
    counts, so that counters are right when enforcement starts); none it cannot count."""
    if policy.mode == "enforce":
        return ()
    try:
        return charges(policy, facts, decimals)
    except (CalldataError, AmountError):
        return ()


def _decided(
    policy: Policy,
    action: Literal["allow", "deny", "hold"],
    reason: Reason | None,
    rule: str | None,
    detail: str,
    request_charges: tuple[Charge, ...] = (),
) -> Decision:
    enforced = policy.mode == "enforce"
    proceeds = action == "allow" or not enforced
    return Decision(action, enforced, reason, rule, detail, request_charges if proceeds else ())


class _Context:
    """One request's facts plus what evaluating it computes once (decoded calls)."""

    __slots__ = ("_decoded", "decimals", "facts")

    def __init__(self, facts: RequestFacts, decimals: Mapping[str, int]) -> None:
        self.facts = facts
        self.decimals = decimals
        self._decoded: dict[AbiSignature, DecodedCall | CalldataError | None] = {}

    def decode(self, functions: tuple[AbiSignature, ...]) -> DecodedCall | None:
        """The call among `functions` that the calldata makes, decoded once per request
        (rules and token limits share it). Raises CalldataError, every time it is asked."""
        data = self.facts.data
        function = next((f for f in functions if f.selector == data[:4]), None)
        if function is None or len(data) < 4:
            return None
        if function not in self._decoded:
            try:
                self._decoded[function] = decode_call(data, (function,))
            except CalldataError as error:
                self._decoded[function] = error
        found = self._decoded[function]
        if isinstance(found, CalldataError):
            raise found
        return found

    def amount(self, operand: Operand) -> Any:
        """An operand ready to compare: a token amount scaled by its token's decimals."""
        if isinstance(operand, bool | bytes | str):
            return operand
        try:
            return token_amount(operand, self.decimals)
        except AmountError as error:
            raise _Unmatchable(str(error)) from error


def _holds(match: Match, context: _Context) -> bool:
    """Whether every condition of `match` holds; the cheap ones first, calldata last."""
    facts = context.facts
    if match.methods is not None and signature_kind(facts.method) not in {
        signature_kind(m) for m in match.methods
    }:
        return False
    if match.users is not None and facts.user not in match.users:
        return False
    if match.roles is not None and facts.role not in match.roles:
        return False
    accounts = match.accounts
    if accounts is not None and facts.account not in accounts.addresses:
        if facts.account_name is None or facts.account_name not in accounts.names:
            return False
    if match.typed_data is not None and not _typed_data_holds(match.typed_data, facts):
        return False
    if not match.transaction_only:
        return True
    if not facts.is_transaction:
        return False
    if match.deploy is not None and (facts.deploy or facts.to is None) != match.deploy:
        return False
    if match.private is not None and facts.private != match.private:
        return False
    if match.private_for_not_in is not None and not any(
        key not in match.private_for_not_in for key in facts.private_for
    ):
        return False
    if match.privacy_flag is not None and (
        not facts.private or facts.privacy_flag not in match.privacy_flag
    ):
        return False
    if match.privacy_flag_not_in is not None and (
        not facts.private or facts.privacy_flag in match.privacy_flag_not_in
    ):
        return False
    if match.to is not None and (facts.to is None or facts.to not in match.to):
        return False
    # A deployment goes to none of the listed addresses: `to_not_in` holds for it.
    if match.to_not_in is not None and facts.to is not None and facts.to in match.to_not_in:
        return False
    if match.contract_address is not None and facts.to != match.contract_address:
        return False
    for condition in match.value:
        if not _compare(facts.value, condition, context):
            return False
    if match.function is None:
        return True
    call = context.decode(match.function.candidates(facts.to))
    if call is None:
        return False
    return all(_compare(call.arg(arg.key), arg.condition, context) for arg in match.args)


def _compare(actual: Any, condition: Condition, context: _Context) -> bool:
    operand = condition.operand
    if condition.op in ("in", "not_in"):
        assert isinstance(operand, tuple)  # noqa: S101 - parse builds lists for in / not_in
        found = any(_equal(actual, context.amount(item)) for item in operand)
        return found if condition.op == "in" else not found
    assert not isinstance(operand, tuple)  # noqa: S101 - parse builds scalars for the rest
    expected = context.amount(operand)
    if condition.op == "eq":
        return _equal(actual, expected)
    if condition.op == "ne":
        return not _equal(actual, expected)
    if type(actual) is not int:  # ordering applies to numbers only (parse checks the types)
        return False
    return _COMPARE[condition.op](actual, expected)


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        # True == 1 in Python: a bool equals a bool only.
        return type(actual) is type(expected) and actual == expected
    return bool(actual == expected)


def _typed_data_holds(match: TypedDataMatch, facts: RequestFacts) -> bool:
    if facts.method not in TYPED_DATA_METHODS:
        return False
    if match.primary_type is not None and facts.typed_primary_type != match.primary_type:
        return False
    domain = facts.typed_domain or {}
    for key, expected in match.domain.items():
        if _domain_value(key, domain.get(key)) != expected:
            return False
    return True


def _domain_value(key: str, value: Any) -> str | int | bytes | None:
    """A domain field as the caller sent it (JSON), in the form TypedDataMatch holds."""
    if value is None:
        return None
    try:
        if key == "chainId":
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value
            text = str(value).strip()
            return int(text, 16) if text.lower().startswith("0x") else int(text)
        if key in ("verifyingContract", "salt"):
            text = str(value)
            return bytes.fromhex(text[2:] if text.lower().startswith("0x") else text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _token_limit_at(policy: Policy, facts: RequestFacts) -> str | None:
    contract = policy.contract_at(facts.to) if facts.to is not None else None
    for limit in policy.limits:
        if limit.kind == "token" and contract is not None and limit.token == contract.name:
            return limit.name
    return None


def _uncountable_limit(policy: Policy, decimals: Mapping[str, int]) -> str | None:
    for limit in policy.limits:
        try:
            token_amount(limit.max, decimals)
        except AmountError:
            return limit.name
    return None


def _limit_detail(policy: Policy, charge: Charge, used: int, decimals: Mapping[str, int]) -> str:
    limit = next(limit for limit in policy.limits if limit.name == charge.limit)
    show = _show_for(limit, decimals)
    per = limit.per
    window = format_duration(limit.window_seconds)
    if limit.kind == "transactions":
        return (
            f"limit {limit.name}: {used} of {charge.max} transactions per {per} in {window} "
            "already used"
        )
    return (
        f"limit {limit.name}: {show(used)} used + {show(charge.amount)} would exceed "
        f"{show(charge.max)} per {per} in {window}"
    )


def _show_for(limit: Limit, decimals: Mapping[str, int]) -> Callable[[int], str]:
    if limit.kind == "value":
        return format_wei
    if limit.kind == "token" and limit.token is not None and limit.token in decimals:
        places, symbol = decimals[limit.token], limit.token
        return lambda amount: format_units(amount, places, symbol)
    if limit.kind == "gas":
        return lambda amount: f"{amount} gas"
    return str
