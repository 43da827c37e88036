"""Token buckets, and the two limits built on them: calls per user (QSIGNER_RATE_LIMIT /
QSIGNER_RATE_BURST; every JSON-RPC call counts, batch items included) and failed
authentications per client address (QSIGNER_AUTH_FAILURE_RATE / _BURST). 0 turns a limit off."""

from __future__ import annotations

import time
from collections import OrderedDict

from proxy.errors import RateLimited

MAX_KEYS = 100_000


class TokenBuckets:
    """A bucket per key: `per_second` tokens sustained, `burst` at once; bounded in keys (the
    least recently used goes first), kept in this replica."""

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = per_second
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def tokens(self, key: str, now: float) -> float:
        held, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, held + (now - last) * self.per_second)

    def store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)


class RateLimiter(TokenBuckets):
    """Calls per user."""

    def check(self, caller: str) -> None:
        """Take one call from `caller`'s bucket, or raise `RateLimited`."""
        if not self.enabled:
            return
        now = time.monotonic()
        tokens = self.tokens(caller, now)
        if tokens < 1:
            self.store(caller, tokens, now)
            raise RateLimited(f"rate limited: at most {self.per_second:g} calls per second")
        self.store(caller, tokens - 1, now)


class AuthFailureThrottle(TokenBuckets):
    """Failed authentications per client address: each failure draws from the address's bucket,
    and an address whose bucket is empty is refused before its credential reaches the database."""

    def check(self, address: str) -> None:
        """Refuse (`RateLimited`) an address that has used up its failures."""
        if self.enabled and address in self and self.tokens(address, time.monotonic()) < 1:
            raise RateLimited("too many failed authentications from this address")

    def failed(self, address: str) -> None:
        """Count one failed authentication against `address`."""
        if self.enabled:
            now = time.monotonic()
            self.store(address, self.tokens(address, now) - 1, now)
