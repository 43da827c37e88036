"""Accounts and chains as wallets answer them: the accounts the caller was granted, and
`wallet_switchEthereumChain` / `wallet_addEthereumChain` against the nodes' chain id."""

from __future__ import annotations

from typing import Any

from proxy.context import Caller, Services
from proxy.errors import InvalidParams, UnrecognizedChain
from proxy.rpc import RpcRequest
from signer.base import checksum
from signer.errors import InvalidTransaction
from signer.transactions import parse_quantity


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
