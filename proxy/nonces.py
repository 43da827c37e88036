"""Where a transaction's nonce comes from: the `NonceSource` seam.

For now, one lock per account in this process over the node's pending transaction count: correct
for one replica sending in turn. The nonce manager (issue 6) replaces it behind the same seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from proxy.nodes.pool import NodePool
from signer.base import checksum


@dataclass
class NonceLease:
    """A nonce held for one transaction until the lease ends."""

    nonce: int


class NonceSource(Protocol):
    def lease(self, address: bytes) -> AbstractAsyncContextManager[NonceLease]: ...


class PendingCountNonces:
    def __init__(self, pool: NodePool) -> None:
        self._pool = pool
        self._locks: dict[bytes, asyncio.Lock] = {}

    @asynccontextmanager
    async def lease(self, address: bytes) -> AsyncIterator[NonceLease]:
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            count = await self._pool.call("eth_getTransactionCount", [checksum(address), "pending"])
            yield NonceLease(int(count, 16))
