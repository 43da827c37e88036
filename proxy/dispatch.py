"""One JSON-RPC call or batch of an authenticated caller, answered as bytes: the path that HTTP
(`proxy.app`) and WebSocket (`proxy.sockets`) share, and who the caller is (`authenticate`).

Handlers raise; errors become JSON-RPC error answers here (`translate`), never by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time

from aiohttp import web

from proxy import logs, router, rpc
from proxy.context import Caller, Services
from proxy.errors import ProxyError, Unauthorized, translate
from proxy.identity.auth import bearer, is_api_key

# Ids of requests that came without X-Request-Id: unique across replicas and restarts (a random
# prefix per process), and cheaper than random bytes per request.
REQUEST_IDS = map(f"{secrets.token_hex(4)}{{:08x}}".format, itertools.count())
PSI = "Quorum-PSI"


async def authenticate(services: Services, request: web.Request) -> Caller:
    """The caller of an HTTP request: the API key in the path, or `Authorization: Bearer`."""
    caller, _ = await authenticate_upgrade(services, request, None, None)
    return caller


async def authenticate_upgrade(services: Services, request: web.Request, credential: str | None,
                               password: str | None) -> tuple[Caller, str]:  # fmt: skip
    """The caller, and the credential it proved itself with: the API key in the path, else
    `Authorization: Bearer`, else `credential` (a WebSocket's protocol header); the password
    of `X-Signer-Password`, else `password`. Failures count against the client's address."""
    # X-Forwarded-For counts only as far as QSIGNER_TRUSTED_PROXIES vouch for it: any caller
    # could set it.
    address = services.auth_failures.address_of(
        request.remote, request.headers.getall("X-Forwarded-For", [])
    )
    services.auth_failures.check(address)
    try:
        credential = (request.match_info.get("apikey")
                      or bearer(request.headers.get("Authorization")) or credential)  # fmt: skip
        if not credential:
            raise Unauthorized("authentication required: Authorization: Bearer <JWT or API key>")
        password = request.headers.get("X-Signer-Password", password)
        caller = await identify(services, credential, password, request.headers.getall(PSI, []))
    except Unauthorized:
        services.auth_failures.failed(address)
        raise
    return caller, credential


async def identify(services: Services, credential: str, password: str | None,
                   psi_wanted: list[str]) -> Caller:  # fmt: skip
    if is_api_key(credential):
        principal, credentials = await services.identity.unlock_with_api_key(credential)
        caller = Caller(principal, credentials)
    else:
        user_id = await services.verifier.verify(credential)
        principal = await services.identity.principal(user_id)
        caller = Caller(principal, None, password)
    # GoQuorum multi-tenancy: only a private state of the caller's organisation reaches a node.
    psi = await services.identity.private_state_for(principal, psi_wanted)
    if psi is not None:
        caller.forward_headers[PSI] = psi
    return caller


async def dispatch(services: Services, caller: Caller, call: rpc.RpcRequest,
                   request_id: str, *, counted: bool = False,
                   ) -> tuple[bytes, ProxyError | None]:  # fmt: skip
    """One call's whole answer, as JSON bytes, and the error it carries if any. `counted`: the
    call was already counted against the caller's rate limit (a batch's read that the node
    would not take as a batch)."""
    started = time.perf_counter()
    services.metrics.in_flight.inc()
    error: ProxyError | None = None
    try:
        if not counted:
            services.rate_limiter.check(caller.principal.user_id)
        handler = router.handler_for(call.method, services.settings.passthrough)
        value = await handler(services, caller, call)
        if isinstance(value, bytes):  # the node's own answer, with the caller's id
            return value, None
        return rpc.dumps(rpc.result(call.id, value)), None
    except Exception as exc:
        error = translate(exc)
        return rpc.dumps(rpc.error(call.id, error)), error
    finally:
        services.metrics.in_flight.dec()
        record(services, caller, call.method, request_id, error, time.perf_counter() - started)


def record(services: Services, caller: Caller, method: str, request_id: str,
            error: ProxyError | None, elapsed: float) -> None:  # fmt: skip
    """One call's metrics and log line."""
    outcome = "ok" if error is None else "error"
    # Method names come from callers: only ours and those a node answered become labels, so
    # that made-up names cannot grow the metrics without bound.
    label = method if method in router.LOCAL or error is None else "other"
    services.metrics.observe(label, outcome, elapsed)
    logs.event("rpc", request_id=request_id, method=label, user=caller.principal.user_id,
               org=caller.principal.organisation, outcome=outcome,
               code=None if error is None else error.code,
               duration_ms=round(elapsed * 1000, 2))  # fmt: skip


async def batch(services: Services, caller: Caller, items: list[rpc.RpcRequest | rpc.BadItem],
                 request_id: str) -> list[bytes | None]:  # fmt: skip
    """A batch's answers, in order (None for notifications). Its plain reads go to a node as one
    batch of their own, so that a batch costs the node one request; when the node will not take
    it as a batch, or it fails, each goes on its own like the rest, with its own retries."""
    answers: list[bytes | None] = [None] * len(items)
    alone: list[tuple[int, rpc.RpcRequest]] = []
    together: list[tuple[int, rpc.RpcRequest]] = []
    for n, item in enumerate(items):
        if isinstance(item, rpc.BadItem):
            answers[n] = rpc.dumps(rpc.error(item.id, item.error))
        elif not item.notification and router.forwarded_as_bytes(
            item.method, services.settings.passthrough
        ):
            together.append((n, item))
        else:
            alone.append((n, item))
    counted: list[tuple[int, rpc.RpcRequest]] = []  # the node did not answer them as a batch
    if len(together) > 1:
        counted = await forward_together(services, caller, together, answers, request_id)
    else:
        alone += together

    async def one(n: int, item: rpc.RpcRequest, already: bool = False) -> None:
        answer, _ = await dispatch(services, caller, item, request_id, counted=already)
        answers[n] = None if item.notification else answer

    await asyncio.gather(*(one(n, item) for n, item in alone),
                         *(one(n, item, True) for n, item in counted))  # fmt: skip
    return answers


async def forward_together(services: Services, caller: Caller,
                            chosen: list[tuple[int, rpc.RpcRequest]], answers: list[bytes | None],
                            request_id: str) -> list[tuple[int, rpc.RpcRequest]]:  # fmt: skip
    """Forwards the `chosen` reads (place in the batch, request) as one batch and fills in their
    answers; returns those still to be answered one by one (all of them when the batch did not
    go through), already counted against the caller's rate limit."""
    sent: list[tuple[int, rpc.RpcRequest]] = []
    for n, call in chosen:
        try:
            services.rate_limiter.check(caller.principal.user_id)
        except ProxyError as refused:
            answers[n] = rpc.dumps(rpc.error(call.id, refused))
            record(services, caller, call.method, request_id, refused, 0.0)
            continue
        sent.append((n, call))
    if not sent:
        return []
    started = time.perf_counter()
    try:
        results = await services.pool.forward_batch(
            [(call.method, call.params) for _, call in sent], caller.forward_headers
        )
    except Exception:
        results = None
    if results is None:
        return sent
    elapsed = time.perf_counter() - started
    for (n, call), result in zip(sent, results, strict=True):
        if isinstance(result, bytes):
            answers[n] = rpc.result_bytes(rpc.id_json(call.id), result)
            record(services, caller, call.method, request_id, None, elapsed)
        else:
            error = translate(result)
            answers[n] = rpc.dumps(rpc.error(call.id, error))
            record(services, caller, call.method, request_id, error, elapsed)
    return []
