"""`eth_subscribe` / `eth_unsubscribe`: subscriptions of the caller's WebSocket, carried to the
nodes by the subscription hub (proxy/sockets/feeds.py) under ids of the proxy's own, or, for
`qsigner_transactions`, the organisation's transaction events (proxy/events/stream.py)."""

from __future__ import annotations

from typing import Any

from proxy.context import Caller, Services
from proxy.errors import InvalidParams, MethodNotFound
from proxy.events import stream
from proxy.rpc import RpcRequest
from proxy.sockets.session import SocketSession


def _socket(caller: Caller, method: str) -> SocketSession:
    if caller.socket is None:
        raise MethodNotFound(f"{method} needs a WebSocket connection (ws:// or wss://): "
                             "notifications cannot come over HTTP")  # fmt: skip
    return caller.socket


async def subscribe(services: Services, caller: Caller, request: RpcRequest) -> Any:
    session = _socket(caller, request.method)
    params = request.positional
    if not params:
        raise InvalidParams("eth_subscribe takes the subscription kind first")
    if params[0] == stream.KIND:
        organisation = caller.principal.organisation_id
        events = await services.events.subscribe(session, caller.request_id, organisation,
                                                 params[1:])  # fmt: skip
        return events.id
    client = await services.subscriptions.subscribe(session, caller.request_id, params[0],
                                                    params[1:], caller.forward_headers)  # fmt: skip
    return client.id


async def unsubscribe(services: Services, caller: Caller, request: RpcRequest) -> Any:
    session = _socket(caller, request.method)
    params = request.positional
    if len(params) != 1 or not isinstance(params[0], str):
        raise InvalidParams("eth_unsubscribe takes one subscription id")
    client = session.subscriptions.get(params[0].lower())
    if client is None:
        raise InvalidParams("no subscription with this id on this connection")
    client.end()
    return True
