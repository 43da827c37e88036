"""Solidity ABI for the policy and the pre-flight checks: function and error signatures as users
write them, calldata decoding into named arguments, and a revert's return data as one line of
text a user reads. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import ABITypeError, DecodingError, EncodingError, ParseError
from eth_abi.grammar import normalize
from eth_abi.registry import registry
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

__all__ = [
    "ALLOWANCE",
    "BALANCE_OF",
    "DECIMALS",
    "ERC20_APPROVE",
    "ERC20_FUNCTIONS",
    "ERC20_TRANSFER",
    "ERC20_TRANSFER_FROM",
    "ERROR_STRING",
    "PANIC",
    "PANIC_CODES",
    "SYMBOL",
    "AbiSignature",
    "CalldataError",
    "DecodedCall",
    "decode_call",
    "decode_revert",
    "encode_call",
    "parse_signature",
    "revert_data",
]

_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_SIGNATURE = re.compile(r"\s*([^\s(]*)\s*\((.*)\)\s*")
# Solidity's data locations may be copied along with a declaration; they do not change the ABI.
_LOCATIONS = frozenset({"memory", "calldata", "storage"})
# A reason string is a contract's free text: bounded, so that it fits on a user's line.
_MAX_TEXT = 200


@dataclass(frozen=True)
class AbiSignature:
    """A function or a custom error: its name, canonical parameter types and their names."""

    name: str
    types: tuple[str, ...]
    names: tuple[str, ...]
    selector: bytes

    @property
    def text(self) -> str:
        return f"{self.name}({','.join(self.types)})"


def _signature(name: str, types: Sequence[str], names: Sequence[str]) -> AbiSignature:
    text = f"{name}({','.join(types)})"
    return AbiSignature(name, tuple(types), tuple(names), keccak(text=text)[:4])


def _canonical_type(text: str) -> str:
    if "(" in text or ")" in text or text.startswith("tuple"):
        raise ValueError(f"tuple parameter {text!r} is not supported")
    canonical: str = text
    try:
        canonical = normalize(text)  # type: ignore[no-untyped-call] # uint -> uint256, byte -> bytes1
        valid = registry.has_encoder(canonical)
    except (ParseError, ABITypeError):
        valid = False
    if not valid:
        raise ValueError(f"{text!r} is not an ABI type")
    return canonical


def parse_signature(text: str) -> AbiSignature:
    """`"withdraw(uint256 amount, address to)"` or `"deposit(uint)"`: canonical types, names
    (`arg0`, `arg1`, ... where none is given) and the selector. ValueError names what is wrong."""
    match = _SIGNATURE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a signature such as 'transfer(address to,uint256 amount)'"
        )
    name, inner = match.groups()
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} in {text!r} is not a function or error name")
    if "(" in inner or ")" in inner:
        raise ValueError(f"{text!r}: tuple parameters are not supported")
    types: list[str] = []
    names: list[str] = []
    params = inner.split(",") if inner.strip() else []
    for index, param in enumerate(params):
        words = [w for w in param.split() if w not in _LOCATIONS]
        if not words or len(words) > 2:
            raise ValueError(f"{text!r}: parameter {index + 1} should be 'type' or 'type name'")
        try:
            types.append(_canonical_type(words[0]))
        except ValueError as e:
            raise ValueError(f"{text!r}: {e}") from None
        param_name = words[1] if len(words) == 2 else f"arg{index}"
        if not _IDENTIFIER.fullmatch(param_name):
            raise ValueError(f"{text!r}: {param_name!r} is not a parameter name")
        if param_name in names:
            raise ValueError(f"{text!r}: parameter name {param_name!r} is used twice")
        names.append(param_name)
    return _signature(name, types, names)


ERC20_TRANSFER = parse_signature("transfer(address to,uint256 amount)")
ERC20_TRANSFER_FROM = parse_signature("transferFrom(address from,address to,uint256 amount)")
ERC20_APPROVE = parse_signature("approve(address spender,uint256 amount)")
ERC20_FUNCTIONS = (ERC20_TRANSFER, ERC20_TRANSFER_FROM, ERC20_APPROVE)

BALANCE_OF = parse_signature("balanceOf(address owner)")
ALLOWANCE = parse_signature("allowance(address owner,address spender)")
DECIMALS = parse_signature("decimals()")
SYMBOL = parse_signature("symbol()")

ERROR_STRING = parse_signature("Error(string reason)")
PANIC = parse_signature("Panic(uint256 code)")

# Every panic code solc defines (Solidity docs, "Panic via assert and Error via require").
PANIC_CODES: Mapping[int, str] = {
    0x00: "generic compiler panic",
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "conversion to an enum out of range",
    0x22: "incorrectly encoded storage byte array",
    0x31: "pop() on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory (too much memory allocated or too large an array created)",
    0x51: "call to a zero-initialised internal function variable",
}


@dataclass(frozen=True)
class DecodedCall:
    """A call's function and its arguments by parameter name: addresses as 20-byte `bytes`,
    integers as int, arrays as tuples."""

    function: AbiSignature
    args: Mapping[str, Any]

    def arg(self, key: str | int) -> Any:
        """An argument by name, or by position from 0."""
        if isinstance(key, int):
            return self.args[self.function.names[key]]
        return self.args[key]


class CalldataError(ValueError):
    """The selector is known but the arguments do not decode."""


def _item_type(array_type: str) -> str:
    """`uint256[2][]` -> `uint256[2]`: the type of an array's elements."""
    return array_type[: array_type.rindex("[")]


