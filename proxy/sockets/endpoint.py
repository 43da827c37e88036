"""`GET /` and `GET /rpc/{apikey}` with `Upgrade: websocket`: the same JSON-RPC as HTTP, through
the same dispatch (`proxy.dispatch`), plus `eth_subscribe` / `eth_unsubscribe`.

At the upgrade: the page's `Origin`, when a browser sends one, must be in QSIGNER_CORS_ORIGINS
or the proxy's own (the web console; 403 otherwise); the caller authenticates as over HTTP (API
key in the path, `Authorization: Bearer`, `X-Signer-Password`, `Quorum-PSI`) or, for browsers,
which cannot set headers, with `Sec-WebSocket-Protocol: qsigner, bearer.<JWT or API key>[,
password.<base64url>]`. A refusal is an HTTP answer with a JSON-RPC error, as over HTTP (401,
403, 429). Every message of the socket is then that caller's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses

from aiohttp import WSCloseCode, WSMsgType, web

from proxy import dispatch, rpc
from proxy.context import Caller, Services
from proxy.errors import Forbidden, InvalidRequest, Unauthorized, translate
from proxy.identity.auth import is_api_key
from proxy.identity.model import Principal
from proxy.sockets.session import SocketSession

PROTOCOL = "qsigner"
HEARTBEAT_SECONDS = 30.0  # a ping to clients: dead peers are found, idle sockets kept open
IN_FLIGHT_PER_SOCKET = 64  # messages of one socket served at once; more wait to be read


def origin_allowed(origin: str | None, allowed: tuple[str, ...], host: str | None = None) -> bool:
    """A socket opened by a web page (a browser sends its `Origin`) only from an allowed
    origin, as CORS preflights, or from the proxy's own pages (the web console at /admin/: the
    origin's host is the one the browser connects to); clients outside browsers send none."""
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return host is not None and origin.partition("://")[2] == host


def protocol_credentials(request: web.Request) -> tuple[str | None, str | None]:
    """The credential and password a browser put in `Sec-WebSocket-Protocol` (None where it put
    none): `bearer.<JWT or API key>` and `password.<the password, base64url, unpadded>`."""
    credential = password = None
    for header in request.headers.getall("Sec-WebSocket-Protocol", []):
        for entry in header.split(","):
            name, _, value = entry.strip().partition(".")
            if name == "bearer" and value:
                credential = value
            elif name == "password" and value:
                try:
                    password = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
                except (binascii.Error, ValueError):
                    raise Unauthorized("the password. protocol entry must be the password in "
                                       "base64url (UTF-8)") from None  # fmt: skip
    return credential, password


def api_key_id(credential: str) -> str | None:
    return credential.split("_")[1] if is_api_key(credential) and credential.count("_") >= 2 \
        else None  # fmt: skip


async def recheck(services: Services, session: SocketSession) -> Principal:
    """The principal the socket's credential stands for now, or Unauthorized (revoked key,
    disabled or removed user)."""
    if session.api_key_id is not None:
        principal, _ = await services.identity.unlock_with_api_key(session.credential)
        return principal
    return await services.identity.principal(session.user_id)


async def serve(request: web.Request, services: Services) -> web.StreamResponse:
    settings = services.settings
    limit = settings.ws_max_message_bytes
    # Messages up to twice the limit are read and answered with an error; larger ones cannot be
    # read at all, and close the socket with 1009.
    ws = web.WebSocketResponse(protocols=(PROTOCOL,), heartbeat=HEARTBEAT_SECONDS,
                               max_msg_size=2 * limit)  # fmt: skip
    if not ws.can_prepare(request).ok:
        raise web.HTTPMethodNotAllowed("GET", ["POST", "OPTIONS"])
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, settings.cors_origins, request.host):
        forbidden = Forbidden(f"this origin may not open a socket (QSIGNER_CORS_ORIGINS): "
                              f"{origin}")  # fmt: skip
        return web.json_response(rpc.error(None, forbidden), status=403)
    generation = services.sockets.generation
    try:
        credential, password = protocol_credentials(request)
        caller, credential = await dispatch.authenticate_upgrade(services, request, credential,
                                                                 password)  # fmt: skip
        services.sockets.admit(caller.principal.user_id)
    except Exception as exc:
        refused = translate(exc)
        return web.json_response(rpc.error(None, refused), status=refused.http_status)
    transport = request.transport
    abort = transport.abort if transport is not None else _nothing
    await ws.prepare(request)
    session = SocketSession(ws, caller, credential, api_key_id(credential),
                            send_queue=settings.ws_send_queue,
                            max_subscriptions=settings.ws_max_subscriptions,
                            metrics=services.metrics,
                            abort=abort)  # fmt: skip
    services.sockets.add(session, generation)
    caller.socket = session
    slots = asyncio.Semaphore(IN_FLIGHT_PER_SOCKET)
    serving: set[asyncio.Task[None]] = set()
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                data = message.data.encode()
            elif message.type == WSMsgType.BINARY:
                data = message.data
            else:
                break
            if session.closing is not None:
                break
            await slots.acquire()
            task = asyncio.create_task(_answer(services, session, data, limit))
            serving.add(task)
            task.add_done_callback(serving.discard)
            task.add_done_callback(lambda _: slots.release())
    finally:
        for subscription in list(session.subscriptions.values()):
            subscription.end()
        services.sockets.remove(session)
        for task in serving:
            task.cancel()
        if session.closing is None and ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            services.metrics.ws_closed.labels("too_big").inc()
        await session.finish()
        with contextlib.suppress(Exception):
            await ws.close()
    return ws


def _nothing() -> None:
    pass


async def _answer(services: Services, session: SocketSession, data: bytes, limit: int) -> None:
    """One message: a request or a batch, answered on the socket (in the order answers are
    ready, as JSON-RPC allows; a notification gets none)."""
    request_id = next(dispatch.REQUEST_IDS)
    caller: Caller = dataclasses.replace(session.caller, request_id=request_id)
    try:
        if len(data) > limit:
            raise InvalidRequest(f"invalid request: the message is larger than {limit} bytes "
                                 "(QSIGNER_WS_MAX_MESSAGE_BYTES)")  # fmt: skip
        parsed = rpc.parse_body(data)
    except Exception as exc:
        session.send(rpc.dumps(rpc.error(None, translate(exc))))
        return
    if isinstance(parsed, rpc.RpcRequest):
        answer, _ = await dispatch.dispatch(services, caller, parsed, request_id)
        if not parsed.notification:
            session.send(answer)
    else:
        answers = [a for a in await dispatch.batch(services, caller, parsed, request_id)
                   if a is not None]  # fmt: skip
        if answers:
            session.send(b"[%s]" % b",".join(answers))
    session.answered(request_id)
