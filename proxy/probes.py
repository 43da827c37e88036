"""/readyz's look at the HSM: on a thread of its own, so that it never waits behind signing or
unlocking work, with a timeout, one look at a time and the last answer reused for a moment."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from signer.pkcs11 import Hsm


class HsmProbe:
    """Whether the PKCS#11 module answers; False after `timeout` seconds without an answer."""

    def __init__(self, hsm: Hsm, timeout: float = 2.0, reuse_for: float = 1.0) -> None:
        self.hsm = hsm
        self.timeout = timeout
        self.reuse_for = reuse_for
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="readyz-hsm")
        self._look: asyncio.Future[bool] | None = None
        self._last: tuple[float, bool] | None = None

    async def ok(self) -> bool:
        if self._last is not None and time.monotonic() - self._last[0] < self.reuse_for:
            return self._last[1]
        # A stuck module keeps one look pending: later probes wait for the same one rather
        # than queueing more behind it on the single thread.
        if self._look is None or self._look.done():
            self._look = asyncio.ensure_future(self._describe())
        try:
            return await asyncio.wait_for(asyncio.shield(self._look), self.timeout)
        except TimeoutError:
            return False

    async def _describe(self) -> bool:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.hsm.describe)
            answer = True
        except Exception:
            answer = False
        self._last = (time.monotonic(), answer)
        return answer

    async def close(self) -> None:
        """Stop the probe thread; a look still under way gets up to `timeout` to end first, so
        that the module is not finalised under it (a stuck one is left behind)."""
        if self._look is not None and not self._look.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._look), self.timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
