"""The policy as the engine sees it (contract section 6): frozen values that `parse_policy` builds
once, with contract names already resolved to addresses and function names to signatures, and
the facts of one signing request that `evaluate` decides over."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from policy.abi import AbiSignature
from policy.amounts import Amount, TokenAmount

Action = Literal["allow", "deny", "hold"]
Per = Literal["user", "account", "organisation"]
LimitKind = Literal["transactions", "gas", "value", "token"]
Operator = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in"]

TRANSACTION_METHODS = frozenset({"eth_sendTransaction", "eth_signTransaction"})
TYPED_DATA_METHODS = frozenset(
    {"eth_signTypedData", "eth_signTypedData_v3", "eth_signTypedData_v4"}
)
MESSAGE_METHODS = frozenset({"eth_sign", "personal_sign"})
SIGNING_METHODS = TRANSACTION_METHODS | TYPED_DATA_METHODS | MESSAGE_METHODS
ROLES = frozenset({"signer", "viewer", "admin"})

# The typed-data names the proxy answers all sign EIP-712 v4: a rule naming one names them all,
# or a caller would step around a rule on a Permit by calling another name. (eth_sign and
# personal_sign stay apart: both sign an EIP-191 message here, never a raw hash, and policies
# commonly refuse the one and allow the other for logins.)
_SAME_SIGNATURE = {
    "eth_signTypedData": "eth_signTypedData_v4",
    "eth_signTypedData_v3": "eth_signTypedData_v4",
}


def signature_kind(method: str) -> str:
    """The one name of the signature `method` makes."""
    return _SAME_SIGNATURE.get(method, method)


# What a condition compares with, already typed for the argument it applies to: amounts for
# numbers (a TokenAmount is scaled at evaluation), 20-byte addresses, bools, bytes, text.
Operand = Amount | bytes | bool | str


@dataclass(frozen=True)
class Contract:
    name: str
    address: bytes
    standard: str | None
    functions: tuple[AbiSignature, ...]
    # Custom errors of this contract, for decoding its reverts (an extension of section 6).
    errors: tuple[AbiSignature, ...] = ()


@dataclass(frozen=True)
class Condition:
    """`op` applied to the request's value and `operand` (a tuple for `in` / `not_in`)."""

    op: Operator
    operand: Operand | tuple[Operand, ...]


@dataclass(frozen=True)
class ArgCondition:
    """A condition on one decoded argument, by parameter name or by index from 0."""

    key: str | int
    condition: Condition


@dataclass(frozen=True)
class FunctionMatch:
    """`function:` resolved: the signatures it means at each named contract's address, and
    (for a full signature) at any other address."""

    text: str
    by_address: Mapping[bytes, tuple[AbiSignature, ...]]
    anywhere: tuple[AbiSignature, ...] = ()

    def candidates(self, to: bytes | None) -> tuple[AbiSignature, ...]:
        if to is None:
            return ()
        return self.by_address.get(to, self.anywhere)


@dataclass(frozen=True)
class AccountSet:
    addresses: frozenset[bytes]
    names: frozenset[str]


@dataclass(frozen=True)
class TypedDataMatch:
    """For eth_signTypedData*: domain fields that must be equal (name and version as text,
    chainId an int, verifyingContract an address, salt bytes), and the primary type."""

    domain: Mapping[str, str | int | bytes]
    primary_type: str | None = None


@dataclass(frozen=True)
class Match:
    """All conditions that are set must hold; None (or empty) means "any"."""

    users: frozenset[str] | None = None
    roles: frozenset[str] | None = None
    accounts: AccountSet | None = None
    methods: frozenset[str] | None = None
    to: frozenset[bytes] | None = None
    to_not_in: frozenset[bytes] | None = None
    contract: str | None = None
    contract_address: bytes | None = None
    function: FunctionMatch | None = None
    args: tuple[ArgCondition, ...] = ()
    value: tuple[Condition, ...] = ()
    deploy: bool | None = None
    private: bool | None = None
    private_for_not_in: frozenset[str] | None = None  # Tessera public keys
    privacy_flag: frozenset[int] | None = None
    privacy_flag_not_in: frozenset[int] | None = None
    typed_data: TypedDataMatch | None = None

    @property
    def transaction_only(self) -> bool:
        """A key that only a transaction has: such a rule never matches a message request."""
        return (
            self.to is not None
            or self.to_not_in is not None
            or self.contract is not None
            or self.function is not None
            or bool(self.args)
            or bool(self.value)
            or self.deploy is not None
            or self.private is not None
            or self.private_for_not_in is not None
            or self.privacy_flag is not None
            or self.privacy_flag_not_in is not None
        )


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    match: Match


@dataclass(frozen=True)
class Limit:
    name: str
    per: Per
    window_seconds: int
    kind: LimitKind
    max: Amount
    token: str | None = None  # the contract's name, for kind "token"


@dataclass(frozen=True)
class Approvals:
    approvers: int = 1
    expire_seconds: int = 3600


@dataclass(frozen=True)
class Policy:
    version: int
    mode: Literal["enforce", "shadow"]
    default: Literal["allow", "deny"]
    contracts: Mapping[str, Contract]
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    approvals: Approvals = field(default_factory=Approvals)
    parties: Mapping[str, str] = field(default_factory=dict)  # name -> Tessera public key
    _by_address: Mapping[bytes, Contract] = field(init=False, repr=False, compare=False)
    _decimals_needed: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: build the read-only views once (a policy is evaluated on every request).
        contracts = types.MappingProxyType(dict(self.contracts))
        object.__setattr__(self, "contracts", contracts)
        by_address = {contract.address: contract for contract in contracts.values()}
        object.__setattr__(self, "_by_address", types.MappingProxyType(by_address))
        object.__setattr__(self, "_decimals_needed", self._token_units())

    def contract_at(self, address: bytes) -> Contract | None:
        return self._by_address.get(address)

    def decimals_needed(self) -> tuple[str, ...]:
        """Contract names whose `decimals()` the proxy must read: amounts written in their unit."""
        return self._decimals_needed

    def _token_units(self) -> tuple[str, ...]:
        names: set[str] = set()
        for limit in self.limits:
            if isinstance(limit.max, TokenAmount):
                names.add(limit.max.contract)
        for rule in self.rules:
            conditions = list(rule.match.value) + [arg.condition for arg in rule.match.args]
            for condition in conditions:
                operands = (
                    condition.operand
                    if isinstance(condition.operand, tuple)
                    else (condition.operand,)
                )
                names.update(o.contract for o in operands if isinstance(o, TokenAmount))
        return tuple(sorted(names))


@dataclass(frozen=True)
class RequestFacts:
    """What the proxy knows of one signing request when policy decides."""

    method: str
    organisation: str
    user: str
    role: str
    account: bytes  # the signing address (20 bytes)
    account_name: str | None = None
    to: bytes | None = None
    value: int = 0
    data: bytes = b""
    gas: int = 0
    deploy: bool = False  # a transaction without `to`
    private: bool = False
    private_for: tuple[str, ...] = ()  # Tessera public keys (privateFor)
    privacy_flag: int = 0  # GoQuorum's privacyFlag: 0, 1, 2 or 3
    typed_domain: Mapping[str, Any] | None = None  # eth_signTypedData*: the domain
    typed_primary_type: str | None = None

    @property
    def is_transaction(self) -> bool:
        return self.method in TRANSACTION_METHODS
