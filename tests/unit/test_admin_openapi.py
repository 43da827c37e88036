"""The admin API's OpenAPI document is generated from the routes the app serves: every route
under /admin/api/ is in it with its method, and every operation in it is served."""

from __future__ import annotations

import re

from aiohttp import web

from proxy.admin.openapi import document
from proxy.app import create_app
from proxy.settings import Settings

SKIPPED = {"/admin/api/openapi.json", "/admin/api/{tail}", "/admin/api"}


def _served(app: web.Application) -> set[tuple[str, str]]:
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if path.startswith("/admin/api") and path not in SKIPPED and route.method != "*":
            served.add((route.method.lower(), path))
    return served


def test_every_admin_route_is_in_the_document_and_every_operation_is_served() -> None:
    served = _served(create_app(Settings()))
    doc = document()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert len(served) >= 20
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "operations in the document that nobody serves"


def test_the_document_is_openapi_3_1_with_schemas_for_every_reference() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    text = repr(doc)
    names = set(doc["components"]["schemas"])
    for name in re.findall(r"#/components/schemas/([\w-]+)", text):
        assert name in names, name
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["summary"], (method, path)
            assert {"200", "500"} <= set(operation["responses"]), (method, path)
            assert "401" in operation["responses"] and "403" in operation["responses"]


def test_a_route_left_out_of_the_registry_would_fail_the_check() -> None:
    app = create_app(Settings())

    async def hidden(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/admin/api/hidden", hidden)
    documented = {(m, p) for p, item in document()["paths"].items() for m in item}
    assert ("get", "/admin/api/hidden") in _served(app) - documented
