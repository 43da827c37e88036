"""policy.evaluate over parsed policies: each match key and each action allowed once and refused
once, the order deny > undecodable calldata > limits > hold > allow > default, shadow mode,
limits per user / account / organisation in transactions, gas, value and tokens, approvals,
messages and typed data."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.abi import (
    ERC20_APPROVE,
    ERC20_TRANSFER,
    ERC20_TRANSFER_FROM,
    encode_call,
    parse_signature,
)
from policy.evaluate import Decision, evaluate
from policy.limits import Charge, charges
from policy.model import RequestFacts
from policy.parse import parse_policy
from tests.support.policies import ACME, BLOCKED, TREASURY, TWENTY_RULES, VAULT, address, sample

ALICE = bytes.fromhex("a1" * 20)
BOB_ACCOUNT = bytes.fromhex("b0" * 20)
SOMEONE = bytes.fromhex("5e" * 20)
ACME_BYTES = bytes.fromhex(ACME[2:])
VAULT_BYTES = bytes.fromhex(VAULT[2:])
ETHER = 10**18
DEPOSIT = parse_signature("deposit(uint256 amount)")
WITHDRAW = parse_signature("withdraw(uint256 amount,address to)")
SET_FLAG = parse_signature("setFlag(bool on,bytes4 tag,string note)")

# Tessera public keys: two named in `parties`, one not.
K1, K2, K3 = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2, 3))
CONTRACTS = f"""\
contracts:
  ACME: {{address: "{ACME}", standard: erc20}}
  vault:
    address: "{VAULT}"
    functions: ["deposit(uint256 amount)", "withdraw(uint256 amount,address to)",
                "setFlag(bool on,bytes4 tag,string note)"]
parties:
  k1: "{K1}"
  k2: "{K2}"
"""


def policy_text(
    rules: str = "", *, default: str = "allow", limits: str = "", mode: str = "enforce"
) -> str:
    text = f"version: 1\nmode: {mode}\ndefault: {default}\n{CONTRACTS}"
    if rules:
        text += "rules:\n" + rules
    if limits:
        text += "limits:\n" + limits
    return text


def rule(name: str, action: str, match: str) -> str:
    return f"  - name: {name}\n    action: {action}\n    match: {match}\n"


def tx(**changes: Any) -> RequestFacts:
    """A signer's plain 1-ether transfer to SOMEONE, changed as given."""
    facts = RequestFacts(
        method="eth_sendTransaction",
        organisation="acme-corp",
        user="alice",
        role="signer",
        account=ALICE,
        account_name="operations",
        to=SOMEONE,
        value=ETHER,
        gas=21000,
    )
    return dataclasses.replace(facts, **changes)


def call(function: Any, *args: Any, to: bytes = ACME_BYTES, **changes: Any) -> RequestFacts:
    """A call of `function` with `args` to ACME (or `to`), no value."""
    fields: dict[str, Any] = {"to": to, "value": 0, "gas": 60000}
    fields.update(changes, data=encode_call(function, list(args)))
    return tx(**fields)


def message(method: str = "personal_sign", **changes: Any) -> RequestFacts:
    return dataclasses.replace(tx(to=None, value=0, gas=0), method=method, **changes)


def typed(
    domain: Mapping[str, Any] | None,
    primary: str = "Order",
    method: str = "eth_signTypedData_v4",
    **changes: Any,
) -> RequestFacts:
    return message(method, typed_domain=domain, typed_primary_type=primary, **changes)


def decide(
    text: str,
    facts: RequestFacts,
    used: Mapping[tuple[str, str], int] | None = None,
    decimals: Mapping[str, int] | None = None,
    approved: bool = False,
) -> Decision:
    return evaluate(
        parse_policy(text), facts, used or {}, {"ACME": 18} if decimals is None else decimals,
        approved,
    )  # fmt: skip


# --- each match key: the deny rule applies to one request and not to the other -----------------

