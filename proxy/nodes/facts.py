"""What filling a transaction reads from the nodes that changes at most once a block: the latest
block's base fee and gas limit, the gas price, the priority fee, and whether an address holds
code. Each is read at most once per `max_age` seconds, one read serving every request waiting for
it, so that a busy account's transactions cost the nodes one send each, not four calls more.

An account's balance is never reused: every request gets a read that started after it arrived,
but requests arriving while one read is under way share the next one."""

from __future__ import annotations

import asyncio
import functools
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

    def peek(self) -> T | None:
        """The value if it is fresh, without waiting (None otherwise)."""
        if self._value is not None and time.monotonic() - self._at < self._max_age:
            return self._value
        return None

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


class _Shared(Generic[T]):
    """A read that is never reused once answered; a caller arriving while one is under way
    waits for the next one, which starts when that one ends and serves every caller that
    arrived meanwhile. So each caller's answer was read after the caller arrived, and a burst
    of callers costs two reads, not one each."""

    def __init__(self, read: Callable[[], Awaitable[T]], idle: Callable[[], None]) -> None:
        self._read = read
        self._idle = idle  # called when no read is under way or waited for
        self._running: asyncio.Future[T] | None = None
        self._next: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._running is None:
            self._running = self._start()
            return await asyncio.shield(self._running)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._next)

    def _start(self) -> asyncio.Future[T]:
        running = asyncio.ensure_future(self._read())
        running.add_done_callback(self._done)
        return running

    def _done(self, finished: asyncio.Future[T]) -> None:
        if not finished.cancelled():
            finished.exception()  # retrieved: a failure with no caller left is not an error
        waiting, self._next = self._next, None
        if waiting is None or finished.cancelled():  # cancelled: the loop is shutting down
            self._running = None
            if waiting is not None:
                waiting.cancel()
            self._idle()
            return
        self._running = self._start()
        self._running.add_done_callback(functools.partial(_copy_outcome, waiting))


def _copy_outcome(target: asyncio.Future[T], source: asyncio.Future[T]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
    if not target.cancelled():
        target.exception()  # every waiter may be gone


class ChainFacts:
    def __init__(self, pool: NodePool, max_age: float = 0.5, max_addresses: int = 10_000) -> None:
        self._pool = pool
        self._max_age = max_age
        self._max_addresses = max_addresses
        self._block = _Fresh(self._read_block, max_age)
        self._gas_price = _Fresh(self._read_gas_price, max_age)
        self._tip = _Fresh(self._read_tip, max_age)
        self._code: dict[bytes, _Fresh[bool]] = {}
        self._balances: dict[bytes, _Shared[int]] = {}

    async def block(self) -> tuple[int | None, int]:
        """The latest block's (base fee or None, gas limit)."""
        return await self._block.get()

    async def gas_price(self) -> int:
        return await self._gas_price.get()

    async def tip(self) -> int:
        """eth_maxPriorityFeePerGas, or 0 where the node has none."""
        return await self._tip.get()

    def fresh_block(self) -> tuple[int | None, int] | None:
        """`block()` when known and fresh, without waiting; None otherwise."""
        return self._block.peek()

    def fresh_gas_price(self) -> int | None:
        return self._gas_price.peek()

    def fresh_tip(self) -> int | None:
        return self._tip.peek()

    def fresh_has_code(self, address: bytes) -> bool | None:
        """`has_code(address)` when known and fresh, without waiting; None otherwise."""
        cell = self._code.get(address)
        return None if cell is None else cell.peek()

    async def balance(self, address: bytes) -> int:
        """The balance of `address` at the latest block, read after this call began (shared
        with the callers that arrived during the same read)."""
        cell = self._balances.get(address)
        if cell is None:
            cell = self._balances[address] = _Shared(
                functools.partial(self._read_balance, address),
                functools.partial(self._forget_balance, address))  # fmt: skip
        return await cell.get()

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

    def _forget_balance(self, address: bytes) -> None:
        self._balances.pop(address, None)

    async def _read_balance(self, address: bytes) -> int:
        return int(await self._pool.call("eth_getBalance", ["0x" + address.hex(), "latest"]), 16)

    async def _read_code(self, address: bytes) -> bool:
        code = await self._pool.call("eth_getCode", [checksum(address), "latest"])
        return isinstance(code, str) and code not in ("0x", "0x0", "")
