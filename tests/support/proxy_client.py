"""A JSON-RPC client of the proxy under test, as a dApp's HTTP calls reach it."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support.stack import Stack


@dataclass
class Proxy:
    url: str
    session: aiohttp.ClientSession
    stack: Stack

    async def post(self, body: Any, *, headers: dict[str, str] | None = None,
                   path: str = "/") -> tuple[int, Any]:  # fmt: skip
        data: Any = body if isinstance(body, bytes) else json.dumps(body).encode()
        if len(data) > 1024 * 1024:
            data = io.BytesIO(data)  # aiohttp warns on large raw bodies
        async with self.session.post(self.url + path, data=data, headers={
            "Content-Type": "application/json", **(headers or {})}) as response:  # fmt: skip
            text = await response.read()
            return response.status, (json.loads(text) if text else None)

    def jwt(self, password: bool = False, token: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token or self.stack.jwt}"}
        if password:
            headers["X-Signer-Password"] = self.stack.password
        return headers

    async def call(self, method: str, params: Any = None, *, headers: dict[str, str] | None = None,
                   path: str = "/") -> tuple[int, Any]:  # fmt: skip
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            body["params"] = params
        return await self.post(body, headers=headers if headers is not None else self.jwt(True),
                               path=path)  # fmt: skip

    async def result(self, method: str, params: Any = None, **kwargs: Any) -> Any:
        status, answer = await self.call(method, params, **kwargs)
        assert status == 200 and "result" in answer, answer
        return answer["result"]
