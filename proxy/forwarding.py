"""Reads and submissions passed on to the node pool, and the answers that never change for a
pool (its chain id and network id), remembered here, where they are used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.upstream import NodePool

# Answers fixed for the life of a pool: the pool refuses nodes whose chain id differs.
CONSTANT_ANSWERS = frozenset({"eth_chainId", "net_version"})


class Forwarding:
    """One per app: forwards to `pool`, answering the constant methods from memory."""

    def __init__(self, pool: NodePool) -> None:
        self.pool = pool
        self._constant: dict[str, Any] = {}

    async def call(self, method: str, params: Any = None,
                   headers: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        if method in CONSTANT_ANSWERS:
            if method not in self._constant:
                self._constant[method] = await self.pool.call(method)
            return self._constant[method]
        return await self.pool.call(method, params, headers=headers)
