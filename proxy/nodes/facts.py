"""What filling a transaction reads from the nodes that changes at most once a block: the latest
block's base fee and gas limit, the gas price, the priority fee, and whether an address holds
code. Each is read at most once per `max_age` seconds, one read serving every request waiting for
it, so that a busy account's transactions cost the nodes one send each, not four calls more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from proxy.errors import NodeError
from proxy.nodes.pool import NodePool
from signer.base import checksum

T = TypeVar("T")


class _Fresh(Generic[T]):
    """A value read again once older than `max_age`; concurrent readers share one read, and a
    failed read is not kept."""

    def __init__(self, read: Callable[[], Awaitable[T]], max_age: float) -> None:
        self._read = read
        self._max_age = max_age
        self._value: T | None = None
        self._at = float("-inf")
        self._reading: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._value is not None and time.monotonic() - self._at < self._max_age:
            return self._value
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._reading)

    async def _refresh(self) -> T:
        started = time.monotonic()
        try:
            value = await self._read()
        finally:
            self._reading = None
        self._value, self._at = value, started
        return value


class ChainFacts:
    def __init__(self, pool: NodePool, max_age: float = 0.5, max_addresses: int = 10_000) -> None:
        self._pool = pool
        self._max_age = max_age
        self._max_addresses = max_addresses
        self._block = _Fresh(self._read_block, max_age)
        self._gas_price = _Fresh(self._read_gas_price, max_age)
        self._tip = _Fresh(self._read_tip, max_age)
        self._code: dict[bytes, _Fresh[bool]] = {}

    async def block(self) -> tuple[int | None, int]:
        """The latest block's (base fee or None, gas limit)."""
        return await self._block.get()

    async def gas_price(self) -> int:
        return await self._gas_price.get()

    async def tip(self) -> int:
        """eth_maxPriorityFeePerGas, or 0 where the node has none."""
        return await self._tip.get()

    async def has_code(self, address: bytes) -> bool:
        cell = self._code.get(address)
        if cell is None:
            if len(self._code) >= self._max_addresses:
                self._code.clear()
            cell = self._code[address] = _Fresh(lambda: self._read_code(address), self._max_age)
        return await cell.get()

    async def _read_block(self) -> tuple[int | None, int]:
        block = await self._pool.call("eth_getBlockByNumber", ["latest", False])
        base_fee = block.get("baseFeePerGas")
        return (int(base_fee, 16) if base_fee is not None else None), int(block["gasLimit"], 16)

    async def _read_gas_price(self) -> int:
        return int(await self._pool.call("eth_gasPrice"), 16)

    async def _read_tip(self) -> int:
        try:
            return int(await self._pool.call("eth_maxPriorityFeePerGas"), 16)
        except NodeError:
            return 0

    async def _read_code(self, address: bytes) -> bool:
        code = await self._pool.call("eth_getCode", [checksum(address), "latest"])
        return isinstance(code, str) and code not in ("0x", "0x0", "")
