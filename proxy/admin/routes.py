"""How an admin API route runs: the registry the routes declare themselves in (`route`), and the
one wrapper every route goes through: authentication (JWT or API key, never from the URL), the
`admin` role, parsing the path, query and body into the route's models, the answer as JSON, one
error shape for every failure, the metrics and the log line.

The OpenAPI document (`proxy.admin.openapi`) is built from the same registry.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from proxy import logs
from proxy.admin.metrics import AdminMetrics
from proxy.admin.models import ErrorAnswer, ErrorDetail, Input, Problem
from proxy.context import Services
from proxy.errors import (
    BadInput,
    BodyTooLarge,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    HsmUnavailable,
    InputProblems,
    InvalidParams,
    InvalidRequest,
    MethodNotAllowed,
    NoNodeAvailable,
    NotFound,
    ParseError,
    ProxyError,
    RateLimited,
    Unauthorized,
    translate,
)
from proxy.identity import Principal
from proxy.identity.auth import bearer, is_api_key

PREFIX = "/admin/api"
MAX_BODY = 1024 * 1024
PASSWORD_HEADER = "X-Signer-Password"  # noqa: S105 (a header name)

# Query parameters that would carry a credential, and values that look like one: refused before
# anything else, so that nobody grows used to putting a key in a URL (URLs end up in logs,
# browser history and Referer headers).
_CREDENTIAL_NAMES = {"apikey", "api_key", "key", "token", "access_token", "jwt", "password",
                     "authorization"}  # fmt: skip
_CREDENTIAL_VALUE = re.compile(r"qsk_|^eyJ[\w-]*\.[\w-]*\.")


@dataclass
class Call:
    """One admin API call: who makes it, and its parsed path, query and body."""

    services: Services
    principal: Principal
    credential: Literal["jwt", "api_key"]
    unlocked: bool  # an API key, or a JWT with the user's password: may approve and reject
    request: web.Request
    path: Any = None
    query: Any = None
    body: Any = None


Handler = Callable[[Call], Awaitable[BaseModel | web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp's template, also OpenAPI's: /admin/api/approvals/{id}/approve
    handler: Handler
    summary: str
    description: str
    tag: str
    answer: type[BaseModel] | None  # None: a download of `download` type
    path_model: type[Input] | None = None
    query_model: type[Input] | None = None
    body_model: type[Input] | None = None
    download: str | None = None
    writes: bool = False
    proof: bool = False  # needs the caller unlocked (approve, reject)
    errors: tuple[int, ...] = field(default=())

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: list[Route] = []


def route(method: str, path: str, *, tag: str, answer: type[BaseModel] | None,
          path_model: type[Input] | None = None, query_model: type[Input] | None = None,
          body_model: type[Input] | None = None, download: str | None = None,
          writes: bool = False, proof: bool = False,
          errors: tuple[int, ...] = ()) -> Callable[[Handler], Handler]:  # fmt: skip
    """Declare a route of the admin API; the handler's docstring is its documentation (first
    line: the summary)."""

    def declare(handler: Handler) -> Handler:
        doc = (handler.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        ROUTES.append(Route(method, PREFIX + path, handler, summary.strip(),
                            " ".join(description.split()), tag, answer, path_model,
                            query_model, body_model, download, writes, proof,
                            errors))  # fmt: skip
        return handler

    return declare


# --- errors ---------------------------------------------------------------------------------

# The first matching line wins: (exception class, HTTP status, code).
_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (BodyTooLarge, 413, "too_large"),
    (BadInput, 400, "bad_input"),
    (InvalidParams, 400, "bad_input"),
    (InvalidRequest, 400, "bad_input"),
    (ParseError, 400, "bad_input"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (RateLimited, 429, "rate_limited"),
    (DatabaseUnavailable, 503, "unavailable"),
    (NoNodeAvailable, 503, "unavailable"),
    (HsmUnavailable, 503, "unavailable"),
)


def error_answer(exc: Exception) -> tuple[int, ErrorAnswer, dict[str, str]]:
    """The HTTP status, the body and the headers for a failure. Unexpected ones become 500 with
    only a correlation id (the log has the rest)."""
    if isinstance(exc, InputProblems):
        problems = [Problem(location=where, message=what) for where, what in exc.problems]
        return 400, ErrorAnswer(error=ErrorDetail(code="bad_input", message=exc.message,
                                                  problems=problems)), {}  # fmt: skip
    if isinstance(exc, MethodNotAllowed):
        return 405, ErrorAnswer(error=ErrorDetail(
            code="method_not_allowed", message=exc.message)), {
            "Allow": ", ".join(exc.allowed)}  # fmt: skip
    failure = exc if isinstance(exc, ProxyError) else translate(exc)
    for cls, status, code in _ERRORS:
        if isinstance(failure, cls):
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            return status, ErrorAnswer(error=ErrorDetail(code=code, message=failure.message)), \
                headers  # fmt: skip
    return 500, ErrorAnswer(error=ErrorDetail(code="internal", message=failure.message)), {}


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:  # fmt: skip
    return web.Response(body=model.model_dump_json(), status=status, headers=headers,
                        content_type="application/json")  # fmt: skip


# --- authentication -------------------------------------------------------------------------


async def authenticate(services: Services, request: web.Request
                       ) -> tuple[Principal, Literal["jwt", "api_key"], bool]:  # fmt: skip
    """Who calls, with `Authorization: Bearer <JWT or qsk_ API key>` only; with a JWT, the
    user's password in X-Signer-Password (when given) unlocks as it does for signing."""
    address = services.auth_failures.address_of(
        request.remote, request.headers.getall("X-Forwarded-For", [])
    )
    services.auth_failures.check(address)
    try:
        credential = bearer(request.headers.get("Authorization"))
        if not credential:
            raise Unauthorized("authentication required: Authorization: Bearer <JWT or API key>")
        if is_api_key(credential):
            principal, _ = await services.identity.unlock_with_api_key(credential)
            return principal, "api_key", True
        user_id = await services.verifier.verify(credential)
        principal = await services.identity.principal(user_id)
        password = request.headers.get(PASSWORD_HEADER)
        if password is None:
            return principal, "jwt", False
        principal, _ = await services.identity.unlock_with_password(user_id, password)
        return principal, "jwt", True
    except Unauthorized:
        services.auth_failures.failed(address)
        raise


