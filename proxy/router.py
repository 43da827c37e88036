"""Method -> handler: answered here (CONTRACT 4.1), forwarded to the nodes (4.3), or refused."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from proxy import rpc
from proxy.context import Caller, Services
from proxy.errors import MethodNotFound
from proxy.forwarding import CONSTANT_ANSWERS, is_forwarded
from proxy.handlers import accounts, signing, subscriptions
from proxy.rpc import RpcRequest

# A handler's result is the request's `result`; bytes are the whole answer, ready to send.
Handler = Callable[[Services, Caller, RpcRequest], Awaitable[Any]]

LOCAL: dict[str, Handler] = {
    "eth_accounts": accounts.accounts,
    "eth_requestAccounts": accounts.accounts,
    "personal_listAccounts": accounts.accounts,
    "wallet_switchEthereumChain": accounts.switch_chain,
    "wallet_addEthereumChain": accounts.switch_chain,
    "eth_sendTransaction": signing.send_transaction,
    "eth_signTransaction": signing.sign_transaction,
    "eth_sign": signing.eth_sign,
    "personal_sign": signing.personal_sign,
    "eth_signTypedData_v4": signing.sign_typed_data_v4,
    # geth's and web3.py's name for the same EIP-712 signing; v3 is v4 without arrays.
    "eth_signTypedData": signing.sign_typed_data_v4,
    "eth_signTypedData_v3": signing.sign_typed_data_v4,
    # Over WebSocket only (an HTTP caller gets -32601, as from a node).
    "eth_subscribe": subscriptions.subscribe,
    "eth_unsubscribe": subscriptions.unsubscribe,
}


async def forward(services: Services, caller: Caller, request: RpcRequest) -> Any:
    if request.method in signing.SUBMISSIONS:  # never retried where it may have been delivered
        return await signing.forward_raw(services, caller, request)
    answer = await services.forwarding.call(request.method, request.params,
                                            caller.forward_headers)  # fmt: skip
    if request.method == "eth_getTransactionCount":
        return await accounts.pending_count(services, request, answer)
    return answer


async def forward_as_bytes(services: Services, caller: Caller, request: RpcRequest) -> bytes:
    """A plain read, answered with the node's own bytes (Forwarding.forward): nothing of it is
    decoded or encoded again. `forward` is the way for what the proxy looks into."""
    caller_id = rpc.id_json(request.id)
    return await services.forwarding.forward(request.method, request.params,
                                             caller.forward_headers, caller_id)  # fmt: skip


# Forwarded methods whose answers the proxy reads or changes, so that they go through `forward`.
LOOKED_INTO = frozenset(signing.SUBMISSIONS) | {"eth_getTransactionCount"}


def forwarded_as_bytes(method: str, settings_passthrough: tuple[str, ...]) -> bool:
    """Whether `method` is a plain read, passed on as the node answers it."""
    return (method not in LOCAL and method not in LOOKED_INTO and method not in CONSTANT_ANSWERS
            and is_forwarded(method, settings_passthrough))  # fmt: skip


def handler_for(method: str, settings_passthrough: tuple[str, ...]) -> Handler:
    local = LOCAL.get(method)
    if local is not None:
        return local
    if is_forwarded(method, settings_passthrough):
        return forward if method in LOOKED_INTO else forward_as_bytes
    raise MethodNotFound(f"the method {method} does not exist or is not available")