MATCH_CASES: list[tuple[str, str, RequestFacts, RequestFacts]] = [
    ("users", "{users: [alice, carol]}", tx(), tx(user="bob")),
    ("roles", "{roles: admin}", tx(role="admin"), tx()),
    ("accounts by address", f'{{accounts: ["0x{"b0" * 20}"]}}', tx(account=BOB_ACCOUNT), tx()),
    ("accounts by name", "{accounts: [operations]}", tx(), tx(account_name="payroll")),
    ("method", "{method: [eth_signTransaction]}", tx(method="eth_signTransaction"), tx()),
    ("method of a message", "{method: personal_sign}", message(), message("eth_sign")),
    ("to by address", f'{{to: "0x{"5e" * 20}"}}', tx(), tx(to=BOB_ACCOUNT)),
    ("to by contract name", "{to: [ACME, vault]}", tx(to=VAULT_BYTES), tx()),
    ("to_not_in", "{to_not_in: [ACME, vault]}", tx(), tx(to=ACME_BYTES)),
    ("to_not_in holds for a deployment", "{to_not_in: [ACME]}", tx(to=None, deploy=True),
     tx(to=ACME_BYTES)),
    ("contract", "{contract: vault}", tx(to=VAULT_BYTES), tx()),
    ("function by name", "{contract: ACME, function: transfer}",
     call(ERC20_TRANSFER, SOMEONE, 5), call(ERC20_APPROVE, SOMEONE, 5)),
    ("function by signature on a contract",
     '{contract: vault, function: "withdraw(uint256,address)"}',
     call(WITHDRAW, 1, SOMEONE, to=VAULT_BYTES), call(DEPOSIT, 1, to=VAULT_BYTES)),
    ("function by signature at any address", '{function: "approve(address,uint256)"}',
     call(ERC20_APPROVE, SOMEONE, 1, to=BOB_ACCOUNT), call(ERC20_TRANSFER, SOMEONE, 1)),
    ("function with to naming the contract", "{to: vault, function: deposit}",
     call(DEPOSIT, 1, to=VAULT_BYTES), call(WITHDRAW, 1, SOMEONE, to=VAULT_BYTES)),
    ("args eq address", f'{{contract: ACME, function: transfer, args: {{to: "0x{"5e" * 20}"}}}}',
     call(ERC20_TRANSFER, SOMEONE, 5), call(ERC20_TRANSFER, BOB_ACCOUNT, 5)),
    ("args eq contract name", "{contract: ACME, function: approve, args: {spender: {eq: vault}}}",
     call(ERC20_APPROVE, VAULT_BYTES, 5), call(ERC20_APPROVE, SOMEONE, 5)),
    ("args ne", "{contract: ACME, function: approve, args: {spender: {ne: vault}}}",
     call(ERC20_APPROVE, SOMEONE, 5), call(ERC20_APPROVE, VAULT_BYTES, 5)),
    ("args lt", '{contract: ACME, function: transfer, args: {amount: {lt: "1 ACME"}}}',
     call(ERC20_TRANSFER, SOMEONE, 10**18 - 1), call(ERC20_TRANSFER, SOMEONE, 10**18)),
    ("args le", '{contract: ACME, function: transfer, args: {amount: {le: "1 ACME"}}}',
     call(ERC20_TRANSFER, SOMEONE, 10**18), call(ERC20_TRANSFER, SOMEONE, 10**18 + 1)),
    ("args gt", '{contract: ACME, function: transfer, args: {amount: {gt: "2.5 ACME"}}}',
     call(ERC20_TRANSFER, SOMEONE, 25 * 10**17 + 1), call(ERC20_TRANSFER, SOMEONE, 25 * 10**17)),
    ("args ge", "{contract: ACME, function: transfer, args: {amount: {ge: 1000}}}",
     call(ERC20_TRANSFER, SOMEONE, 1000), call(ERC20_TRANSFER, SOMEONE, 999)),
    ("args in",
     f'{{contract: ACME, function: transfer, args: {{to: {{in: [vault, "{BLOCKED[0]}"]}}}}}}',
     call(ERC20_TRANSFER, VAULT_BYTES, 1), call(ERC20_TRANSFER, SOMEONE, 1)),
    ("args not_in", "{contract: ACME, function: transfer, args: {amount: {not_in: [1, 2]}}}",
     call(ERC20_TRANSFER, SOMEONE, 3), call(ERC20_TRANSFER, SOMEONE, 2)),
    ("args by index", '{contract: vault, function: withdraw, args: {0: {gt: "1 ether"}}}',
     call(WITHDRAW, 2 * ETHER, SOMEONE, to=VAULT_BYTES),
     call(WITHDRAW, ETHER, SOMEONE, to=VAULT_BYTES)),
    ("args of bool, bytes and string",
     '{contract: vault, function: setFlag, args: {on: true, tag: "0xcafe0001", note: {ne: ok}}}',
     call(SET_FLAG, True, bytes.fromhex("cafe0001"), "x", to=VAULT_BYTES),
     call(SET_FLAG, True, bytes.fromhex("cafe0001"), "ok", to=VAULT_BYTES)),
    ("args bool", "{contract: vault, function: setFlag, args: {on: false}}",
     call(SET_FLAG, False, b"\0" * 4, "", to=VAULT_BYTES),
     call(SET_FLAG, True, b"\0" * 4, "", to=VAULT_BYTES)),
    ("value gt", '{value: {gt: "5 ether"}}', tx(value=5 * ETHER + 1), tx(value=5 * ETHER)),
    ("value bare is eq", '{value: "20 gwei"}', tx(value=20 * 10**9), tx(value=20 * 10**9 + 1)),
    ("value in", '{value: {in: ["1 ether", 0]}}', tx(value=0), tx(value=2 * ETHER)),
    ("deploy true", "{deploy: true}", tx(to=None, deploy=True), tx()),
    ("deploy false", "{deploy: false}", tx(), tx(to=None, deploy=True)),
    ("private", "{private: true}", tx(private=True, private_for=(K1,)), tx()),
    ("private_for_not_in", "{private_for_not_in: [k1, k2]}",
     tx(private=True, private_for=(K1, K3)), tx(private=True, private_for=(K2, K1))),
    ("private_for_not_in by key", f'{{private_for_not_in: [k1, "{K3}"]}}',
     tx(private=True, private_for=(K2,)), tx(private=True, private_for=(K3, K1))),
    ("privacy_flag", "{privacy_flag: [1, 3]}",
     tx(private=True, private_for=(K1,), privacy_flag=3), tx(private=True, private_for=(K1,))),
    ("privacy_flag_not_in", "{privacy_flag_not_in: 0}",
     tx(private=True, private_for=(K1,), privacy_flag=1), tx(private=True, private_for=(K1,))),
    ("privacy_flag never matches a public transaction", "{privacy_flag: 0}",
     tx(private=True, private_for=(K1,)), tx()),
    ("typed_data domain name", "{typed_data: {domain: {name: Acme Exchange}}}",
     typed({"name": "Acme Exchange"}), typed({"name": "Other"})),
    ("typed_data chainId as the caller's hex text", "{typed_data: {domain: {chainId: 1337}}}",
     typed({"chainId": "0x539"}), typed({"chainId": 1})),
    ("typed_data verifyingContract by name", "{typed_data: {domain: {verifyingContract: vault}}}",
     typed({"verifyingContract": VAULT.lower()}), typed({"verifyingContract": ACME})),
    ("typed_data primary_type", "{typed_data: {primary_type: Permit}}",
     typed({}, "Permit"), typed({}, "Order")),
    ("typed_data never matches another message", "{typed_data: {primary_type: Permit}}",
     typed({}, "Permit", method="eth_signTypedData"), message(typed_primary_type="Permit")),
    ("all keys must hold", "{users: [alice], value: {gt: 0}}", tx(), tx(value=0)),
    ("empty match matches everything", "{}", message(), message()),
]  # fmt: skip


