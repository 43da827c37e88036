"""The web console at /admin/: committed static files (plain ES modules and CSS, no build step)
served from the package, and the headers every answer under /admin/ carries: a strict
Content-Security-Policy (no inline script or style, nothing from another origin, no framing),
nosniff, no referrer, no caching of the API's answers."""

from __future__ import annotations

import re
from importlib import resources

from aiohttp import web

CONSOLE = "/admin"
# The console's files, by the name they are served under, and their types: nothing else in the
# folder is served.
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}  # fmt: skip
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The policy of every answer under /admin/. `connect-src` names the WebSocket of the
    page's own host as well: 'self' covers ws: and wss: only in browsers that follow CSP 3."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self'{sockets}; font-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")  # fmt: skip


def console_files() -> dict[str, tuple[bytes, str]]:
    """The console's files (name -> bytes and content type), read once from the package."""
    folder = resources.files("proxy.admin") / "console"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the console's headers on every answer under /admin/ (the pages, their
    files, the API, its errors)."""
    if request.path != CONSOLE and not request.path.startswith(CONSOLE + "/"):
        return
    headers = response.headers
    headers["Content-Security-Policy"] = content_security_policy(request.host)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers.setdefault("Cache-Control", "no-store")


def add_console(app: web.Application) -> None:
    """GET /admin/ (the page) and /admin/<file> (its modules and style); /admin redirects."""
    files = console_files()
    page = files["index.html"]

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page[0], content_type=page[1], charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None or request.match_info["name"] == "index.html":
            raise web.HTTPNotFound(text="no such file in the console\n")
        return web.Response(body=found[0], content_type=found[1], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def bare(request: web.Request) -> web.Response:
        raise web.HTTPFound(CONSOLE + "/")

    app.router.add_get(CONSOLE, bare)
    app.router.add_get(CONSOLE + "/", index)
    app.router.add_get(CONSOLE + "/{name:[A-Za-z0-9_.-]+}", asset)
    app.on_response_prepare.append(secure_headers)
