"""The admin API's OpenAPI 3.1 document, generated from the routes' registry and their pydantic
models (never written by hand): each route's parameters come from its path and query models,
its body and answers from its models, and the schemas from pydantic's JSON Schema (2020-12, the
dialect of OpenAPI 3.1)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from proxy.admin.models import ErrorAnswer
from proxy.admin.routes import PASSWORD_HEADER, ROUTES, Route

REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    400: "bad input: `error.problems` says what to fix; nothing was written",
    401: "missing, invalid or expired credentials (or, to approve, the admin not proved)",
    403: "the caller is not an admin",
    404: "no such thing in the caller's organisation",
    405: "the route does not take that method",
    409: "the thing is not in a state that allows the change; nothing was written",
    413: "the body is larger than 1 MiB",
    429: "too many failed authentications from this address",
    500: "an unexpected failure (the message carries a correlation id for the logs)",
    503: "the database (or the nodes) cannot answer now",
}


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorAnswer]
    for route in ROUTES:
        for model in (route.answer, route.body_model):
            if model is not None and model not in found:
                found.append(model)
    return found


def _parameters(route: Route, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for where, model in (("path", route.path_model), ("query", route.query_model)):
        if model is None:
            continue
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            description = prop.pop("description", None)
            prop.pop("title", None)
            prop = _without_null(prop)
            parameter: dict[str, Any] = {
                "name": name,
                "in": where,
                "schema": prop,
                "required": where == "path" or name in required,
            }
            if description:
                parameter["description"] = description
            parameters.append(parameter)
    if route.proof:
        parameters.append(
            {
                "name": PASSWORD_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the admin's own password, when the credential is a JWT (an API "
                "key needs none): approving and rejecting need the admin proved",
            }
        )
    return parameters


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in `ROUTES`."""
    # Answers in their serialization form, bodies in their validation form, in one call: a
    # model whose two forms differ gets a name for each.
    bodies = [r.body_model for r in ROUTES if r.body_model is not None]
    wanted = [(model, "serialization") for model in _models() if model not in bodies]
    wanted += [(model, "validation") for model in dict.fromkeys(bodies)]
    refs, top = models_json_schema(wanted, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": _parameters(route, schemas),
            "responses": {},
        }
        if route.description:
            operation["description"] = route.description
        if route.body_model is not None:
            required = any(f.is_required() for f in route.body_model.model_fields.values())
            operation["requestBody"] = {
                "required": required,
                "content": {"application/json": {"schema": refs[(route.body_model, "validation")]}},
            }
        if route.answer is not None:
            ok: dict[str, Any] = {
                "description": "OK",
                "content": {"application/json": {"schema": refs[(route.answer, "serialization")]}},
            }
        else:
            ok = {
                "description": "OK: a download",
                "content": {
                    route.download or "application/octet-stream": {"schema": {"type": "string"}}
                },
            }
        operation["responses"]["200"] = ok
        for status in sorted({*route.errors, 500}):
            operation["responses"][str(status)] = {
                "description": _STATUS_TEXT[status],
                "content": {"application/json": {
                    "schema": refs[(ErrorAnswer, "serialization")]}},
            }  # fmt: skip
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quorum-signer admin API",
            "version": "1",
            "description": "An organisation's admins see and act on what the proxy records: "
            "accounts and their nonces, transactions, held requests, the audit log, users and "
            "API keys, the policy, and the nodes. Every route needs `Authorization: Bearer` "
            "with a JWT or an API key (`qsk_…`) of a user with the `admin` role, and sees only "
            "that user's organisation. Credentials never go in the URL.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a JWT whose `sub` is an admin's user id, or an admin's API key "
                    "`qsk_…`",
                }
            },
        },
        "paths": paths,
    }


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter's schema: a parameter left out is what null means (a query
    string has no null)."""
    branches = schema.get("anyOf")
    if not branches:
        return schema
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) != 1:
        return schema
    result = {k: v for k, v in schema.items() if k != "anyOf"}
    if result.get("default", 0) is None:
        del result["default"]
    result.update(kept[0])
    return result
