"""Failed authentications per client address: a token bucket each failure draws from
(QSIGNER_AUTH_FAILURE_RATE per second sustained, QSIGNER_AUTH_FAILURE_BURST at once; 0 turns it
off). An address whose bucket is empty is refused before its credential reaches the database."""

from __future__ import annotations

import time
from collections import OrderedDict

from proxy.errors import RateLimited

MAX_ADDRESSES = 100_000


class AuthFailureThrottle:
    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        tokens, last = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.per_second)

    def check(self, address: str) -> None:
        """Refuse (`RateLimited`) an address that has used up its failures."""
        if self.per_second > 0 and address in self._buckets:
            if self._tokens(address, time.monotonic()) < 1:
                raise RateLimited("too many failed authentications from this address")

    def failed(self, address: str) -> None:
        """Count one failed authentication against `address`."""
        if self.per_second <= 0:
            return
        now = time.monotonic()
        self._buckets[address] = (self._tokens(address, now) - 1, now)
        self._buckets.move_to_end(address)
        if len(self._buckets) > MAX_ADDRESSES:
            self._buckets.popitem(last=False)
