"""The policy file (contract section 6) from YAML text to a `Policy`, validated in full: every
error names the line and the field, and unknown keys are errors, because a typo in a deny rule
must never silently allow."""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Literal, NoReturn, TypeVar

import yaml
from eth_utils.address import to_checksum_address
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policy.abi import ERC20_FUNCTIONS, AbiSignature, parse_signature
from policy.amounts import ETHER_UNITS, Amount, TokenAmount, parse_amount, parse_duration
from policy.model import (
    ROLES,
    SIGNING_METHODS,
    TRANSACTION_METHODS,
    TYPED_DATA_METHODS,
    AccountSet,
    Action,
    Approvals,
    ArgCondition,
    Condition,
    Contract,
    FunctionMatch,
    Limit,
    LimitKind,
    Match,
    Operand,
    Operator,
    Per,
    Policy,
    Rule,
    TypedDataMatch,
)

FORMAT_VERSION = 1
# GoQuorum's privacyFlag values: standard private, party protection, mandatory recipients,
# private state validation.
PRIVACY_FLAGS = (0, 1, 2, 3)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_OPERATORS: tuple[Operator, ...] = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in")
_ORDERING = frozenset({"lt", "le", "gt", "ge"})
_MAX_KEYS = {
    "max_transactions": "transactions",
    "max_gas": "gas",
    "max_value": "value",
    "max_amount": "token",
}
_T = TypeVar("_T")
_MATCH_KEYS = (
    "users",
    "roles",
    "accounts",
    "method",
    "to",
    "to_not_in",
    "contract",
    "function",
    "args",
    "value",
    "deploy",
    "private",
    "private_for_not_in",
    "privacy_flag",
    "privacy_flag_not_in",
    "typed_data",
)
_MODES: tuple[Literal["enforce", "shadow"], ...] = ("enforce", "shadow")
_DEFAULTS: tuple[Literal["allow", "deny"], ...] = ("allow", "deny")
_ACTIONS: tuple[Action, ...] = ("allow", "deny", "hold")
_PERS: tuple[Per, ...] = ("user", "account", "organisation")
# The "type" of a transaction's value: a uint256 whose amounts are in wei, never in a token.
_NATIVE = "native"


class PolicyError(ValueError):
    """The policy file is not valid: `line` (1-based, None when unknown) and `field` (such as
    "rules[2].match.value") say where; str() reads "line 12, rules[2].match.value: ..."."""

    def __init__(self, message: str, line: int | None = None, field: str = "") -> None:
        self.message = message
        self.line = line
        self.field = field
        where = ", ".join(
            part for part in (f"line {line}" if line is not None else "", field) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


def parse_policy(text: str) -> Policy:
    """A validated Policy from the file's text; every problem is a PolicyError."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except PolicyError:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "not valid YAML"
        raise PolicyError(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        code = error.character
        shown = f"#x{ord(code) if isinstance(code, str) else code:04x}"
        raise PolicyError(f"not valid YAML: {error.reason} (character {shown})", line) from None
    except yaml.YAMLError as error:
        raise PolicyError(f"not valid YAML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise PolicyError("not valid YAML: nested too deeply") from None
    if root is None:
        raise PolicyError("the policy is empty: it needs at least `version: 1`", 1)
    return _Parser().policy(root)


class _Loader(yaml.SafeLoader):
    """The safe loader's composer, refusing aliases: a few lines of `*a` references can expand
    into millions of nodes, and a policy has no need for them."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise PolicyError(
                "anchors and aliases (*name) are not supported: write each value out",
                event.start_mark.line + 1,
            )
        return super().compose_node(parent, index)


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _fail(node: Node, field: str, message: str) -> NoReturn:
    raise PolicyError(message, _line(node), field)


