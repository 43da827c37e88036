"""A held request's calldata decoded for the approver (proxy/admin/calls.py): ERC-20 transfer,
transferFrom and approve by name, anything else by its selector and raw data."""

from __future__ import annotations

import pytest

from policy import abi
from proxy.admin.calls import decode_call

pytestmark = pytest.mark.unit

TOKEN_HOLDER = bytes.fromhex("5a8f4b1d0c9e7a6b3c2d1e0f9a8b7c6d5e4f3a2b")
SPENDER = bytes.fromhex("00000000000000000000000000000000000000de")


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def test_erc20_functions_are_named_with_their_arguments() -> None:
    transfer = decode_call(_hex(abi.encode_call(abi.ERC20_TRANSFER, [TOKEN_HOLDER, 10**18])))
    assert transfer is not None
    assert transfer.function == "transfer(address,uint256)"
    assert transfer.selector == "0xa9059cbb"
    assert transfer.args is not None and set(transfer.args) == {"to", "amount"}
    assert transfer.args["amount"] == str(10**18)
    assert transfer.args["to"].lower() == _hex(TOKEN_HOLDER)
    assert transfer.args["to"] != transfer.args["to"].lower()  # EIP-55
    approve = decode_call(_hex(abi.encode_call(abi.ERC20_APPROVE, [SPENDER, 5])))
    assert approve is not None and approve.function == "approve(address,uint256)"
    assert approve.args == {"spender": "0x00000000000000000000000000000000000000DE",
                            "amount": "5"}  # fmt: skip
    moved = decode_call(_hex(abi.encode_call(abi.ERC20_TRANSFER_FROM,
                                             [TOKEN_HOLDER, SPENDER, 7])))  # fmt: skip
    assert moved is not None and moved.function == "transferFrom(address,address,uint256)"
    assert list(moved.args or {}) == ["from", "to", "amount"] and moved.problem is None


def test_other_data_falls_back_to_the_selector_and_raw_data() -> None:
    assert decode_call(None) is None and decode_call("0x") is None
    other = decode_call("0xdeadbeef0001", data_cut=True)
    assert other is not None
    assert (other.selector, other.function, other.args) == ("0xdeadbeef", None, None)
    assert other.data == "0xdeadbeef0001" and other.data_cut
    short = decode_call("0x0102")
    assert short is not None and short.selector is None and short.function is None
    broken = decode_call("0xa9059cbb0001")  # transfer's selector, arguments cut short
    assert broken is not None and broken.function == "transfer(address,uint256)"
    assert broken.args is None and broken.problem and "do not decode" in broken.problem
    assert decode_call("0xzz") is not None and decode_call("0xzz").problem  # type: ignore[union-attr]
