"""The committed test contracts on a real anvil: AssetToken behaves as the ERC-20 that users and
the balance checks rely on, and each way Reverter (and a token) fails comes back from a real
`eth_call` as revert data that policy.abi finds in the node's error and decodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policy.abi import (
    ALLOWANCE,
    BALANCE_OF,
    DECIMALS,
    ERC20_APPROVE,
    ERC20_TRANSFER,
    ERC20_TRANSFER_FROM,
    SYMBOL,
    decode_call,
    decode_revert,
    encode_call,
    parse_signature,
    revert_data,
)
from tests.support.anvil import run_anvil
from tests.support.contracts import (
    MINT,
    RpcError,
    artifact,
    call,
    deploy,
    dev_account,
    read,
    rpc,
    send,
    token,
)

REFUSED = parse_signature("Refused(address who,uint256 amount)")


@pytest.fixture(params=["quorum-like", "fee-market"])
def anvil(request: pytest.FixtureRequest) -> Iterator[str]:
    with run_anvil(quorum_like=request.param == "quorum-like") as url:
        yield url


def _revert(url: str, to: str, data: bytes, sender: str | None = None) -> RpcError:
    with pytest.raises(RpcError) as caught:
        call(url, to, data, sender)
    return caught.value


def test_artifacts_hold_the_interfaces_the_product_decodes() -> None:
    """The ABI solc wrote agrees with the signatures policy.abi builds by hand."""

    def texts(name: str, kind: str) -> set[str]:
        abi = artifact(name)["abi"]
        return {
            f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"
            for e in abi
            if e["type"] == kind
        }

    functions = texts("AssetToken", "function")
    for signature in (ERC20_TRANSFER, ERC20_TRANSFER_FROM, ERC20_APPROVE, BALANCE_OF, ALLOWANCE,
                      DECIMALS, SYMBOL, MINT):  # fmt: skip
        assert signature.text in functions
    assert REFUSED.text in texts("Reverter", "error")


def test_token_behaves_as_erc20(anvil: str) -> None:
    owner, alice, bob = (dev_account(anvil, i) for i in range(3))
    address = token(anvil, "Acme Asset", "ACME", 6, mint_to={alice: 1_000_000})
    assert read(anvil, address, SYMBOL, returns="string") == "ACME"
    assert read(anvil, address, DECIMALS, returns="uint8") == 6
    assert read(anvil, address, BALANCE_OF, [alice]) == 1_000_000
    assert read(anvil, address, BALANCE_OF, [owner]) == 0

    # Only the owner mints: anyone else is refused with the reason string, and nothing is minted.
    mint = encode_call(MINT, [bob, 5])
    refused = _revert(anvil, address, mint, sender=alice)
    assert decode_revert(revert_data(refused.error) or b"-") == 'reverted: "not the owner"'
    send(anvil, address, mint, sender=owner)
    assert read(anvil, address, BALANCE_OF, [bob]) == 5

    # transfer moves the amount and logs Transfer(from, to, amount).
    receipt = send(anvil, address, encode_call(ERC20_TRANSFER, [bob, 250_000]), sender=alice)
    assert read(anvil, address, BALANCE_OF, [alice]) == 750_000
    assert read(anvil, address, BALANCE_OF, [bob]) == 250_005
    (log,) = receipt["logs"]
    assert int(log["topics"][1], 16) == int(alice, 16) and int(log["topics"][2], 16) == int(bob, 16)
    assert int(log["data"], 16) == 250_000

    # approve, then transferFrom by the spender spends the allowance down.
    send(anvil, address, encode_call(ERC20_APPROVE, [owner, 100]), sender=alice)
    assert read(anvil, address, ALLOWANCE, [alice, owner]) == 100
    move = encode_call(ERC20_TRANSFER_FROM, [alice, bob, 60])
    send(anvil, address, move, sender=owner)
    assert read(anvil, address, ALLOWANCE, [alice, owner]) == 40
    assert read(anvil, address, BALANCE_OF, [bob]) == 250_065
    over_allowance = _revert(anvil, address, move, sender=owner)
    assert decode_revert(revert_data(over_allowance.error) or b"-") == (
        'reverted: "insufficient allowance"'
    )
    assert read(anvil, address, parse_signature("totalSupply()")) == 1_000_005


def test_over_balance_transfer_reverts_with_its_reason(anvil: str) -> None:
    alice, bob = dev_account(anvil, 1), dev_account(anvil, 2)
    address = token(anvil, mint_to={alice: 10})
    data = encode_call(ERC20_TRANSFER, [bob, 11])
    error = _revert(anvil, address, data, sender=alice).error
    # anvil answers as geth does: code 3 and the ABI-encoded Error(string) in `data` as hex.
    assert error["code"] == 3
    assert isinstance(error["data"], str) and error["data"].startswith("0x08c379a0")
    assert decode_revert(revert_data(error) or b"-") == 'reverted: "insufficient balance"'
    # The calldata a proxy sees decodes to what the balance check compares.
    decoded = decode_call(data, [ERC20_TRANSFER])
    assert decoded is not None and decoded.arg("amount") == 11
    assert decoded.arg("to") == bytes.fromhex(bob[2:])


@pytest.mark.parametrize(
    ("signature", "args", "expected"),
    [
        ("failWithReason()", [], 'reverted: "no reason to go on"'),
        ("failWithoutReason()", [], "reverted without a reason"),
        ("failWithCustom(uint256)", [5], "Refused(who={sender}, amount=5)"),
        ("failWithPanic()", [], "panic 0x11: arithmetic overflow or underflow"),
        ("failWithDivision(uint256)", [0], "panic 0x12: division or modulo by zero"),
    ],
)
def test_each_revert_is_decoded_from_the_node_error(
    anvil: str, signature: str, args: list[int], expected: str
) -> None:
    reverter = deploy(anvil, "Reverter")
    sender = dev_account(anvil, 1)
    data = encode_call(parse_signature(signature), args)
    error = _revert(anvil, reverter, data, sender=sender).error
    assert error["code"] == 3, error
    found = revert_data(error)
    assert found is not None, error
    assert decode_revert(found, [REFUSED]) == expected.format(sender=sender)
    # The same revert comes back from eth_estimateGas, which clients send before signing.
    with pytest.raises(RpcError) as estimate:
        rpc(anvil, "eth_estimateGas", [{"from": sender, "to": reverter, "data": "0x" + data.hex()}])
    assert revert_data(estimate.value.error) == found


def test_succeed_is_no_revert(anvil: str) -> None:
    reverter = deploy(anvil, "Reverter")
    send(anvil, reverter, encode_call(parse_signature("succeed(uint256 x)"), [42]))
    assert read(anvil, reverter, parse_signature("stored()")) == 42
    # Once `stored` is set the panic still happens: it cannot be avoided by state.
    panic = _revert(anvil, reverter, encode_call(parse_signature("failWithPanic()"), []))
    assert decode_revert(revert_data(panic.error) or b"-") == (
        "panic 0x11: arithmetic overflow or underflow"
    )
