"""One node's JSON-RPC over WebSocket, for subscriptions: requests matched to their answers by
id, and `eth_subscription` notifications handed on as they arrive.

A node's WebSocket URL is QSIGNER_UPSTREAMS_WS's entry for it, or else derived from its HTTP URL:
the same host, port and path with the ws(s) scheme (anvil, Besu with `--rpc-ws-port` equal to
its HTTP port, and gateways that serve both on one URL). Credentials in the URL travel as a
header (HTTP Basic), never in a URL that an error or a log could quote.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from proxy import rpc
from proxy.errors import NodeError, NodeTimeout, NodeUnreachable, SettingsError
from proxy.nodes.transport import mask_url

# A notification: the node's subscription id and the notification's decoded `result`.
Notification = Callable[[str, Any], None]
# Pings keep idle connections through load balancers and find a node that vanished silently.
HEARTBEAT_SECONDS = 10.0
# A node's notification may be a block full of logs; answers to our requests are small.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def websocket_urls(http_urls: tuple[str, ...], ws_urls: tuple[str, ...]) -> list[str]:
    """Each node's WebSocket URL: QSIGNER_UPSTREAMS_WS, else derived from QSIGNER_UPSTREAMS."""
    if ws_urls:
        for url in ws_urls:
            if URL(url).scheme not in ("ws", "wss") or not URL(url).host:
                raise SettingsError(
                    f"QSIGNER_UPSTREAMS_WS: {mask_url(url)} is not a ws:// or wss:// URL"
                )
        return list(ws_urls)
    derived = []
    for url in http_urls:
        parsed = URL(url)
        derived.append(str(parsed.with_scheme("wss" if parsed.scheme == "https" else "ws")))
    return derived


def websocket_endpoint(url: str) -> tuple[URL, dict[str, str]]:
    """`url` without its credentials, and the header that carries them instead."""
    parsed = URL(url)
    headers: dict[str, str] = {}
    if parsed.user is not None:
        user_pass = f"{parsed.user}:{parsed.password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
    return parsed.with_user(None).with_fragment(None), headers


class NodeSocket:
    """A WebSocket to one node. `request` sends one call and waits for its answer;
    notifications go to `on_notification`. When the connection ends, for whatever reason,
    waiting requests fail with NodeUnreachable, `lost` is set and `on_lost` runs once."""

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str],
                 on_notification: Notification, on_lost: Callable[[NodeSocket], None],
                 name: str) -> None:  # fmt: skip
        self.name = name  # masked
        self._session = session
        self._url, own_headers = websocket_endpoint(url)
        self._headers = {**own_headers, **headers}
        self._on_notification = on_notification
        self._on_lost = on_lost
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.lost = asyncio.Event()

    async def open(self, timeout: float) -> None:
        try:
            self._ws = await asyncio.wait_for(
                self._session.ws_connect(self._url, headers=self._headers,
                                         heartbeat=HEARTBEAT_SECONDS,
                                         max_msg_size=MAX_MESSAGE_BYTES),
                timeout,
            )  # fmt: skip
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.lost.set()
            raise NodeUnreachable(
                f"{self.name}: no WebSocket ({type(exc).__name__})", delivered=False
            ) from None
        self._reader = asyncio.create_task(self._read(), name=f"node-socket {self.name}")

    async def request(self, method: str, params: Any, timeout: float) -> Any:
        """One call's `result`; NodeError for the node's error, NodeUnreachable when the
        connection is gone, NodeTimeout when no answer came in time."""
        ws = self._ws
        if ws is None or self.lost.is_set():
            raise NodeUnreachable(f"{self.name}: the WebSocket is closed", delivered=False)
        request_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        try:
            await ws.send_str(rpc.dumps(body).decode())
            async with asyncio.timeout(timeout):
                return await answer
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise NodeUnreachable(f"{self.name}: {type(exc).__name__}", delivered=True) from None
        except TimeoutError:
            raise NodeTimeout(f"{self.name}: no answer to {method} within {timeout:g} s") from None
        finally:
            self._waiting.pop(request_id, None)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._end()

    async def _read(self) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            async for message in ws:
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break
                try:
                    decoded = rpc.loads(message.data if isinstance(message.data, bytes)
                                        else message.data.encode())  # fmt: skip
                except ValueError:
                    continue
                for item in decoded if isinstance(decoded, list) else [decoded]:
                    if isinstance(item, dict):
                        self._received(item)
        except Exception:  # noqa: S110 (a broken connection is a lost one, handled below)
            pass
        finally:
            self._end()

    def _received(self, item: dict[str, Any]) -> None:
        if item.get("method") == "eth_subscription":
            params = item.get("params")
            if isinstance(params, dict) and isinstance(params.get("subscription"), str):
                self._on_notification(params["subscription"], params.get("result"))
            return
        waiting = self._waiting.get(item.get("id"))  # type: ignore[arg-type]
        if waiting is None or waiting.done():
            return
        error = item.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            waiting.set_exception(NodeError(int(error.get("code", -32603)),
                                            message if isinstance(message, str) else "",
                                            error.get("data")))  # fmt: skip
        else:
            waiting.set_result(item.get("result"))

    def _end(self) -> None:
        if self.lost.is_set() and not self._waiting:
            return
        first = not self.lost.is_set()
        self.lost.set()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(
                    NodeUnreachable(f"{self.name}: the WebSocket closed", delivered=True)
                )
        self._waiting.clear()
        if first:
            self._on_lost(self)
