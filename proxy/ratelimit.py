"""Per-user rate limiting: a token bucket per caller in this replica (QSIGNER_RATE_LIMIT calls
per second sustained, QSIGNER_RATE_BURST at once; 0 turns it off). Every JSON-RPC call counts,
batch items included."""

from __future__ import annotations

import time
from collections import OrderedDict

from proxy.errors import RateLimited

MAX_CALLERS = 100_000


class RateLimiter:
    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, caller: str) -> None:
        """Take one call from `caller`'s bucket, or raise `RateLimited`."""
        if self.per_second <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_second)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            raise RateLimited(f"rate limited: at most {self.per_second:g} calls per second")
        self._buckets[caller] = (tokens - 1, now)
        self._buckets.move_to_end(caller)
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