class _Parser:
    def __init__(self) -> None:
        self._constructor = SafeConstructor()
        self.contracts: dict[str, Contract] = {}
        self.parties: dict[str, str] = {}

    # -- structure ---------------------------------------------------------------------------

    def value(self, node: Node, field: str) -> Any:
        """A scalar's value as YAML types it (int, bool, str, float, None, dates)."""
        if not isinstance(node, ScalarNode):
            kind = "list" if isinstance(node, SequenceNode) else "mapping"
            _fail(node, field, f"expected a single value here, not a {kind}")
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError):  # an explicit !!tag, a date out of range
            _fail(node, field, f"{node.value!r} cannot be read as {node.tag.rpartition(':')[2]}")

    def text(self, node: Node, field: str) -> str:
        """A scalar as written: names, ids and addresses stay text even when YAML would read
        them as numbers (`0x…` is a hex integer to YAML 1.1)."""
        if self.value(node, field) is None:
            _fail(node, field, "expected a value, found nothing")
        return str(node.value)

    def mapping(
        self,
        node: Node,
        field: str,
        known: Collection[str] | None,
        required: Collection[str] = (),
    ) -> dict[str, tuple[Node, Node]]:
        """Key -> (key node, value node); keys outside `known` are errors (None: any key)."""
        if not isinstance(node, MappingNode):
            _fail(node, field, "expected a mapping of `key: value` here")
        found: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            key = self.text(key_node, field)
            here = f"{field}.{key}" if field else key
            if key in found:
                _fail(key_node, here, f'"{key}" is given twice')
            if known is not None and key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                _fail(key_node, here, f'unknown key "{key}"{hint}; known: {", ".join(known)}')
            found[key] = (key_node, value_node)
        for key in required:
            if key not in found:
                _fail(node, f"{field}.{key}" if field else key, f"{key} is required")
        return found

    def sequence(self, node: Node, field: str) -> Iterator[tuple[int, Node]]:
        if not isinstance(node, SequenceNode):
            _fail(node, field, "expected a list here")
        return enumerate(node.value)

    def texts(self, node: Node, field: str) -> list[tuple[str, Node]]:
        """One text or a list of them (at least one)."""
        if isinstance(node, SequenceNode):
            items = [(self.text(item, f"{field}[{i}]"), item) for i, item in enumerate(node.value)]
            if not items:
                _fail(node, field, "the list is empty: remove the key, or name at least one")
            return items
        return [(self.text(node, field), node)]

    def choice(self, node: Node, field: str, options: tuple[_T, ...]) -> _T:
        value = self.text(node, field)
        for option in options:
            if value == option:
                return option
        _fail(node, field, f'expected one of {", ".join(map(str, options))}, not "{value}"')

    def boolean(self, node: Node, field: str) -> bool:
        value = self.value(node, field)
        if not isinstance(value, bool):
            _fail(node, field, f"expected true or false, not {node.value!r}")
        return value

    def count(self, node: Node, field: str, minimum: int = 0) -> int:
        try:
            value = parse_amount(self.value(node, field), units=False)
        except ValueError as error:
            _fail(node, field, str(error))
        assert isinstance(value, int)  # noqa: S101 - units=False gives an int
        if value < minimum:
            _fail(node, field, f"expected at least {minimum}, not {value}")
        return value

    def amount(
        self, node: Node, field: str, tokens: Collection[str], signed: bool = False
    ) -> Amount:
        try:
            return parse_amount(self.value(node, field), tokens, signed=signed)
        except ValueError as error:
            _fail(node, field, str(error))

    def duration(self, node: Node, field: str) -> int:
        try:
            return parse_duration(self.value(node, field))
        except ValueError as error:
            _fail(node, field, str(error))

    def address(self, node: Node, field: str) -> bytes:
        return _address(self.text(node, field), node, field)

    def target(self, node: Node, field: str) -> bytes:
        """An address, or the name of a contract in `contracts`."""
        text = self.text(node, field)
        if text.lower().startswith("0x"):
            return _address(text, node, field)
        contract = self.contracts.get(text)
        if contract is None:
            known = ", ".join(self.contracts) or "none declared"
            _fail(node, field, f'"{text}" is not an address nor a contract in contracts ({known})')
        return contract.address

    # -- the file ----------------------------------------------------------------------------

    def policy(self, root: Node) -> Policy:
        known = (
            "version",
            "mode",
            "default",
            "contracts",
            "parties",
            "rules",
            "limits",
            "approvals",
        )
        top = self.mapping(root, "", known, required=("version",))
        version_node = top["version"][1]
        if self.value(version_node, "version") != FORMAT_VERSION:
            _fail(version_node, "version", f"the policy format version is {FORMAT_VERSION}")
        mode = self.choice(top["mode"][1], "mode", _MODES) if "mode" in top else "enforce"
        default = (
            self.choice(top["default"][1], "default", _DEFAULTS) if "default" in top else "allow"
        )
        if "contracts" in top:
            self.contracts_section(top["contracts"][1])
        if "parties" in top:
            self.parties_section(top["parties"][1])
        rules = self.rules(top["rules"][1]) if "rules" in top else ()
        limits = self.limits(top["limits"][1]) if "limits" in top else ()
        approvals = self.approvals(top["approvals"][1]) if "approvals" in top else Approvals()
        names: dict[str, str] = {rule.name: "a rule" for rule in rules}
        for i, limit in enumerate(limits):
            if limit.name in names:
                node = top["limits"][1].value[i]
                _fail(
                    node,
                    f"limits[{i}].name",
                    f'"{limit.name}" is already the name of {names[limit.name]}',
                )
            names[limit.name] = "a limit"
        return Policy(FORMAT_VERSION, mode, default, dict(self.contracts), rules, limits, approvals,
                      dict(self.parties))  # fmt: skip

    def parties_section(self, node: Node) -> None:
        """Names for Tessera public keys, for the rules on private transactions."""
        by_key: dict[str, str] = {}
        for name, (key_node, value_node) in self.mapping(node, "parties", None).items():
            field = f"parties.{name}"
            if not _NAME.fullmatch(name):
                _fail(key_node, field, "a party name is letters, digits, _ and -, starting "
                      "with a letter")  # fmt: skip
            key = self.text(value_node, field)
            if not is_tessera_key(key):
                _fail(value_node, field, "expected a Tessera public key (32 bytes in base64)")
            if key in by_key:
                _fail(value_node, field, f"the same key as {by_key[key]}")
            by_key[key] = name
            self.parties[name] = key

    def party_keys(self, node: Node, field: str) -> frozenset[str]:
        """Tessera public keys, each given as itself or by its name in `parties`."""
        keys: set[str] = set()
        for text, item in self.texts(node, field):
            if text in self.parties:
                keys.add(self.parties[text])
            elif is_tessera_key(text):
                keys.add(text)
            else:
                known = ", ".join(self.parties) or "none declared"
                _fail(item, field, f'"{text}" is not a Tessera public key nor a party in '
                      f"parties ({known})")  # fmt: skip
        return frozenset(keys)

    def privacy_flags(self, node: Node, field: str) -> frozenset[int]:
        flags: set[int] = set()
        items = list(self.sequence(node, field)) if isinstance(node, SequenceNode) else [(0, node)]
        if not items:
            _fail(node, field, "the list is empty: remove the key, or name at least one")
        for _, item in items:
            value = self.value(item, field)
            if value not in PRIVACY_FLAGS or isinstance(value, bool):
                _fail(item, field, "a GoQuorum privacy flag is 0 (standard), 1 (party "
                      "protection), 2 (mandatory recipients) or 3 (private state "
                      "validation)")  # fmt: skip
            flags.add(value)
        return frozenset(flags)

    def contracts_section(self, node: Node) -> None:
        by_address: dict[bytes, str] = {}
        for name, (key_node, value_node) in self.mapping(node, "contracts", None).items():
            field = f"contracts.{name}"
            if not _NAME.fullmatch(name):
                _fail(
                    key_node,
                    field,
                    "a contract name is letters, digits, _ and -, starting with a letter",
                )
            if name in ETHER_UNITS:
                _fail(key_node, field, f'"{name}" is a unit of ether: name the contract otherwise')
            entry = self.mapping(
                value_node, field, ("address", "standard", "functions", "errors"), ("address",)
            )
            address = self.address(entry["address"][1], f"{field}.address")
            if address in by_address:
                _fail(
                    entry["address"][1],
                    f"{field}.address",
                    f"the same address as {by_address[address]}",
                )
            by_address[address] = name
            standard = None
            functions: list[AbiSignature] = []
            if "standard" in entry:
                standard = self.choice(entry["standard"][1], f"{field}.standard", ("erc20",))
                functions.extend(ERC20_FUNCTIONS)
            if "functions" in entry:
                functions.extend(
                    self.signatures(entry["functions"][1], f"{field}.functions", functions)
                )
            errors = (
                self.signatures(entry["errors"][1], f"{field}.errors", [])
                if "errors" in entry
                else ()
            )
            self.contracts[name] = Contract(
                name, address, standard, tuple(functions), tuple(errors)
            )

    def signatures(
        self, node: Node, field: str, known: list[AbiSignature]
    ) -> tuple[AbiSignature, ...]:
        found: list[AbiSignature] = []
        for i, item in self.sequence(node, field):
            here = f"{field}[{i}]"
            try:
                signature = parse_signature(self.text(item, here))
            except ValueError as error:
                _fail(item, here, str(error))
            clash = next((s for s in [*known, *found] if s.selector == signature.selector), None)
            if clash is not None:
                _fail(item, here, f"{signature.text} is already known ({clash.text})")
            found.append(signature)
        return tuple(found)

    def rules(self, node: Node) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        names: set[str] = set()
        for i, item in self.sequence(node, "rules"):
            field = f"rules[{i}]"
            entry = self.mapping(
                item, field, ("name", "action", "match"), ("name", "action", "match")
            )
            name = self.text(entry["name"][1], f"{field}.name")
            if name in names:
                _fail(entry["name"][1], f"{field}.name", f'another rule is named "{name}"')
            names.add(name)
            action = self.choice(entry["action"][1], f"{field}.action", _ACTIONS)
            rules.append(Rule(name, action, self.match(entry["match"][1], f"{field}.match")))
        return tuple(rules)

    def limits(self, node: Node) -> tuple[Limit, ...]:
        limits: list[Limit] = []
        known = ("name", "per", "window", *_MAX_KEYS, "token")
        for i, item in self.sequence(node, "limits"):
            field = f"limits[{i}]"
            entry = self.mapping(item, field, known, ("name", "per", "window"))
            name = self.text(entry["name"][1], f"{field}.name")
            if any(limit.name == name for limit in limits):
                _fail(entry["name"][1], f"{field}.name", f'another limit is named "{name}"')
            per = self.choice(entry["per"][1], f"{field}.per", _PERS)
            window = self.duration(entry["window"][1], f"{field}.window")
            given = [key for key in _MAX_KEYS if key in entry]
            if len(given) != 1:
                what = "one of" if not given else "only one of"
                _fail(
                    item,
                    f"{field}.{given[1] if given else 'max_transactions'}",
                    f"a limit takes {what} {', '.join(_MAX_KEYS)}",
                )
            key = given[0]
            kind: LimitKind = _MAX_KEYS[key]  # type: ignore[assignment]
            max_node = entry[key][1]
            token: str | None = None
            maximum: Amount
            if kind == "token":
                if "token" not in entry:
                    _fail(item, f"{field}.token", "max_amount needs token: the contract it counts")
                token_node = entry["token"][1]
                token = self.text(token_node, f"{field}.token")
                if token not in self.contracts:
                    known_names = ", ".join(self.contracts) or "none declared"
                    _fail(
                        token_node,
                        f"{field}.token",
                        f'"{token}" is not in contracts ({known_names})',
                    )
                maximum = self.amount(max_node, f"{field}.{key}", (token,))
                if isinstance(maximum, TokenAmount) and maximum.contract != token:
                    _fail(max_node, f"{field}.{key}", f"counts {token}, not {maximum.contract}")
            else:
                if "token" in entry:
                    _fail(entry["token"][0], f"{field}.token", "token goes with max_amount only")
                if kind == "value":
                    maximum = self.amount(max_node, f"{field}.{key}", ())
                else:
                    maximum = self.count(max_node, f"{field}.{key}")
            limits.append(Limit(name, per, window, kind, maximum, token))
        return tuple(limits)

    def approvals(self, node: Node) -> Approvals:
        entry = self.mapping(node, "approvals", ("approvers", "expire"))
        approvers = (
            self.count(entry["approvers"][1], "approvals.approvers", 1)
            if "approvers" in entry
            else 1
        )
        expire = (
            self.duration(entry["expire"][1], "approvals.expire") if "expire" in entry else 3600
        )
        return Approvals(approvers, expire)

    # -- match -------------------------------------------------------------------------------

    def match(self, node: Node, field: str) -> Match:
        if isinstance(node, ScalarNode) and self.value(node, field) is None:
            _fail(node, field, "match is empty: write {} to match every request")
        entry = self.mapping(node, field, _MATCH_KEYS)
        keys: dict[str, Any] = {}

        def here(key: str) -> str:
            return f"{field}.{key}"

        if "users" in entry:
            keys["users"] = frozenset(t for t, _ in self.texts(entry["users"][1], here("users")))
        if "roles" in entry:
            roles = self.texts(entry["roles"][1], here("roles"))
            for role, role_node in roles:
                if role not in ROLES:
                    _fail(
                        role_node,
                        here("roles"),
                        f'"{role}" is not a role ({", ".join(sorted(ROLES))})',
                    )
            keys["roles"] = frozenset(role for role, _ in roles)
        if "accounts" in entry:
            addresses: set[bytes] = set()
            names: set[str] = set()
            for text, item in self.texts(entry["accounts"][1], here("accounts")):
                if text.lower().startswith("0x"):
                    addresses.add(_address(text, item, here("accounts")))
                else:
                    names.add(text)
            keys["accounts"] = AccountSet(frozenset(addresses), frozenset(names))
        if "method" in entry:
            methods = self.texts(entry["method"][1], here("method"))
            for method, method_node in methods:
                if method not in SIGNING_METHODS:
                    known = ", ".join(sorted(SIGNING_METHODS))
                    _fail(
                        method_node, here("method"), f'"{method}" is not a signing method ({known})'
                    )
            keys["methods"] = frozenset(method for method, _ in methods)
        for key in ("to", "to_not_in"):
            if key in entry:
                items = self.texts(entry[key][1], here(key))
                keys[key] = frozenset(self.target(item, here(key)) for _, item in items)
        contract: Contract | None = None
        if "contract" in entry:
            contract_node = entry["contract"][1]
            name = self.text(contract_node, here("contract"))
            contract = self.contracts.get(name)
            if contract is None:
                known_names = ", ".join(self.contracts) or "none declared"
                _fail(
                    contract_node, here("contract"), f'"{name}" is not in contracts ({known_names})'
                )
            keys["contract"] = name
            keys["contract_address"] = contract.address
        if "function" in entry:
            keys["function"] = self.function(entry, contract, keys.get("to"), field)
        if "args" in entry:
            if "function" not in entry:
                _fail(
                    entry["args"][0],
                    here("args"),
                    "args needs function: the call whose arguments it reads",
                )
            keys["args"] = self.args(entry["args"][1], keys["function"], here("args"))
        if "value" in entry:
            keys["value"] = tuple(
                condition
                for _, condition in self.conditions(entry["value"][1], here("value"), _NATIVE)
            )
        for key in ("deploy", "private"):
            if key in entry:
                keys[key] = self.boolean(entry[key][1], here(key))
        if "private_for_not_in" in entry:
            keys["private_for_not_in"] = self.party_keys(
                entry["private_for_not_in"][1], here("private_for_not_in")
            )
        for key in ("privacy_flag", "privacy_flag_not_in"):
            if key in entry:
                keys[key] = self.privacy_flags(entry[key][1], here(key))
        if "typed_data" in entry:
            keys["typed_data"] = self.typed_data(entry["typed_data"][1], here("typed_data"))
        built = Match(**keys)
        self.check_can_match(built, entry, field)
        return built

    def check_can_match(
        self, match: Match, entry: Mapping[str, tuple[Node, Node]], field: str
    ) -> None:
        """Refuse a match that no request can satisfy: such a deny rule would silently allow."""
        methods = match.methods
        transaction_key = next((k for k in entry if k in _TRANSACTION_KEYS), None)
        if (
            transaction_key is not None
            and methods is not None
            and not methods & TRANSACTION_METHODS
        ):
            _fail(
                entry[transaction_key][0],
                f"{field}.{transaction_key}",
                f"{transaction_key} applies to transactions, and method names none",
            )
        if match.typed_data is not None:
            if transaction_key is not None:
                _fail(
                    entry["typed_data"][0],
                    f"{field}.typed_data",
                    f"typed_data applies to typed data, {transaction_key} to transactions: "
                    "no request has both",
                )
            if methods is not None and not methods & TYPED_DATA_METHODS:
                message = "typed_data applies to eth_signTypedData*, and method names none"
                _fail(entry["typed_data"][0], f"{field}.typed_data", message)
        if match.deploy is True and (match.to is not None or match.contract is not None):
            key = "to" if match.to is not None else "contract"
            _fail(entry[key][0], f"{field}.{key}", "a deployment has no `to`: this never matches")

    def function(
        self,
        entry: Mapping[str, tuple[Node, Node]],
        contract: Contract | None,
        to: frozenset[bytes] | None,
        field: str,
    ) -> FunctionMatch:
        node = entry["function"][1]
        here = f"{field}.function"
        text = self.text(node, here)
        if contract is not None:
            contracts = [contract]
        elif to is not None:
            contracts = [c for c in self.contracts.values() if c.address in to]
        else:
            contracts = []
        if "(" in text:
            try:
                signature = parse_signature(text)
            except ValueError as error:
                _fail(node, here, str(error))
            by_address = {
                c.address: tuple(f for f in c.functions if f.selector == signature.selector)
                or (signature,)
                for c in contracts
            }
            return FunctionMatch(signature.text, by_address, (signature,))
        if not _NAME.fullmatch(text):
            _fail(node, here, f'"{text}" is neither a function name nor a signature')
        if not contracts or (contract is None and to is not None and len(contracts) != len(to)):
            _fail(
                node,
                here,
                "a function by name needs contract (or to naming contracts only); or write the "
                'full signature, such as "transfer(address,uint256)"',
            )
        by_address = {}
        for c in contracts:
            named = tuple(f for f in c.functions if f.name == text)
            if not named:
                known = ", ".join(sorted({f.name for f in c.functions})) or "none declared"
                _fail(node, here, f'contract {c.name} has no function "{text}" (it has: {known})')
            by_address[c.address] = named
        return FunctionMatch(text, by_address)

    def args(self, node: Node, function: FunctionMatch, field: str) -> tuple[ArgCondition, ...]:
        signatures = {s for group in function.by_address.values() for s in group}
        signatures.update(function.anywhere)
        found: list[ArgCondition] = []
        entry = self.mapping(node, field, None)
        for key_text, (key_node, value_node) in entry.items():
            key: str | int = int(key_text) if key_text.isdigit() else key_text
            here = f"{field}.{key_text}"
            abi_type = self.argument_type(signatures, key, key_node, here)
            for _op, condition in self.conditions(value_node, here, abi_type):
                found.append(ArgCondition(key, condition))
        return tuple(found)

    def argument_type(
        self, signatures: Collection[AbiSignature], key: str | int, node: Node, field: str
    ) -> str:
        types: set[str] = set()
        for signature in sorted(signatures, key=lambda s: s.text):
            if isinstance(key, int):
                if key >= len(signature.types):
                    _fail(
                        node,
                        field,
                        f"{signature.text} has {len(signature.types)} parameters (index from 0)",
                    )
                types.add(signature.types[key])
            elif key in signature.names:
                types.add(signature.types[signature.names.index(key)])
            else:
                known = ", ".join(signature.names)
                _fail(node, field, f'{signature.text} has no parameter "{key}" (it has: {known})')
        kinds = {_kind(t) for t in types}
        if len(kinds) > 1:
            _fail(
                node,
                field,
                f"the parameter's type differs between the functions ({', '.join(sorted(types))})",
            )
        abi_type = sorted(types)[0]
        if _kind(abi_type) == "unsupported":
            _fail(node, field, f"comparing {abi_type} arguments is not supported")
        return abi_type

    def conditions(self, node: Node, field: str, abi_type: str) -> list[tuple[str, Condition]]:
        """`{gt: "5 ether", le: ...}`, or a bare value meaning eq."""
        if not isinstance(node, MappingNode):
            return [("eq", Condition("eq", self.operand(node, field, abi_type)))]
        found: list[tuple[str, Condition]] = []
        for op_text, (_, value_node) in self.mapping(node, field, _OPERATORS).items():
            op = next(o for o in _OPERATORS if o == op_text)
            here = f"{field}.{op}"
            if op in _ORDERING and _kind(abi_type) != "number":
                _fail(
                    value_node,
                    here,
                    f"{op} compares numbers; this is {abi_type}: use eq, ne, in or not_in",
                )
            if op in ("in", "not_in"):
                items = [
                    self.operand(item, f"{here}[{i}]", abi_type)
                    for i, item in self.sequence(value_node, here)
                ]
                if not items:
                    _fail(value_node, here, "the list is empty")
                found.append((op, Condition(op, tuple(items))))
            else:
                found.append((op, Condition(op, self.operand(value_node, here, abi_type))))
        if not found:
            _fail(node, field, f"no condition: use one of {', '.join(_OPERATORS)}")
        return found

    def operand(self, node: Node, field: str, abi_type: str) -> Operand:
        kind = _kind(abi_type)
        if kind == "number":
            tokens: Collection[str] = () if abi_type == _NATIVE else self.contracts
            return self.amount(node, field, tokens, signed=abi_type.startswith("int"))
        if kind == "address":
            return self.target(node, field)
        if kind == "bool":
            return self.boolean(node, field)
        if kind == "string":
            return self.text(node, field)
        text = self.text(node, field)
        if not _HEX.fullmatch(text):
            _fail(node, field, f'expected hex bytes such as "0x1234" for {abi_type}')
        data = bytes.fromhex(text[2:])
        size = abi_type[len("bytes") :]
        if size and len(data) != int(size):
            _fail(node, field, f"{abi_type} is {size} bytes, this is {len(data)}")
        return data

    def typed_data(self, node: Node, field: str) -> TypedDataMatch:
        entry = self.mapping(node, field, ("domain", "primary_type"))
        if not entry:
            _fail(node, field, "give domain or primary_type")
        domain: dict[str, str | int | bytes] = {}
        if "domain" in entry:
            here = f"{field}.domain"
            fields = self.mapping(
                entry["domain"][1],
                here,
                ("name", "version", "chainId", "verifyingContract", "salt"),
            )
            for key, (_, value_node) in fields.items():
                at = f"{here}.{key}"
                if key == "chainId":
                    domain[key] = self.count(value_node, at)
                elif key == "verifyingContract":
                    domain[key] = self.target(value_node, at)
                elif key == "salt":
                    domain[key] = self.operand(value_node, at, "bytes32")  # type: ignore[assignment]
                else:
                    domain[key] = self.text(value_node, at)
        primary = (
            self.text(entry["primary_type"][1], f"{field}.primary_type")
            if "primary_type" in entry
            else None
        )
        return TypedDataMatch(domain, primary)