@pytest.mark.parametrize(("name", "match", "matching", "other"), MATCH_CASES,
                         ids=[case[0] for case in MATCH_CASES])  # fmt: skip
def test_each_match_key(name: str, match: str, matching: RequestFacts, other: RequestFacts) -> None:
    text = policy_text(rule("the-rule", "deny", match))
    refused = decide(text, matching)
    assert (refused.action, refused.reason, refused.rule) == ("deny", "denied", "the-rule")
    assert refused.detail == "rule the-rule denies this request"
    if name == "empty match matches everything":
        return
    allowed = decide(text, other)
    assert (allowed.action, allowed.reason, allowed.rule) == ("allow", None, None)


TRANSFER_TO_ACME = call(ERC20_TRANSFER, SOMEONE, 1)


@pytest.mark.parametrize(
    ("match", "transaction"),
    [('{to: "0x' + "5e" * 20 + '"}', tx()), ("{to_not_in: [vault]}", tx()),
     ("{contract: ACME}", TRANSFER_TO_ACME), ("{value: {ge: 0}}", tx()),
     ('{function: "transfer(address,uint256)"}', TRANSFER_TO_ACME),
     ("{contract: ACME, function: transfer, args: {amount: {ge: 0}}}", TRANSFER_TO_ACME),
     ("{deploy: false}", tx()), ("{private: false}", tx()),
     ("{private_for_not_in: [k1]}", tx(private=True, private_for=(K2,))),
     ("{privacy_flag: 0}", tx(private=True, private_for=(K2,)))],
)  # fmt: skip
def test_a_transaction_key_never_matches_a_message(match: str, transaction: RequestFacts) -> None:
    text = policy_text(rule("tx-only", "deny", match))
    assert decide(text, transaction).action == "deny"
    for method in ("personal_sign", "eth_sign", "eth_signTypedData_v4"):
        assert decide(text, message(method)).action == "allow"


