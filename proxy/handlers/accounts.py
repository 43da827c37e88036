"""Accounts and chains as wallets answer them: the accounts the caller was granted, and
`wallet_switchEthereumChain` / `wallet_addEthereumChain` against the nodes' chain id."""

from __future__ import annotations

from typing import Any

from proxy.context import Caller, Services
from proxy.errors import InvalidParams, UnrecognizedChain
from proxy.rpc import RpcRequest
from signer.base import checksum
from signer.errors import InvalidTransaction
from signer.transactions import parse_address, parse_quantity


async def accounts(services: Services, caller: Caller, request: RpcRequest) -> Any:
    listed = await services.identity.granted_accounts(caller.principal.user_id)
    return [checksum(account.address) for account in listed]


async def switch_chain(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if not params or not isinstance(params[0], dict) or "chainId" not in params[0]:
        raise InvalidParams("expected [{chainId}]")
    try:
        wanted = parse_quantity("chainId", params[0]["chainId"])
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    if wanted != services.pool.chain_id:
        raise UnrecognizedChain(f"unrecognized chain id {wanted:#x}: the nodes serve "
                                f"{services.pool.chain_id:#x}")  # fmt: skip
    return None


async def pending_count(services: Services, request: RpcRequest, answer: Any) -> Any:
    """eth_getTransactionCount(address, "pending") of an account the ledger manages: the greater
    of the node's count and the ledger's next nonce, so that a tool that reads the count and then
    sends with it (cast, hardhat) gets a nonce no other caller of the proxy holds."""
    params = request.positional
    if len(params) < 2 or params[1] != "pending" or not isinstance(answer, str):
        return answer
    try:
        address = parse_address("address", params[0])
        count = int(answer, 16)
    except (InvalidTransaction, ValueError):
        return answer
    if address is None:
        return answer
    next_nonce = await services.ledger.next_nonce(address)
    if next_nonce is None or next_nonce <= count:
        return answer
    return hex(next_nonce)
