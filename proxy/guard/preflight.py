"""The checks before signing that read the chain: the sender's native balance, an ERC-20
transfer's token balance and allowance, and whether the call reverts. A refusal is -32003 with
`{reason, rule, detail}`, raised before any nonce is taken; the reads are shared with filling
(a successful gas estimate is the pre-flight call)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy import abi
from proxy.errors import NodeError, PolicyRefused
from proxy.nodes.pool import NodePool
from signer.base import checksum
from signer.transactions import Transaction

# The name each built-in check carries as `rule` in a refusal.
FUNDS_RULE = "balance-check"
TOKEN_RULE = "token-balance-check"  # noqa: S105 (a rule name, not a secret)
CALL_RULE = "preflight-call"
CHAIN_CHECKS = frozenset({FUNDS_RULE, TOKEN_RULE, CALL_RULE})


def refusal(reason: str, rule: str, detail: str) -> PolicyRefused:
    return PolicyRefused(f"refused: {detail}", {"reason": reason, "rule": rule, "detail": detail})


def is_revert(error: NodeError) -> bool:
    """A node's answer saying that the call reverted (geth and anvil: code 3 with the revert
    data, or -32000 "execution reverted" when there is none)."""
    return error.code == 3 or "execution reverted" in error.message.lower()


def lacks_funds(error: NodeError) -> bool:
    """A node refusing an estimate or call because the sender cannot pay for it."""
    return "insufficient funds" in error.message.lower()


def reverted(error: NodeError, errors: Iterable[abi.AbiSignature] = ()) -> PolicyRefused:
    data = abi.revert_data({"code": error.code, "message": error.message, "data": error.data})
    if data is None:
        # Some nodes put the reason in the message only ("execution reverted: reason").
        text = error.message.strip()
        detail = text if text.lower() != "execution reverted" else "reverted without a reason"
    else:
        detail = abi.decode_revert(data, errors)
    return refusal("execution_reverted", CALL_RULE, detail)


def transaction_cost(tx: Transaction) -> int:
    """What the node requires the balance to cover: value + gas x the highest price it may pay."""
    price = tx.max_fee_per_gas if tx.max_fee_per_gas is not None else tx.gas_price or 0
    return tx.value + tx.gas * price


def check_funds(sender: bytes, balance: int, tx: Transaction) -> None:
    cost = transaction_cost(tx)
    if balance < cost:
        price = tx.max_fee_per_gas if tx.max_fee_per_gas is not None else tx.gas_price or 0
        raise refusal("insufficient_funds", FUNDS_RULE, (
            f"the balance of {checksum(sender)} is {balance} wei, below value {tx.value} + gas "
            f"{tx.gas} x price {price} = {cost} wei"))  # fmt: skip


@dataclass(frozen=True)
class TokenMove:
    """An ERC-20 transfer or transferFrom the request makes: who pays, how much, and, for
    transferFrom, the spender whose allowance it uses."""

    token: bytes
    owner: bytes
    amount: int
    spender: bytes | None


def token_move(sender: bytes, to: bytes | None, data: bytes) -> TokenMove | None:
    if to is None or len(data) < 4:
        return None
    try:
        call = abi.decode_call(data, (abi.ERC20_TRANSFER, abi.ERC20_TRANSFER_FROM))
    except abi.CalldataError:
        return None  # not an ERC-20 call after all; the pre-flight call judges it
    if call is None:
        return None
    if call.function == abi.ERC20_TRANSFER:
        return TokenMove(to, sender, int(call.arg("amount")), None)
    return TokenMove(to, bytes(call.arg("from")), int(call.arg("amount")), sender)


async def _uint_call(pool: NodePool, to: bytes, data: bytes) -> int | None:
    """A view returning one uint256, or None when the contract does not answer one."""
    try:
        answer = await pool.call("eth_call", [{"to": "0x" + to.hex(), "data": "0x" + data.hex()},
                                              "latest"])  # fmt: skip
    except NodeError:
        return None
    if not isinstance(answer, str) or len(answer) != 66:
        return None
    return int(answer, 16)


async def token_shortfall(pool: NodePool, move: TokenMove | None) -> PolicyRefused | None:
    """The refusal for an ERC-20 move above the owner's balance or the spender's allowance, or
    None (also when the contract does not answer `balanceOf`: it is then not checked)."""
    if move is None:
        return None
    reads = [_uint_call(pool, move.token, abi.encode_call(abi.BALANCE_OF, [move.owner]))]
    if move.spender is not None:
        reads.append(_uint_call(pool, move.token, abi.encode_call(
            abi.ALLOWANCE, [move.owner, move.spender])))  # fmt: skip
    answers = await asyncio.gather(*reads)
    balance = answers[0]
    token, owner = checksum(move.token), checksum(move.owner)
    if balance is not None and move.amount > balance:
        return refusal("insufficient_token_balance", TOKEN_RULE, (
            f"moving {move.amount} of token {token} exceeds the balance of {owner}: "
            f"{balance}"))  # fmt: skip
    allowance = answers[1] if move.spender is not None else None
    if balance is not None and allowance is not None and move.amount > allowance:
        spender = checksum(move.spender or b"")
        return refusal("insufficient_token_balance", TOKEN_RULE, (
            f"moving {move.amount} of token {token} from {owner} exceeds the allowance of "
            f"{spender}: {allowance}"))  # fmt: skip
    return None


async def call_reverts(
    pool: NodePool, sender: bytes, fields: Mapping[str, Any], gas: int,
    errors: Iterable[abi.AbiSignature] = (),
) -> PolicyRefused | None:  # fmt: skip
    """The pre-flight `eth_call` at `pending` with the request's from, to, value, data and gas:
    the refusal when it reverts (a caller who gave the gas skipped the estimate that would have
    told)."""
    call = {k: v for k, v in fields.items() if k in ("to", "value", "data", "input", "accessList")}
    call["from"] = "0x" + sender.hex()
    call["gas"] = hex(gas)
    try:
        await pool.call("eth_call", [call, "pending"])
    except NodeError as error:
        if is_revert(error):
            return reverted(error, errors)
        if lacks_funds(error):
            return None  # the balance check speaks for this
        raise
    return None