# --- each action, allowed once and refused once ------------------------------------------------


def test_allow_rule_under_default_deny() -> None:
    text = policy_text(rule("treasury-ops", "allow", "{users: [alice]}"), default="deny")
    allowed = decide(text, tx())
    assert (allowed.action, allowed.rule, allowed.detail) == (
        "allow", "treasury-ops", "allowed by rule treasury-ops",
    )  # fmt: skip
    refused = decide(text, tx(user="bob"))
    assert (refused.action, refused.reason, refused.rule) == ("deny", "denied", None)
    assert refused.detail == "no rule allows this request"
    assert not refused.proceeds and refused.charges == ()


def test_hold_rule() -> None:
    text = policy_text(rule("large-value", "hold", '{value: {gt: "5 ether"}}'))
    held = decide(text, tx(value=6 * ETHER))
    assert (held.action, held.reason, held.rule) == ("hold", "approval_required", "large-value")
    assert not held.proceeds and held.charges == ()
    assert decide(text, tx(value=5 * ETHER)).action == "allow"


def test_deny_rule() -> None:
    text = policy_text(rule("no-deployments", "deny", "{deploy: true}"))
    assert decide(text, tx(to=None, deploy=True)).action == "deny"
    assert decide(text, tx()).action == "allow"


def test_default_allow_and_deny_without_rules() -> None:
    allowed = decide(policy_text(), tx())
    assert (allowed.action, allowed.reason, allowed.rule) == ("allow", None, None)
    refused = decide(policy_text(default="deny"), message())
    assert (refused.action, refused.reason, refused.rule) == ("deny", "denied", None)


def test_deny_beats_hold_beats_allow_whatever_the_order() -> None:
    allow = rule("a", "allow", "{users: [alice]}")
    hold = rule("h", "hold", "{value: {gt: 0}}")
    deny = rule("d", "deny", "{roles: [signer]}")
    for rules in (allow + hold + deny, deny + hold + allow, hold + allow + deny):
        assert decide(policy_text(rules), tx()).rule == "d"
    for rules in (allow + hold, hold + allow):
        decision = decide(policy_text(rules, default="deny"), tx())
        assert (decision.action, decision.rule) == ("hold", "h")
    # Among rules of one action, the first in the file names the decision.
    two = rule("h1", "hold", "{users: [alice]}") + rule("h2", "hold", "{roles: [signer]}")
    assert decide(policy_text(two), tx()).rule == "h1"


# --- approvals ---------------------------------------------------------------------------------


def test_an_approval_lets_a_hold_through_but_not_a_deny() -> None:
    hold = rule("large-value", "hold", '{value: {gt: "5 ether"}}')
    released = decide(policy_text(hold, default="deny"), tx(value=6 * ETHER), approved=True)
    assert (released.action, released.rule, released.reason) == ("allow", "large-value", None)
    assert released.proceeds and released.charges == ()  # no limits in this policy
    both = hold + rule("no-bob", "deny", "{users: [bob]}")
    denied = decide(policy_text(both), tx(user="bob", value=6 * ETHER), approved=True)
    assert (denied.action, denied.rule) == ("deny", "no-bob")


def test_an_approval_does_not_lift_a_limit() -> None:
    text = policy_text(
        rule("large-value", "hold", '{value: {gt: "5 ether"}}'),
        limits='  - {name: value-per-day, per: user, window: 24h, max_value: "10 ether"}\n',
    )
    used = {("value-per-day", "user:alice"): 5 * ETHER}
    decision = decide(text, tx(value=6 * ETHER), used=used, approved=True)
    assert (decision.action, decision.reason, decision.rule) == (
        "deny", "limit_exceeded", "value-per-day",
    )  # fmt: skip


def test_hold_counts_the_approvers_needed() -> None:
    text = policy_text(rule("h", "hold", "{}")) + "approvals: {approvers: 2, expire: 30m}\n"
    assert decide(text, tx()).detail == "rule h holds this request for 2 approvals"


