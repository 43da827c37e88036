"""policy/abi.py: signatures as users write them, calldata both ways (known answers and
hypothesis round-trips), revert data as text, and revert data found in nodes' JSON-RPC errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.abi import (
    ALLOWANCE,
    BALANCE_OF,
    DECIMALS,
    ERC20_APPROVE,
    ERC20_FUNCTIONS,
    ERC20_TRANSFER,
    ERC20_TRANSFER_FROM,
    ERROR_STRING,
    PANIC,
    SYMBOL,
    AbiSignature,
    CalldataError,
    DecodedCall,
    decode_call,
    decode_revert,
    encode_call,
    parse_signature,
    revert_data,
)

DEAD = bytes.fromhex("000000000000000000000000000000000000dEaD")
WORD = 64  # hex digits in a 32-byte ABI word
REFUSED = parse_signature("Refused(address who, uint256 amount)")
# What solc 0.8.28 returned through anvil for `require(false, "insufficient balance")`.
INSUFFICIENT_BALANCE = bytes.fromhex(
    "08c379a0"
    "0000000000000000000000000000000000000000000000000000000000000020"
    "0000000000000000000000000000000000000000000000000000000000000014"
    "696e73756666696369656e742062616c616e6365000000000000000000000000"
)


# --- signatures ------------------------------------------------------------------------------


def test_known_selectors() -> None:
    """The four-byte selectors every wallet and explorer uses for these texts."""
    known = {
        ERC20_TRANSFER: ("transfer(address,uint256)", "a9059cbb"),
        ERC20_TRANSFER_FROM: ("transferFrom(address,address,uint256)", "23b872dd"),
        ERC20_APPROVE: ("approve(address,uint256)", "095ea7b3"),
        BALANCE_OF: ("balanceOf(address)", "70a08231"),
        ALLOWANCE: ("allowance(address,address)", "dd62ed3e"),
        DECIMALS: ("decimals()", "313ce567"),
        SYMBOL: ("symbol()", "95d89b41"),
        ERROR_STRING: ("Error(string)", "08c379a0"),
        PANIC: ("Panic(uint256)", "4e487b71"),
        REFUSED: ("Refused(address,uint256)", "c246547f"),  # as anvil reported it
    }
    for signature, (text, selector) in known.items():
        assert signature.text == text
        assert signature.selector.hex() == selector, text
    assert ERC20_FUNCTIONS == (ERC20_TRANSFER, ERC20_TRANSFER_FROM, ERC20_APPROVE)
    assert ERC20_TRANSFER_FROM.names == ("from", "to", "amount")
    assert ERC20_APPROVE.names == ("spender", "amount")


def test_signature_text_is_canonical_with_names_kept() -> None:
    withdraw = parse_signature("  withdraw ( uint amount , address[] memory to )  ")
    assert withdraw.name == "withdraw"
    assert withdraw.types == ("uint256", "address[]")
    assert withdraw.names == ("amount", "to")
    assert withdraw.text == "withdraw(uint256,address[])"
    assert withdraw.selector == parse_signature("withdraw(uint256,address[])").selector


def test_unnamed_parameters_are_numbered() -> None:
    deposit = parse_signature("deposit(uint, int8 , bytes32)")
    assert deposit.types == ("uint256", "int8", "bytes32")
    assert deposit.names == ("arg0", "arg1", "arg2")
    assert parse_signature("pause()").types == ()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("transfer", "is not a signature"),
        ("transfer(address,uint256", "is not a signature"),
        ("1transfer(address)", "is not a function or error name"),
        ("(address)", "is not a function or error name"),
        ("f(uint7)", "'uint7' is not an ABI type"),
        ("f(adress to)", "'adress' is not an ABI type"),
        ("f(bytes33)", "'bytes33' is not an ABI type"),
        ("f(uint256[)", "'uint256[' is not an ABI type"),
        ("f((uint256,bool))", "tuple parameters are not supported"),
        ("f(tuple)", "tuple parameter"),
        ("f(uint256 a, uint256 a)", "parameter name 'a' is used twice"),
        ("f(uint256 a b)", "parameter 1 should be 'type' or 'type name'"),
        ("f(uint256,)", "parameter 2 should be 'type' or 'type name'"),
        ("f(uint256 9a)", "'9a' is not a parameter name"),
    ],
)
def test_bad_signatures_name_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_signature(text)
    message = str(caught.value)
    assert complaint in message
    assert "\n" not in message


# --- calldata --------------------------------------------------------------------------------


def test_transfer_calldata_known_answer() -> None:
    """transfer(0x…dEaD, 1 ether), as any wallet encodes it."""
    data = bytes.fromhex(
        "a9059cbb"
        "000000000000000000000000000000000000000000000000000000000000dead"
        "0000000000000000000000000000000000000000000000000de0b6b3a7640000"
    )
    assert encode_call(ERC20_TRANSFER, [DEAD, 10**18]) == data
    assert (
        encode_call(ERC20_TRANSFER, ["0x000000000000000000000000000000000000dEaD", 10**18]) == data
    )
    call = decode_call(data, ERC20_FUNCTIONS)
    assert call == DecodedCall(ERC20_TRANSFER, {"to": DEAD, "amount": 10**18})
    assert call.arg("to") == call.arg(0) == DEAD
    assert call.arg("amount") == call.arg(1) == 10**18
    with pytest.raises(KeyError):
        call.arg("value")


def test_transfer_from_is_told_apart_from_transfer() -> None:
    data = encode_call(ERC20_TRANSFER_FROM, [b"\x01" * 20, DEAD, 7])
    call = decode_call(data, ERC20_FUNCTIONS)
    assert call is not None and call.function == ERC20_TRANSFER_FROM
    assert call.args == {"from": b"\x01" * 20, "to": DEAD, "amount": 7}


def test_other_calls_are_none() -> None:
    assert decode_call(b"", ERC20_FUNCTIONS) is None
    assert decode_call(bytes.fromhex("a9059c"), ERC20_FUNCTIONS) is None  # shorter than a selector
    assert decode_call(encode_call(BALANCE_OF, [DEAD]), ERC20_FUNCTIONS) is None
    assert decode_call(encode_call(ERC20_TRANSFER, [DEAD, 1]), ()) is None


def test_known_selector_with_bad_arguments_is_a_calldata_error() -> None:
    data = encode_call(ERC20_TRANSFER, [DEAD, 1])
    with pytest.raises(CalldataError, match=r"transfer\(address,uint256\)"):
        decode_call(data[:-1], ERC20_FUNCTIONS)  # one byte short
    with pytest.raises(CalldataError):
        decode_call(ERC20_TRANSFER.selector, ERC20_FUNCTIONS)  # no arguments at all
    dirty_address = bytearray(data)
    dirty_address[4] = 0xFF  # an address word must be zero in its 12 high bytes
    with pytest.raises(CalldataError):
        decode_call(bytes(dirty_address), ERC20_FUNCTIONS)


def test_zero_argument_call_decodes() -> None:
    assert decode_call(DECIMALS.selector, [DECIMALS]) == DecodedCall(DECIMALS, {})


def test_encode_refuses_wrong_arguments() -> None:
    with pytest.raises(ValueError, match="takes 2 arguments, not 1"):
        encode_call(ERC20_TRANSFER, [DEAD])
    with pytest.raises(ValueError, match="transfer"):
        encode_call(ERC20_TRANSFER, [DEAD, -1])
    with pytest.raises(ValueError, match="transfer"):
        encode_call(ERC20_TRANSFER, [b"\x01" * 19, 1])


# A parameter type, a strategy for its values as encode_call takes them, and what decode_call
# gives back for such a value.
_SCALARS: dict[str, tuple[st.SearchStrategy[Any], Any]] = {
    "address": (st.binary(min_size=20, max_size=20), lambda v: v),
    "uint256": (st.integers(0, 2**256 - 1), lambda v: v),
    "uint8": (st.integers(0, 255), lambda v: v),
    "int256": (st.integers(-(2**255), 2**255 - 1), lambda v: v),
    "bool": (st.booleans(), lambda v: v),
    "bytes32": (st.binary(min_size=32, max_size=32), lambda v: v),
    "bytes": (st.binary(max_size=100), lambda v: v),
    "string": (st.text(max_size=40), lambda v: v),
}


@st.composite
def _parameter(draw: st.DrawFn) -> tuple[str, Any, Any]:
    base = draw(st.sampled_from(sorted(_SCALARS)))
    values, back = _SCALARS[base]
    shape = draw(st.sampled_from(["scalar", "dynamic", "fixed"]))
    if shape == "scalar":
        value = draw(values)
        return base, value, back(value)
    size = draw(st.integers(0, 4)) if shape == "dynamic" else draw(st.integers(1, 3))
    items = draw(st.lists(values, min_size=size, max_size=size))
    suffix = "[]" if shape == "dynamic" else f"[{size}]"
    return base + suffix, items, tuple(back(v) for v in items)


@settings(max_examples=300, deadline=None)
@given(st.lists(_parameter(), max_size=5), st.booleans())
def test_encode_then_decode_gives_the_arguments_back(
    params: list[tuple[str, Any, Any]], named: bool
) -> None:
    names = [f"p{i}" for i in range(len(params))]
    inner = ",".join(f"{t} {n}" if named else t for (t, _, _), n in zip(params, names, strict=True))
    function = parse_signature(f"fn({inner})")
    data = encode_call(function, [value for _, value, _ in params])
    call = decode_call(data, [ERC20_TRANSFER, function])
    assert call is not None and call.function == function
    for index, (_, _, expected) in enumerate(params):
        assert call.arg(index) == expected
        assert call.args[function.names[index]] == expected
    assert len(call.args) == len(params)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_a_known_selector_decode_or_raise_calldata_error(tail: bytes) -> None:
    """Calldata comes from callers: whatever they send, decoding answers quickly and only with
    a call or CalldataError (a dynamic array claiming 2**255 items included)."""
    many = parse_signature("many(uint256[] values,string note,address[2] pair)")
    started = time.perf_counter()
    try:
        call = decode_call(many.selector + tail, [many])
    except CalldataError:
        call = None
    assert time.perf_counter() - started < 0.5
    assert call is None or call.function == many


def test_huge_array_length_is_a_calldata_error() -> None:
    many = parse_signature("many(uint256[] values)")
    data = many.selector + (32).to_bytes(32, "big") + (2**255).to_bytes(32, "big")
    with pytest.raises(CalldataError):
        decode_call(data, [many])


# --- revert data -----------------------------------------------------------------------------


def test_reason_string() -> None:
    assert decode_revert(INSUFFICIENT_BALANCE) == 'reverted: "insufficient balance"'
    assert decode_revert(encode_call(ERROR_STRING, ["not enough"])) == 'reverted: "not enough"'


def test_reason_string_stays_one_bounded_line() -> None:
    text = decode_revert(encode_call(ERROR_STRING, ['two\nlines "quoted"' + "x" * 1000]))
    assert text.startswith('reverted: "two\\nlines \\"quoted\\"xxx')
    assert "\n" not in text and len(text) < 250


def test_malformed_error_string() -> None:
    assert decode_revert(INSUFFICIENT_BALANCE[:40]) == "reverted with a malformed Error(string)"


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (0x00, "generic compiler panic"),
        (0x01, "assertion failed"),
        (0x11, "arithmetic overflow or underflow"),
        (0x12, "division or modulo by zero"),
        (0x21, "conversion to an enum out of range"),
        (0x22, "incorrectly encoded storage byte array"),
        (0x31, "pop() on an empty array"),
        (0x32, "array index out of bounds"),
        (0x41, "out of memory (too much memory allocated or too large an array created)"),
        (0x51, "call to a zero-initialised internal function variable"),
        (0x99, "unknown panic code"),
    ],
)
def test_every_panic_code(code: int, meaning: str) -> None:
    data = bytes.fromhex("4e487b71") + code.to_bytes(32, "big")
    assert decode_revert(data) == f"panic 0x{code:02x}: {meaning}"


def test_custom_error_with_its_arguments() -> None:
    who = bytes.fromhex("f39fd6e51aad88f6f4ce6ab8827279cfffb92266")
    data = bytes.fromhex("c246547f") + who.rjust(32, b"\0") + (5).to_bytes(32, "big")
    expected = "Refused(who=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266, amount=5)"
    assert decode_revert(data, [ERC20_TRANSFER, REFUSED]) == expected
    # Not among the errors the caller knows: its selector is all that can be said.
    assert decode_revert(data) == "reverted with unknown error 0xc246547f"
    assert decode_revert(data[:40], [REFUSED]) == (
        "reverted with Refused(address,uint256) whose arguments do not decode"
    )


def test_custom_error_shows_each_kind_of_value() -> None:
    odd = parse_signature("Odd(bool ok,bytes blob,string note,uint8[] small,int256 delta)")
    data = encode_call(odd, [True, b"\x01\xff", "a b", [1, 2], -3])
    assert (
        decode_revert(data, [odd])
        == 'Odd(ok=true, blob=0x01ff, note="a b", small=[1, 2], delta=-3)'
    )


def test_empty_and_unknown_revert_data() -> None:
    assert decode_revert(b"") == "reverted without a reason"
    assert decode_revert(bytes.fromhex("12345678")) == "reverted with unknown error 0x12345678"
    assert decode_revert(bytes.fromhex("1234")) == "reverted with unknown error 0x1234"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", ERROR_STRING.selector, PANIC.selector]))
def test_any_revert_data_gives_one_line(tail: bytes, selector: bytes) -> None:
    text = decode_revert(selector + tail, [REFUSED])
    assert text and "\n" not in text and len(text) <= 250


# --- revert data in nodes' JSON-RPC errors -----------------------------------------------------


def test_revert_data_as_anvil_and_geth_send_it() -> None:
    hex_data = "0x" + INSUFFICIENT_BALANCE.hex()
    error = {"code": 3, "message": "execution reverted: insufficient balance", "data": hex_data}
    assert revert_data(error) == INSUFFICIENT_BALANCE
    assert revert_data({"code": 3, "message": "execution reverted", "data": "0x"}) == b""


def test_revert_without_data_as_geth_sends_it() -> None:
    assert revert_data({"code": -32000, "message": "execution reverted"}) == b""


def test_nested_revert_data() -> None:
    nested: list[dict[str, Any]] = [
        {"code": -32603, "message": "x", "data": {"message": "revert", "data": "0x4e487b71"}},
        {"code": -32015, "message": "VM execution error.", "data": "Reverted 0x4e487b71"},
        {"code": -32000, "message": "x", "data": {"result": "0x4e487b71"}},
    ]
    for error in nested:
        assert revert_data(error) == bytes.fromhex("4e487b71"), error


def test_errors_that_are_no_revert() -> None:
    for error in [
        {"code": -32000, "message": "insufficient funds for gas * price + value"},
        {"code": -32602, "message": "invalid argument", "data": "not hex"},
        {"code": 3, "message": "execution reverted: x", "data": "0x123"},  # odd length
        {"code": 3, "message": "x", "data": {"data": {"data": {"data": {"data": "0x00"}}}}},  # deep
        {"code": 3, "message": "x", "data": 5},
    ]:
        assert revert_data(error) is None, error


def test_signature_values_are_immutable() -> None:
    with pytest.raises(AttributeError):
        ERC20_TRANSFER.name = "other"  # type: ignore[misc]
    assert isinstance(ERC20_TRANSFER, AbiSignature)


def test_strings_that_are_not_utf8_are_bad_calldata_and_malformed_reasons() -> None:
    """eth_abi raises UnicodeDecodeError (not DecodingError) for a `string` that is not UTF-8:
    a caller's calldata like that is a CalldataError, a revert reason like that is named."""
    word = (32).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\xff" + bytes(31)
    set_name = parse_signature("setName(string name)")
    with pytest.raises(CalldataError):
        decode_call(set_name.selector + word, [set_name])
    assert decode_revert(ERROR_STRING.selector + word) == "reverted with a malformed Error(string)"


def test_decimals_beyond_what_a_unit_can_use_count_as_no_answer() -> None:
    from policy.abi import MAX_DECIMALS, decimals_of

    assert decimals_of("0x" + (18).to_bytes(32, "big").hex()) == 18
    assert decimals_of("0x" + MAX_DECIMALS.to_bytes(32, "big").hex()) == MAX_DECIMALS
    assert decimals_of("0x" + (2**200).to_bytes(32, "big").hex()) is None  # would freeze
    assert (
        decimals_of("0x") is None
        and decimals_of(None) is None
        and decimals_of("0x" + "zz" * 32) is None
    )
