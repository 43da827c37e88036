"""Nonce leases against a real anvil: one account's leases are handed out in turn, and at most
QSIGNER_MAX_IN_FLIGHT (64) of them hold or wait at once; beyond that a caller is refused at once
with -32005 (HTTP 429), other accounts unaffected (issue 13, item 10); nor does one wait longer
than QSIGNER_READ_TIMEOUT for its turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.errors import RateLimited
from proxy.nodes.pool import NodePool
from proxy.nonces import PendingCountNonces
from proxy.settings import Settings
from tests.support.anvil import run_anvil

BUSY = bytes.fromhex("f39fd6e51aad88f6f4ce6ab8827279cfffb92266")
OTHER = bytes.fromhex("70997970c51812dc3a010c7d01b50e44ad4a096f")


async def test_waiting_for_one_accounts_nonce_is_bounded() -> None:
    bound = Settings().max_in_flight
    assert bound == 64
    with run_anvil() as url:
        async with aiohttp.ClientSession() as session:
            pool = NodePool([url], session, probe_interval=3600)
            await pool.start()
            try:
                nonces = PendingCountNonces(pool)
                release = asyncio.Event()
                granted: list[int] = []

                async def hold() -> None:
                    async with nonces.lease(BUSY) as lease:
                        granted.append(lease.nonce)
                        await release.wait()

                holders = [asyncio.create_task(hold()) for _ in range(bound)]
                while not granted:  # the first holds the lease, the others wait for it
                    await asyncio.sleep(0.01)
                with pytest.raises(RateLimited) as refused:
                    async with asyncio.timeout(1), nonces.lease(BUSY):
                        pass
                assert (refused.value.code, refused.value.http_status) == (-32005, 429)
                assert "QSIGNER_MAX_IN_FLIGHT" in refused.value.message
                assert "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" in refused.value.message
                async with asyncio.timeout(1), nonces.lease(OTHER) as other:  # unaffected
                    assert other.nonce == 0
                release.set()
                await asyncio.gather(*holders)
                assert granted == [0] * bound  # each in turn (nothing was sent)
                async with asyncio.timeout(1), nonces.lease(BUSY):  # room again
                    pass
            finally:
                await pool.close()


@contextlib.asynccontextmanager
async def anvil_pool(**options: Any) -> AsyncIterator[NodePool]:
    with run_anvil() as url:
        async with aiohttp.ClientSession() as session:
            pool = NodePool([url], session, probe_interval=3600, **options)
            await pool.start()
            try:
                yield pool
            finally:
                await pool.close()


class Holders:
    """Tasks that each take a lease of BUSY and hold it until `release` is set."""

    def __init__(self, nonces: PendingCountNonces) -> None:
        self.nonces = nonces
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # one of them holds the lease

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        async with self.nonces.lease(BUSY):
            self.held.set()
            await self.release.wait()


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async with anvil_pool() as pool:
        holders = Holders(PendingCountNonces(pool, max_in_flight=2))
        holder = holders.start()
        await holders.held.wait()
        with pytest.raises(TimeoutError):  # waits behind the holder, then gives up
            async with asyncio.timeout(0.1), holders.nonces.lease(BUSY):
                pass
        waiter = holders.start()  # takes the second place, not a third
        await asyncio.sleep(0.05)
        with pytest.raises(RateLimited):
            async with holders.nonces.lease(BUSY):
                pass
        holders.release.set()
        await asyncio.gather(holder, waiter)


async def test_waiting_for_a_nonce_is_bounded_in_time_and_nothing_goes_ahead() -> None:
    # The wait is bounded by QSIGNER_READ_TIMEOUT, the deadline of the node requests it waits
    # behind: past it the caller is refused, rather than signed and sent after giving up.
    async with anvil_pool(read_timeout=0.3) as pool:
        holders = Holders(PendingCountNonces(pool, max_in_flight=2))
        holder = holders.start()
        await holders.held.wait()
        went_ahead = False
        with pytest.raises(RateLimited) as refused:
            async with asyncio.timeout(3), holders.nonces.lease(BUSY):
                went_ahead = True  # where the transaction would be signed and sent
        assert not went_ahead
        assert (refused.value.code, refused.value.http_status) == (-32005, 429)
        assert "QSIGNER_READ_TIMEOUT" in refused.value.message and "0.3 s" in refused.value.message
        assert "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" in refused.value.message
        waiter = holders.start()  # the refused caller's place is free again
        await asyncio.sleep(0.05)
        assert not waiter.done()
        holders.release.set()
        await asyncio.gather(holder, waiter)
        async with asyncio.timeout(1), holders.nonces.lease(BUSY) as lease:  # the lock is free
            assert lease.nonce == 0