# --- shadow mode -------------------------------------------------------------------------------


def test_shadow_mode_decides_but_refuses_nothing() -> None:
    rules = rule("no-bob", "deny", "{users: [bob]}") + rule(
        "big", "hold", '{value: {gt: "5 ether"}}'
    )
    limits = "  - {name: tx-rate, per: user, window: 1m, max_transactions: 1}\n"
    text = policy_text(rules, limits=limits, mode="shadow")
    denied = decide(text, tx(user="bob"))
    assert (denied.action, denied.reason, denied.enforced, denied.proceeds) == (
        "deny", "denied", False, True,
    )  # fmt: skip
    # What goes ahead is counted, so that the counters are right when enforcement starts.
    assert [c.limit for c in denied.charges] == ["tx-rate"]
    held = decide(text, tx(value=6 * ETHER))
    assert (held.action, held.proceeds) == ("hold", True)
    over = decide(text, tx(), used={("tx-rate", "user:alice"): 1})
    assert (over.action, over.reason, over.proceeds) == ("deny", "limit_exceeded", True)
    enforced = decide(text.replace("mode: shadow", "mode: enforce"), tx(user="bob"))
    assert (enforced.enforced, enforced.proceeds, enforced.charges) == (True, False, ())


# --- limits ------------------------------------------------------------------------------------

LIMITS = """\
  - {name: tx-rate, per: user, window: 1m, max_transactions: 3}
  - {name: gas-per-day, per: account, window: 24h, max_gas: 100000}
  - {name: value-per-day, per: organisation, window: 1d, max_value: "10 ether"}
  - {name: acme-per-day, per: user, window: 24h, token: ACME, max_amount: "500 ACME"}
"""
SCOPES = {
    "tx-rate": "user:alice",
    "gas-per-day": "account:0x" + "a1" * 20,
    "value-per-day": "organisation:acme-corp",
    "acme-per-day": "user:alice",
}


def test_charges_name_each_limit_its_scope_and_amount() -> None:
    policy = parse_policy(policy_text(limits=LIMITS))
    assert charges(policy, tx(value=2 * ETHER, gas=30000), {"ACME": 18}) == (
        Charge("tx-rate", SCOPES["tx-rate"], 1, 60, 3),
        Charge("gas-per-day", SCOPES["gas-per-day"], 30000, 86400, 100000),
        Charge("value-per-day", SCOPES["value-per-day"], 2 * ETHER, 86400, 10 * ETHER),
    )
    transfer = call(ERC20_TRANSFER, SOMEONE, 7 * ETHER, gas=50000)
    assert [(c.limit, c.amount, c.max) for c in charges(policy, transfer, {"ACME": 18})] == [
        ("tx-rate", 1, 3), ("gas-per-day", 50000, 100000), ("acme-per-day", 7 * ETHER, 500 * ETHER),
    ]  # fmt: skip
    pull = call(ERC20_TRANSFER_FROM, BOB_ACCOUNT, SOMEONE, 9, gas=50000)
    assert charges(policy, pull, {"ACME": 0})[-1] == Charge(
        "acme-per-day", "user:alice", 9, 86400, 500
    )
    # An approval moves nothing, a transfer of another token is not ACME's, a message is no
    # transaction.
    approve = call(ERC20_APPROVE, SOMEONE, 10**30)
    assert "acme-per-day" not in [c.limit for c in charges(policy, approve, {"ACME": 18})]
    elsewhere = call(ERC20_TRANSFER, SOMEONE, 10**30, to=VAULT_BYTES)
    assert "acme-per-day" not in [c.limit for c in charges(policy, elsewhere, {"ACME": 18})]
    assert charges(policy, message(), {"ACME": 18}) == ()
    assert charges(policy, typed({}), {"ACME": 18}) == ()


