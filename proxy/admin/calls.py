"""A held request's calldata as an approver reads it: the function and its arguments when the
selector is one the proxy knows (ERC-20 transfer, transferFrom, approve), else the selector and
the raw data. Pure: it reads what the audit log recorded."""

from __future__ import annotations

from typing import Any

from policy import abi
from proxy.admin.models import DecodedCall
from signer.base import checksum


def _shown(value: Any) -> str:
    if isinstance(value, bytes) and len(value) == 20:
        return checksum(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return str(value)


def decode_call(data: str | None, data_cut: bool = False) -> DecodedCall | None:
    """`data` (0x-hex, as audited) decoded; None when the request carried no data."""
    if not data or data in ("0x", "0X"):
        return None
    try:
        raw = bytes.fromhex(data[2:] if data[:2].lower() == "0x" else data)
    except ValueError:
        return DecodedCall(selector=None, function=None, args=None, data=data,
                           data_cut=data_cut, problem="the data is not hex")  # fmt: skip
    selector = "0x" + raw[:4].hex() if len(raw) >= 4 else None
    try:
        call = abi.decode_call(raw, abi.ERC20_FUNCTIONS)
    except abi.CalldataError as exc:
        known = next(f for f in abi.ERC20_FUNCTIONS if f.selector == raw[:4])
        return DecodedCall(selector=selector, function=known.text, args=None, data=data,
                           data_cut=data_cut, problem=str(exc))  # fmt: skip
    if call is None:
        return DecodedCall(selector=selector, function=None, args=None, data=data,
                           data_cut=data_cut, problem=None)  # fmt: skip
    return DecodedCall(selector=selector, function=call.function.text,
                       args={name: _shown(value) for name, value in call.args.items()},
                       data=data, data_cut=data_cut, problem=None)  # fmt: skip
