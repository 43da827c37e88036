"""The admin API under /admin/api/: an organisation's admins see and act on accounts and their
nonces, transactions, held requests, the audit log, users and API keys, the policy and the nodes.

`routes` runs every call (authentication, the admin role, input models, one error shape,
metrics), `api` holds the routes, `models` their typed input and answers, `queries` the SQL,
and `openapi` the OpenAPI 3.1 document generated from them, served at /admin/api/openapi.json.
`serving` serves the web console at /admin/ (the static files of `console/`) and puts the
Content-Security-Policy on every answer under /admin/.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import api  # noqa: F401 (its routes declare themselves on import)
from proxy.admin.metrics import AdminMetrics
from proxy.admin.openapi import document
from proxy.admin.routes import PREFIX, ROUTES, error_answer
from proxy.admin.routes import serve as serve_route
from proxy.admin.serving import add_console
from proxy.context import Services
from proxy.errors import MethodNotAllowed, NotFound


def add_routes(app: web.Application, services_of: Callable[[web.Request], Services],
               registry: CollectorRegistry) -> None:  # fmt: skip
    """Every admin API route on `app`, its OpenAPI document, JSON errors for the rest of
    /admin/api/ (404, or 405 for a known route with another method), and the web console."""
    metrics = AdminMetrics(registry)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, serve_route(route, services_of, metrics))
    openapi = document()

    async def openapi_json(request: web.Request) -> web.Response:
        metrics.observe(PREFIX + "/openapi.json", "GET", "ok", 0.0)
        return web.json_response(openapi)

    app.router.add_get(PREFIX + "/openapi.json", openapi_json, allow_head=False)

    async def unmatched(request: web.Request) -> web.Response:
        allowed = sorted(
            {r.method for r in ROUTES if _matches(r.path, request.path)}
            | ({"GET"} if request.path == PREFIX + "/openapi.json" else set())
        )
        exc: Exception = (
            MethodNotAllowed("this route does not take that method", allowed)
            if allowed
            else NotFound("no such route in the admin API (see /admin/api/openapi.json)")
        )
        status, body, headers = error_answer(exc)
        metrics.observe("unmatched", request.method, body.error.code, 0.0)
        return web.Response(body=body.model_dump_json(), status=status, headers=headers,
                            content_type="application/json")  # fmt: skip

    app.router.add_route("*", PREFIX + "/{tail:.*}", unmatched)
    app.router.add_route("*", PREFIX, unmatched)
    add_console(app)  # after the API's routes: /admin/{file} must not take /admin/api


def _matches(template: str, path: str) -> bool:
    wanted, given = template.strip("/").split("/"), path.strip("/").split("/")
    return len(wanted) == len(given) and all(
        w.startswith("{") or w == g for w, g in zip(wanted, given, strict=True)
    )


__all__ = ["add_routes"]