@pytest.mark.parametrize(
    ("limit", "facts", "amount"),
    [
        ("tx-rate", tx(), 1),
        ("gas-per-day", tx(gas=40000), 40000),
        ("value-per-day", tx(value=3 * ETHER), 3 * ETHER),
        ("acme-per-day", call(ERC20_TRANSFER, SOMEONE, 20 * ETHER, gas=0, value=0), 20 * ETHER),
    ],
)
def test_used_plus_amount_over_max_refuses_exactly_max_passes(
    limit: str, facts: RequestFacts, amount: int
) -> None:
    text = policy_text(limits=LIMITS)
    policy = parse_policy(text)
    maximum = next(c.max for c in charges(policy, facts, {"ACME": 18}) if c.limit == limit)
    at_max = decide(text, facts, used={(limit, SCOPES[limit]): maximum - amount})
    assert at_max.action == "allow"
    assert (limit, SCOPES[limit]) in {(c.limit, c.scope) for c in at_max.charges}
    over = decide(text, facts, used={(limit, SCOPES[limit]): maximum - amount + 1})
    assert (over.action, over.reason, over.rule, over.charges) == (
        "deny", "limit_exceeded", limit, (),
    )  # fmt: skip
    # Another user's, account's or organisation's counter is another counter.
    other_scope = {(limit, SCOPES[limit].split(":")[0] + ":someone-else"): maximum}
    assert decide(text, facts, used=other_scope).action == "allow"


def test_limit_details_read_in_the_limit_unit() -> None:
    text = policy_text(limits=LIMITS)
    value = decide(
        text, tx(value=2 * ETHER), used={("value-per-day", SCOPES["value-per-day"]): 9 * ETHER}
    )
    assert value.detail == (
        "limit value-per-day: 9 ether used + 2 ether would exceed 10 ether per organisation in 1d"
    )
    acme = decide(
        text,
        call(ERC20_TRANSFER, SOMEONE, 25 * 10**17),
        used={("acme-per-day", "user:alice"): 499 * ETHER},
    )
    assert acme.detail == (
        "limit acme-per-day: 499 ACME used + 2.5 ACME would exceed 500 ACME per user in 1d"
    )
    rate = decide(text, tx(), used={("tx-rate", "user:alice"): 3})
    assert rate.detail == "limit tx-rate: 3 of 3 transactions per user in 1m already used"


def test_a_zero_amount_is_not_charged_and_never_crosses() -> None:
    text = policy_text(limits=LIMITS)
    full = {("value-per-day", SCOPES["value-per-day"]): 10 * ETHER}
    decision = decide(text, tx(value=0), used=full)
    assert decision.action == "allow"
    assert "value-per-day" not in [c.limit for c in decision.charges]


def test_a_policy_without_limits_charges_nothing() -> None:
    assert decide(policy_text(), tx()).charges == ()


# --- calldata and token amounts that cannot be decided are denies --------------------------------

BROKEN_TRANSFER = ERC20_TRANSFER.selector + b"\x01\x02"  # the selector, then no argument words


def test_undecodable_calldata_a_rule_needs_is_a_deny() -> None:
    # Even for an allow rule: what it reads cannot be read, so nothing may be assumed.
    text = policy_text(
        rule("small", "allow", "{contract: ACME, function: transfer, args: {amount: {lt: 5}}}")
    )
    decision = decide(text, tx(to=ACME_BYTES, value=0, data=BROKEN_TRANSFER))
    assert (decision.action, decision.reason, decision.rule) == ("deny", "denied", "small")
    assert "does not decode" in decision.detail
    # A rule that needs no calldata does not care; nor does one whose function is not called.
    no_calldata = policy_text(rule("acme", "allow", "{contract: ACME}"))
    assert decide(no_calldata, tx(to=ACME_BYTES, data=BROKEN_TRANSFER)).action == "allow"
    approvals = policy_text(rule("approve", "deny", "{contract: ACME, function: approve}"))
    assert decide(approvals, tx(to=ACME_BYTES, data=BROKEN_TRANSFER)).action == "allow"


def test_a_matching_deny_rule_comes_before_undecodable_calldata() -> None:
    rules = rule("small", "allow", "{contract: ACME, function: transfer, args: {amount: {lt: 5}}}")
    rules += rule("no-bob", "deny", "{users: [bob]}")
    decision = decide(policy_text(rules), tx(user="bob", to=ACME_BYTES, data=BROKEN_TRANSFER))
    assert decision.rule == "no-bob"


def test_undecodable_transfer_to_a_limited_token_is_a_deny() -> None:
    text = policy_text(limits=LIMITS)
    decision = decide(text, tx(to=ACME_BYTES, value=0, data=BROKEN_TRANSFER))
    assert (decision.action, decision.reason, decision.rule) == ("deny", "denied", "acme-per-day")


