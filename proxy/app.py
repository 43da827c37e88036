"""The one place that builds the aiohttp application: routes, middlewares, long-lived resources.

`create_app(settings)` opens the node pool, the database pool (with the identity service), the
HSM module and the JWT verifier in `cleanup_ctx`; a startup problem raises `SettingsError`
naming the setting to fix. Handlers raise; errors become JSON-RPC responses here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import admin, dispatch, logs, rpc, store
from proxy.audit import AuditLog
from proxy.context import Services
from proxy.errors import (
    BodyTooLarge,
    SettingsError,
    translate,
)
from proxy.events.stream import TransactionEvents
from proxy.events.webhooks import WebhookDeliverer, WebhookMetrics
from proxy.forwarding import Forwarding
from proxy.guard.gate import Gate
from proxy.guard.metrics import GuardMetrics
from proxy.identity import Identity
from proxy.identity.auth import build_verifier
from proxy.keyring import Keyring
from proxy.ledger.metrics import LedgerMetrics
from proxy.ledger.nonces import Ledger
from proxy.ledger.recovery import Recovery
from proxy.metrics import Metrics
from proxy.nodes.facts import ChainFacts
from proxy.nodes.pool import NodePool
from proxy.nodes.tessera import Tessera
from proxy.nodes.websocket import websocket_urls
from proxy.probes import HsmProbe
from proxy.ratelimit import AuthFailureThrottle, RateLimiter, trusted_networks
from proxy.settings import Settings
from proxy.sockets import endpoint as sockets
from proxy.sockets.endpoint import recheck
from proxy.sockets.feeds import SubscriptionHub
from proxy.sockets.registry import SocketRegistry
from signer.errors import ModuleNotFound
from signer.executors import BoundedExecutor
from signer.pkcs11 import Hsm

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
METRICS = web.AppKey("metrics", Metrics)
MAX_BODY = 1024 * 1024
CORS_HEADERS = "Authorization, Content-Type, X-Signer-Password, Idempotency-Key, Quorum-PSI"


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings: Settings = app[SETTINGS]
    if not settings.upstreams:
        raise SettingsError("QSIGNER_UPSTREAMS is not set (comma-separated node URLs)")
    module = settings.require_pkcs11_module()
    # Every resource is handed to the exit stack as soon as it exists, so that a startup
    # failure (a bad node URL, no database) closes exactly what was opened, in reverse order.
    async with contextlib.AsyncExitStack() as opened:
        verifier = build_verifier(settings)
        opened.push_async_callback(verifier.close)
        try:
            hsm = Hsm(module, queue_per_token=settings.hsm_queue_limit)
        except ModuleNotFound as exc:
            raise SettingsError(f"QSIGNER_PKCS11_MODULE: {exc}") from None
        loop = asyncio.get_running_loop()
        opened.push_async_callback(loop.run_in_executor, None, hsm.close)
        # PBKDF2 gets threads of its own: a burst of first unlocks never delays signing or
        # readiness.
        unlock_executor = BoundedExecutor(settings.unlock_threads, settings.unlock_queue_limit,
                                          thread_name_prefix="pbkdf2")  # fmt: skip
        opened.callback(unlock_executor.shutdown, wait=False, cancel_futures=True)
        hsm_probe = HsmProbe(hsm)
        opened.push_async_callback(hsm_probe.close)
        # Each node caps its own connections (QSIGNER_NODE_CONNECTIONS, plus its two health
        # probes); a limit shared by all nodes would let one slow node take every connection.
        pool = NodePool(settings.upstreams, expected_chain_id=settings.chain_id,
                        read_timeout=settings.read_timeout,
                        node_connections=settings.node_connections,
                        max_response_bytes=settings.max_response_bytes)  # fmt: skip
        opened.push_async_callback(pool.close)
        db = await store.connect(settings.require_database(),
                                 command_timeout=settings.database_timeout,
                                 light_reset=True)  # fmt: skip
        opened.push_async_callback(db.close)
        audit = AuditLog(store.BoundedPool(db, settings.database_timeout), hsm=hsm,
                         checkpoint_rows=settings.audit_checkpoint_rows,
                         checkpoint_seconds=settings.audit_checkpoint_seconds)  # fmt: skip
        await audit.start()
        opened.push_async_callback(audit.close)
        identity = Identity(
            store.BoundedPool(db, settings.database_timeout),
            settings,
            run_blocking=unlock_executor.run,
            audit=audit,
        )
        opened.push_async_callback(identity.close)
        await identity.listen(settings.require_database())
        await pool.start()
        if pool.chain_id == 1:
            raise SettingsError(
                "QSIGNER_UPSTREAMS: the nodes are on chain 1 (Ethereum mainnet); quorum-signer "
                "serves Quorum networks, and GoQuorum refuses chain id 1, whose EIP-155 v (37/38) "
                "marks its private transactions"
            )
        ledger = Ledger(store.BoundedPool(db, settings.database_timeout), pool,
                        LedgerMetrics(app[METRICS].registry),
                        max_in_flight=settings.max_in_flight,
                        idempotency_ttl=settings.idempotency_ttl)  # fmt: skip
        await ledger.start()
        opened.push_async_callback(ledger.close)
        keyring = Keyring(hsm)
        recovery = Recovery(ledger, keyring, resend_after=settings.resend_seconds,
                            signed_tx_timeout=settings.signed_tx_timeout)  # fmt: skip
        await recovery.start()
        opened.push_async_callback(recovery.close)
        gate = Gate(store.BoundedPool(db, settings.database_timeout), identity.rows, pool, audit,
                    GuardMetrics(app[METRICS].registry))  # fmt: skip
        await gate.start()
        opened.push_async_callback(gate.close)
        tessera = Tessera(timeout=settings.read_timeout)
        opened.callback(tessera.close)
        subscriptions = SubscriptionHub(
            pool,
            websocket_urls(settings.upstreams, settings.upstreams_ws),
            app[METRICS],
            replay_blocks=settings.ws_replay_blocks,
        )
        opened.push_async_callback(subscriptions.close)
        events = TransactionEvents(store.BoundedPool(db, settings.database_timeout), app[METRICS])
        await events.start(settings.require_database())
        opened.push_async_callback(events.close)
        webhooks = WebhookDeliverer(
            store.BoundedPool(db, settings.database_timeout), events,
            WebhookMetrics(app[METRICS].registry), timeout=settings.webhook_timeout,
            retry_max=settings.webhook_retry_max, give_up=settings.webhook_give_up,
            retention=settings.event_retention,
        )  # fmt: skip
        await webhooks.start()
        opened.push_async_callback(webhooks.close)
        services: list[Services] = []
        sockets = SocketRegistry(identity.rows, lambda session: recheck(services[0], session),
                                 settings.ws_max_connections, app[METRICS])  # fmt: skip
        app[SERVICES] = Services(
            settings=settings, pool=pool, identity=identity, hsm=hsm, verifier=verifier,
            ledger=ledger, metrics=app[METRICS], keyring=keyring, hsm_probe=hsm_probe,
            rate_limiter=RateLimiter(settings.rate_limit,
                                     settings.rate_burst or 2 * settings.rate_limit),
            forwarding=Forwarding(pool), chain_facts=ChainFacts(pool), audit=audit,
            gate=gate, tessera=tessera, sockets=sockets, subscriptions=subscriptions, events=events,
            auth_failures=AuthFailureThrottle(settings.auth_failure_rate,
                                              settings.auth_failure_burst,
                                              trusted_networks(settings.trusted_proxies)),
        )  # fmt: skip
        services.append(app[SERVICES])
        logs.event("serving", chain_id=pool.chain_id, nodes=len(settings.upstreams))
        yield


async def _read_body(request: web.Request) -> bytes:
    """The whole body, however it is framed (Content-Length or chunked) and however many TCP
    segments it arrives in; `BodyTooLarge` (413) as soon as it passes MAX_BODY. (A single
    `content.read(n)` returns only what is buffered so far: a deploy cut short.)"""
    too_large = BodyTooLarge(f"invalid request: the body is larger than {MAX_BODY} bytes")
    length = request.content_length
    if length is not None:
        if length > MAX_BODY:
            raise too_large
        try:
            return await request.content.readexactly(length)
        except asyncio.IncompleteReadError as short:  # the caller hung up: what came
            return short.partial
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY:
            raise too_large  # aiohttp drains the rest before answering, as it lingers
    return bytes(body)


async def rpc_endpoint(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    request_id = request.headers.get("X-Request-Id", "")[:64] or next(dispatch.REQUEST_IDS)
    try:
        body = await _read_body(request)
        caller = await dispatch.authenticate(services, request)
        caller.request_id = request_id
        caller.idempotency_key = request.headers.get("Idempotency-Key")
        parsed = rpc.parse_body(body)
    except Exception as exc:
        refused = translate(exc)
        return web.json_response(rpc.error(None, refused), status=refused.http_status)

    if isinstance(parsed, rpc.RpcRequest):
        answer, failure = await dispatch.dispatch(services, caller, parsed, request_id)
        if parsed.notification:
            return web.Response(status=204)
        return web.Response(body=answer, status=failure.http_status if failure else 200,
                            content_type="application/json")  # fmt: skip

    answered = await dispatch.batch(services, caller, parsed, request_id)
    answers = [a for a in answered if a is not None]
    if not answers:
        return web.Response(status=204)
    return web.Response(body=b"[%s]" % b",".join(answers), content_type="application/json")


async def websocket_endpoint(request: web.Request) -> web.StreamResponse:
    return await sockets.serve(request, request.app[SERVICES])


async def _close_sockets(app: web.Application) -> None:
    """At shutdown, before the services close: every client socket is told (1001, going away),
    rather than waited for."""
    if SERVICES in app:
        for session in app[SERVICES].sockets.sessions():
            session.close_soon(WSCloseCode.GOING_AWAY, "shutdown", "the proxy is stopping")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        await asyncio.wait_for(services.identity.pool.fetchval("SELECT 1"), timeout=2)
        database_ok = True
    except Exception:
        database_ok = False
    hsm_ok = await services.hsm_probe.ok()
    nodes = [
        {"url": n.url, "ok": n.ok, "block": n.block, "chain_id": n.chain_id}
        for n in services.pool.status()
    ]
    ready = database_ok and hsm_ok and any(n["ok"] for n in nodes)
    body = {"ready": ready, "database": {"ok": database_ok}, "hsm": {"ok": hsm_ok},
            "nodes": nodes}  # fmt: skip
    return web.json_response(body, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if SERVICES in request.app:
        for node in request.app[SERVICES].pool.status():
            metrics.node_up.labels(node.url).set(1 if node.ok else 0)
            if node.block is not None:
                metrics.node_block.labels(node.url).set(node.block)
    return web.Response(body=generate_latest(metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


@web.middleware
async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
    allowed: tuple[str, ...] = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    permitted = origin is not None and ("*" in allowed or origin in allowed)
    if request.method == "OPTIONS":
        if not permitted:
            return web.Response(status=403)
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if permitted and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def _options(request: web.Request) -> web.Response:
    # With QSIGNER_CORS_ORIGINS the cors middleware answers preflights; without, none is allowed.
    return web.Response(status=403)


def create_app(settings: Settings) -> web.Application:
    # Without origins there is nothing for the middleware to allow: preflights get 403 from
    # `_options`, and other requests skip a middleware's cost.
    middlewares = [cors] if settings.cors_origins else []
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY * 2)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_services)
    app.router.add_post("/", rpc_endpoint)
    app.router.add_post("/rpc/{apikey}", rpc_endpoint)
    app.router.add_get("/", websocket_endpoint, allow_head=False)
    app.router.add_get("/rpc/{apikey}", websocket_endpoint, allow_head=False)
    app.on_shutdown.append(_close_sockets)
    app.router.add_route("OPTIONS", "/", _options)
    app.router.add_route("OPTIONS", "/rpc/{apikey}", _options)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    admin.add_routes(app, lambda request: request.app[SERVICES], app[METRICS].registry)
    return app


def serve_app(settings: Settings, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT / SIGTERM; `on_ready` runs once the port accepts connections, while
    requests are served (`dev` deploys its demo contract through the proxy then). A signal
    cancels it; its exception stops the server and is raised. A startup problem raises
    SettingsError."""
    logs.configure(settings.log_format)
    host, _, port = settings.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError("QSIGNER_LISTEN must be host:port")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host.strip("[]"), int(port)).start()
            except OSError as exc:
                raise SettingsError(f"QSIGNER_LISTEN: cannot listen on {settings.listen} "
                                    f"({exc.strerror})") from None  # fmt: skip
            print(
                f"quorum-signer listening on http://{settings.listen}", file=sys.stderr, flush=True
            )
            if on_ready is not None:
                await _unless_stopped(on_ready(), stop)
            await stop.wait()
        finally:
            await runner.cleanup()
            logs.stop()

    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(run())


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """`work`, cancelled if `stop` is set first; its exception is raised."""
    task, stopping = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop (QSIGNER_EVENT_LOOP=uvloop, the default), else the standard one.
    bench/passthrough.py: uvloop alone lifts the passthrough's requests/s by about a third."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
