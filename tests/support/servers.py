"""Stand-in servers' plumbing: an aiohttp app served on a loopback port, and stopped again."""

from __future__ import annotations

from aiohttp import web


async def serve_on_loopback(app: web.Application, port: int) -> web.AppRunner:
    """`app` answering on 127.0.0.1:`port`; `stop_serving` ends it."""
    runner = web.AppRunner(app, shutdown_timeout=1, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def stop_serving(runner: web.AppRunner | None) -> None:
    if runner is not None:
        await runner.cleanup()