def test_token_amounts_need_their_decimals() -> None:
    text = policy_text(
        rule(
            "big", "hold", '{contract: ACME, function: transfer, args: {amount: {gt: "1.5 ACME"}}}'
        )
    )
    transfer = call(ERC20_TRANSFER, SOMEONE, 20)
    fraction = decide(text, transfer, decimals={"ACME": 0})  # 1.5 of a token without decimals
    assert (fraction.action, fraction.rule) == ("deny", "big")
    assert "not a whole number" in fraction.detail
    assert decide(text, transfer, decimals={}).rule == "big"  # not handed: fail closed
    assert decide(text, transfer, decimals={"ACME": 1}).action == "hold"  # 20 > 15
    assert decide(text, transfer, decimals={"ACME": 2}).action == "allow"  # 20 < 150
    limit = policy_text(limits=LIMITS)
    missing = decide(limit, call(ERC20_TRANSFER, SOMEONE, 1), decimals={})
    assert (missing.action, missing.rule) == ("deny", "acme-per-day")
    # A limit whose token this request does not move needs no decimals.
    assert decide(limit, tx(), decimals={}).action == "allow"


# --- messages and typed data -------------------------------------------------------------------


def test_messages_and_typed_data() -> None:
    rules = (
        rule("no-eth-sign", "deny", "{method: eth_sign}")
        + rule("logins", "allow", "{method: personal_sign}")
        + rule("permits", "hold", "{typed_data: {primary_type: Permit}}")
        + rule("orders", "allow", "{typed_data: {domain: {name: Acme Exchange, chainId: 1337, "
                                  "verifyingContract: vault}}}")
    )  # fmt: skip
    text = policy_text(rules, default="deny")
    assert decide(text, message("eth_sign")).rule == "no-eth-sign"
    assert decide(text, message()).action == "allow"
    assert decide(text, typed({}, "Permit")).action == "hold"
    order = {"name": "Acme Exchange", "chainId": 1337, "verifyingContract": VAULT}
    assert decide(text, typed(order)).rule == "orders"
    assert decide(text, typed({**order, "chainId": "1"})).action == "deny"
    assert decide(text, typed({**order, "verifyingContract": "not an address"})).action == "deny"
    assert decide(text, typed(None)).action == "deny"


# --- the 20-rule policy and section 6's sample ---------------------------------------------------


def test_twenty_rules_walk_an_ordinary_request_through() -> None:
    policy = parse_policy(TWENTY_RULES)
    ordinary = evaluate(policy, tx(), {}, {"ACME": 18})
    assert (ordinary.action, ordinary.rule) == ("allow", None)
    assert len(ordinary.charges) == 3
    small = call(ERC20_TRANSFER, SOMEONE, 10_000 * ETHER)
    assert evaluate(policy, small, {}, {"ACME": 18}).action == "allow"
    big = call(ERC20_TRANSFER, SOMEONE, 10_000 * ETHER + 1)
    assert evaluate(policy, big, {}, {"ACME": 18}).rule == "big-acme-transfers"
    blocked = call(ERC20_TRANSFER, bytes.fromhex(BLOCKED[1][2:]), 1)
    assert evaluate(policy, blocked, {}, {"ACME": 18}).rule == "no-acme-to-blocked"
    withdraw = call(WITHDRAW, 1, SOMEONE, to=VAULT_BYTES)
    assert evaluate(policy, withdraw, {}, {"ACME": 18}).rule == "vault-withdraws-to-treasury-only"
    home = call(WITHDRAW, 1, bytes.fromhex(TREASURY[2:]), to=VAULT_BYTES)
    assert evaluate(policy, home, {}, {"ACME": 18}).action == "allow"
    assert evaluate(policy, tx(role="viewer"), {}, {"ACME": 18}).rule == "viewers-sign-nothing"


def test_section_six_sample_decides_as_written() -> None:
    extra = address(0x33)
    policy = parse_policy(sample())
    decimals = {"ACME": 18}
    assert evaluate(policy, tx(), {}, decimals).rule == "only-known-contracts"
    assert evaluate(policy, tx(to=bytes.fromhex(extra[2:])), {}, decimals).action == "allow"
    assert evaluate(policy, tx(to=None, deploy=True), {}, decimals).rule == "no-deployments"
    assert evaluate(policy, message("eth_sign"), {}, decimals).rule == "no-raw-eth-sign"
    assert evaluate(policy, message(), {}, decimals).action == "allow"
    big = call(ERC20_TRANSFER, SOMEONE, 10_001 * ETHER)
    assert evaluate(policy, big, {}, decimals).rule == "big-acme-transfers-need-approval"
    large = tx(to=VAULT_BYTES, value=6 * ETHER)
    assert evaluate(policy, large, {}, decimals).rule == "large-value"
    assert (
        evaluate(policy, dataclasses.replace(large, role="admin"), {}, decimals).action == "allow"
    )