_TRANSACTION_KEYS = frozenset(
    {
        "to",
        "to_not_in",
        "contract",
        "function",
        "args",
        "value",
        "deploy",
        "private",
        "private_for_not_in",
        "privacy_flag",
        "privacy_flag_not_in",
    }
)


def _kind(abi_type: str) -> str:
    """How a parameter of this ABI type compares."""
    if abi_type == _NATIVE:
        return "number"
    if "[" in abi_type or abi_type.startswith("("):
        return "unsupported"
    if abi_type.startswith(("uint", "int")):
        return "number"
    if abi_type in ("address", "bool", "string"):
        return abi_type
    if abi_type.startswith("bytes"):
        return "bytes"
    return "unsupported"


def _address(text: str, node: Node, field: str) -> bytes:
    """A 20-byte address from 0x-hex; a mixed-case one must carry a valid EIP-55 checksum."""
    if not _ADDRESS.fullmatch(text):
        _fail(node, field, f'"{text}" is not an address (0x and 40 hex digits)')
    body = text[2:]
    if body != body.lower() and body != body.upper():
        if to_checksum_address(text) != text:
            _fail(
                node,
                field,
                f'"{text}" has a wrong EIP-55 checksum: check it, or write it in lower case',
            )
    return bytes.fromhex(body)


def is_tessera_key(text: str) -> bool:
    """A Tessera public key: 32 bytes (a Curve25519 key) in standard base64."""
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (ValueError, binascii.Error):
        return False