def _refuse_credentials_in_query(request: web.Request) -> None:
    for name, value in request.query.items():
        if name.lower() in _CREDENTIAL_NAMES or _CREDENTIAL_VALUE.search(value):
            raise BadInput("credentials never go in the URL: send them in the header "
                           "Authorization: Bearer <JWT or API key>")  # fmt: skip


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    return bytes(body)


def _query_values(request: web.Request) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in request.query:
        given = request.query.getall(name)
        if len(given) > 1:
            raise BadInput(f"query.{name}: given {len(given)} times; give it once")
        values[name] = given[0]
    return values


async def _parse(route: Route, call: Call) -> None:
    request = call.request
    where = "path"
    try:
        if route.path_model is not None:
            call.path = route.path_model.model_validate(dict(request.match_info))
        where = "query"
        if route.query_model is not None:
            call.query = route.query_model.model_validate(_query_values(request))
        elif request.query:
            raise BadInput("this route takes no query parameters")
        where = "body"
        if route.body_model is not None:
            body = await _read_body(request)
            if not body.strip() and not any(
                f.is_required() for f in route.body_model.model_fields.values()
            ):
                body = b"{}"
            call.body = route.body_model.model_validate_json(body)
    except ValidationError as exc:
        problems = [
            (".".join([where, *(str(p) for p in e["loc"])]), e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
        first = f"{problems[0][0]}: {problems[0][1]}" if problems else f"invalid {where}"
        raise InputProblems(first, problems) from None


# --- the wrapper ----------------------------------------------------------------------------


def serve(
    route: Route, services_of: Callable[[web.Request], Services], metrics: AdminMetrics
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of `route`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        outcome, principal = "ok", None
        try:
            _refuse_credentials_in_query(request)
            services = services_of(request)
            principal, credential, unlocked = await authenticate(services, request)
            if principal.role != "admin":
                raise Forbidden(f"{principal.user_id} is a {principal.role}: the admin API is "
                                "for admins")  # fmt: skip
            if route.proof and not unlocked:
                raise Unauthorized(
                    "approving and rejecting need the admin proved: an API key, or a JWT with "
                    f"the admin's password in {PASSWORD_HEADER}"
                )
            call = Call(services, principal, credential, unlocked, request)
            await _parse(route, call)
            answer = await route.handler(call)
            if isinstance(answer, web.StreamResponse):
                return answer
            return _json(answer)
        except Exception as exc:
            status, body, headers = error_answer(exc)
            outcome = body.error.code
            return _json(body, status, headers)
        finally:
            elapsed = time.perf_counter() - started
            metrics.observe(route.path, route.method, outcome, elapsed)
            level = logging.WARNING if outcome in ("internal", "unavailable") else logging.INFO
            logs.event("admin", level,
                       route=f"{route.method} {route.path}",
                       user=principal.user_id if principal else None,
                       org=principal.organisation if principal else None, outcome=outcome,
                       duration_ms=round(elapsed * 1000, 2))  # fmt: skip

    return handle
