"""Where a transaction's nonce comes from: the `NonceSource` seam.

For now, one lock per account in this process over the node's pending transaction count: correct
for one replica sending in turn. The nonce manager (issue 6) replaces it behind the same seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from proxy.errors import RateLimited
from proxy.nodes.pool import NodePool
from signer.base import checksum


@dataclass
class NonceLease:
    """A nonce held for one transaction until the lease ends."""

    nonce: int


class NonceSource(Protocol):
    def lease(self, address: bytes) -> AbstractAsyncContextManager[NonceLease]: ...


@dataclass
class _AccountTurns:
    """One account's lock, and how many leases hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    leases: int = 0


class PendingCountNonces:
    def __init__(self, pool: NodePool, *, max_in_flight: int = 64) -> None:
        self._pool = pool
        # Leases of one account held or waiting at once (QSIGNER_MAX_IN_FLIGHT): beyond it a
        # caller is refused at once, rather than queueing without bound behind one account.
        self._max_in_flight = max_in_flight
        self._accounts: dict[bytes, _AccountTurns] = {}

    @asynccontextmanager
    async def lease(self, address: bytes) -> AsyncIterator[NonceLease]:
        turns = self._accounts.get(address)
        if turns is None:
            turns = self._accounts[address] = _AccountTurns()
        if turns.leases >= self._max_in_flight:
            raise RateLimited(
                f"account {checksum(address)} already has {self._max_in_flight} transactions "
                "waiting for a nonce (QSIGNER_MAX_IN_FLIGHT); try again shortly"
            )
        turns.leases += 1
        try:
            # Bounded in time as well: a caller that has given up must not have its transaction
            # signed and sent minutes later. The bound is the node requests' own deadline, which
            # callers already wait out for one transaction ahead.
            wait = self._pool.read_timeout
            try:
                async with asyncio.timeout(wait):
                    await turns.lock.acquire()
            except TimeoutError:
                raise RateLimited(
                    f"account {checksum(address)}: no nonce free within {wait:g} s "
                    "(QSIGNER_READ_TIMEOUT), its earlier transactions are still under way; "
                    "nothing was signed or sent, try again shortly"
                ) from None
            try:
                count = await self._pool.call(
                    "eth_getTransactionCount", [checksum(address), "pending"]
                )
                yield NonceLease(int(count, 16))
            finally:
                turns.lock.release()
        finally:
            turns.leases -= 1
            if turns.leases == 0:  # nobody holds or waits: forget the account
                del self._accounts[address]
