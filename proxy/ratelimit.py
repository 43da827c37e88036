"""Token buckets, and the two limits built on them: calls per user (QSIGNER_RATE_LIMIT /
QSIGNER_RATE_BURST; every JSON-RPC call counts, batch items included) and failed
authentications per client address (QSIGNER_AUTH_FAILURE_RATE / _BURST). 0 turns a limit off."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Iterable

from proxy.errors import RateLimited, SettingsError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def trusted_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """QSIGNER_TRUSTED_PROXIES: addresses or CIDR blocks of the reverse proxies in front of us."""
    try:
        return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)
    except ValueError as exc:
        raise SettingsError(f"QSIGNER_TRUSTED_PROXIES: {exc}") from None


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(remote: str | None, forwarded_for: Iterable[str],
                   trusted: tuple[Network, ...]) -> str:  # fmt: skip
    """Who is calling: the peer, unless it is a trusted reverse proxy; then the nearest hop of
    X-Forwarded-For that is not itself trusted (hops further left are the caller's to invent)."""
    address = remote or ""
    if not _trusted(address, trusted):
        return address
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
        address = hop
    return address


class AuthFailureThrottle(TokenBuckets):
    """Failed authentications per client address: each failure draws from the address's bucket,
    and an address whose bucket is empty is refused before its credential reaches the database.
    Behind trusted reverse proxies the address is the caller's (`client_address`)."""

    def __init__(self, per_second: float, burst: float, trusted: tuple[Network, ...] = ()
                 ) -> None:  # fmt: skip
        super().__init__(per_second, burst)
        self.trusted = trusted

    def address_of(self, remote: str | None, forwarded_for: Iterable[str]) -> str:
        return client_address(remote, forwarded_for, self.trusted)

    def check(self, address: str) -> None:
        """Refuse (`RateLimited`) an address that has used up its failures."""
        if self.enabled and address in self and self.tokens(address, time.monotonic()) < 1:
            raise RateLimited("too many failed authentications from this address")

    def failed(self, address: str) -> None:
        """Count one failed authentication against `address`."""
        if self.enabled:
            now = time.monotonic()
            self.store(address, self.tokens(address, now) - 1, now)