def _from_abi(type_text: str, value: Any) -> Any:
    """eth_abi's decoded value in our shape: addresses as bytes, arrays as tuples."""
    if type_text.endswith("]"):
        item = _item_type(type_text)
        return tuple(_from_abi(item, v) for v in value)
    if type_text == "address":
        return bytes.fromhex(value[2:])
    return value


def _decode(signature: AbiSignature, body: bytes) -> dict[str, Any]:
    values = decode(signature.types, body)
    return {
        n: _from_abi(t, v) for n, t, v in zip(signature.names, signature.types, values, strict=True)
    }


def decode_call(data: bytes, functions: Iterable[AbiSignature]) -> DecodedCall | None:
    """The call among `functions` that `data` invokes; None when `data` is shorter than a
    selector or names none of them. CalldataError when its arguments do not decode."""
    if len(data) < 4:
        return None
    selector = data[:4]
    for function in functions:
        if function.selector == selector:
            try:
                return DecodedCall(function, _decode(function, data[4:]))
            except (DecodingError, UnicodeDecodeError) as e:
                raise CalldataError(f"{function.text}: arguments do not decode ({e})") from None
    return None


# A token's decimals() as a unit can use them: uint8, and at most 77 places (10**77 still fits
# a uint256). A token answering more is treated as one that does not answer: scaling by
# 10**(2**200) would freeze the process.
MAX_DECIMALS = 77


def decimals_of(answer: Any) -> int | None:
    """decimals() from an eth_call's result (0x and 64 hex digits), or None."""
    if not isinstance(answer, str) or len(answer) != 66:
        return None
    try:
        value = int(answer, 16)
    except ValueError:
        return None
    return value if value <= MAX_DECIMALS else None


def encode_call(function: AbiSignature, args: Sequence[Any]) -> bytes:
    """Calldata for `function` with `args` in order (addresses as 20 bytes or hex text)."""
    if len(args) != len(function.types):
        raise ValueError(f"{function.text} takes {len(function.types)} arguments, not {len(args)}")
    try:
        return function.selector + encode(function.types, list(args))
    except EncodingError as e:
        raise ValueError(f"{function.text}: {e}") from None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _show(type_text: str, value: Any) -> str:
    """One argument as a user reads it: checksummed addresses, decimal integers, quoted text."""
    if isinstance(value, tuple):
        item = _item_type(type_text)
        return "[" + ", ".join(_show(item, v) for v in value) + "]"
    if type_text == "address":
        return str(to_checksum_address(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return _clip("0x" + value.hex())
    if isinstance(value, str):
        return json.dumps(_clip(value), ensure_ascii=False)
    return str(value)


def decode_revert(data: bytes, errors: Iterable[AbiSignature] = ()) -> str:
    """A revert's return data as one line: the reason string, the panic and its meaning, or a
    custom error among `errors` with its arguments."""
    if not data:
        return "reverted without a reason"
    selector = data[:4]
    if selector == ERROR_STRING.selector:
        try:
            (reason,) = decode(ERROR_STRING.types, data[4:])
        except (DecodingError, UnicodeDecodeError):
            return "reverted with a malformed Error(string)"
        return f"reverted: {json.dumps(_clip(reason), ensure_ascii=False)}"
    if selector == PANIC.selector:
        try:
            (code,) = decode(PANIC.types, data[4:])
        except (DecodingError, UnicodeDecodeError):
            return "reverted with a malformed Panic(uint256)"
        return f"panic 0x{code:02x}: {PANIC_CODES.get(code, 'unknown panic code')}"
    for error in errors:
        if error.selector == selector:
            try:
                args = _decode(error, data[4:])
            except (DecodingError, UnicodeDecodeError):
                return f"reverted with {error.text} whose arguments do not decode"
            shown = (
                f"{n}={_show(t, args[n])}" for n, t in zip(error.names, error.types, strict=True)
            )
            return _clip(f"{error.name}({', '.join(shown)})")
    return f"reverted with unknown error 0x{selector.hex()}"


_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


def revert_data(error: Mapping[str, Any]) -> bytes | None:
    """The revert's return data in a node's JSON-RPC error object, or None when it is no revert.
    anvil, geth and GoQuorum answer `{"code": 3, "message": "execution reverted: ...", "data":
    "0x..."}`; others nest it (`data.data`, `data.result`) or write "Reverted 0x...". geth sends
    no `data` for a revert without return data, only the message "execution reverted"."""
    found = _find_hex(error.get("data"), depth=0)
    if found is None and str(error.get("message", "")).strip() == "execution reverted":
        return b""
    return found


def _find_hex(value: Any, depth: int) -> bytes | None:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("Reverted "):  # Nethermind
            text = text.removeprefix("Reverted ").strip()
        return bytes.fromhex(text[2:]) if _HEX.fullmatch(text) else None
    if isinstance(value, Mapping) and depth < 3:
        for key in ("data", "result", "return", "returnData"):
            found = _find_hex(value.get(key), depth + 1)
            if found is not None:
                return found
    return None