# --- invariants --------------------------------------------------------------------------------

OTHER_RULES = [
    rule("r-allow-users", "allow", "{users: [alice]}"),
    rule("r-allow-all", "allow", "{}"),
    rule("r-hold-value", "hold", "{value: {ge: 0}}"),
    rule("r-hold-all", "hold", "{}"),
    rule(
        "r-hold-transfer", "hold", "{contract: ACME, function: transfer, args: {amount: {gt: 0}}}"
    ),
    rule("r-allow-transfer", "allow", "{contract: ACME, function: transfer}"),
    rule("r-deny-bob", "deny", "{users: [bob]}"),
    rule("r-allow-messages", "allow", "{method: [personal_sign, eth_sign]}"),
]
REQUESTS = [
    tx(),
    tx(value=10**30),
    call(ERC20_TRANSFER, SOMEONE, 10**25),
    tx(to=ACME_BYTES, data=BROKEN_TRANSFER),
    message(),
    message("eth_sign"),
    typed({"name": "x"}),
    tx(to=None, deploy=True),
]


@given(
    others=st.lists(
        st.sampled_from(range(len(OTHER_RULES))), unique=True, max_size=len(OTHER_RULES)
    ),
    position=st.integers(min_value=0, max_value=len(OTHER_RULES)),
    facts=st.sampled_from(REQUESTS),
    with_limits=st.booleans(),
    used=st.integers(min_value=0, max_value=10**31),
    default=st.sampled_from(["allow", "deny"]),
    mode=st.sampled_from(["enforce", "shadow"]),
    approved=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_a_matching_deny_rule_always_wins(
    others: list[int], position: int, facts: RequestFacts, with_limits: bool, used: int,
    default: str, mode: str, approved: bool,
) -> None:  # fmt: skip
    rules = [OTHER_RULES[i] for i in others]
    rules.insert(min(position, len(rules)), rule("the-deny", "deny", "{}"))
    text = policy_text(
        "".join(rules), default=default, limits=LIMITS if with_limits else "", mode=mode
    )
    counters = {(name, scope): used for name, scope in SCOPES.items()}
    decision = decide(text, facts, used=counters, approved=approved)
    assert (decision.action, decision.reason) == ("deny", "denied")
    assert decision.rule in ("the-deny", "r-deny-bob")
    assert decision.proceeds is (mode == "shadow")


@given(
    used=st.integers(min_value=0, max_value=2**70),
    value=st.integers(min_value=1, max_value=2**70),
    maximum=st.integers(min_value=0, max_value=2**70),
)
@settings(max_examples=200, deadline=None)
def test_a_limit_refuses_exactly_when_used_plus_amount_exceeds_max(
    used: int, value: int, maximum: int
) -> None:
    text = policy_text(limits=f"  - {{name: v, per: account, window: 5m, max_value: {maximum}}}\n")
    decision = decide(text, tx(value=value), used={("v", "account:0x" + "a1" * 20): used})
    assert (decision.action == "deny") is (used + value > maximum)
    if decision.action == "allow":
        assert decision.charges == (Charge("v", "account:0x" + "a1" * 20, value, 300, maximum),)


def test_a_method_rule_covers_the_methods_that_make_the_same_signature() -> None:
    """Every typed-data name signs EIP-712 v4: a rule on one cannot be stepped around by calling
    another. eth_sign and personal_sign stay apart (neither signs a raw hash here)."""
    policy = parse_policy(
        "version: 1\nrules:\n"
        "  - {name: no-eth-sign, action: deny, match: {method: [eth_sign]}}\n"
        "  - {name: permits, action: hold, match: {method: eth_signTypedData_v4}}\n"
    )
    account = bytes(20)
    for method, action in (("personal_sign", "allow"), ("eth_sign", "deny"),
                           ("eth_signTypedData", "hold"), ("eth_signTypedData_v3", "hold"),
                           ("eth_signTypedData_v4", "hold")):  # fmt: skip
        facts = RequestFacts(method=method, organisation="acme", user="alice", role="signer",
                             account=account)  # fmt: skip
        assert evaluate(policy, facts, {}, {}).action == action, method
