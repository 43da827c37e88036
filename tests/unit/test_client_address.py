"""Who a failed authentication counts against: the peer, or behind trusted reverse proxies the
nearest X-Forwarded-For hop they vouch for; never an address the caller wrote itself."""

from __future__ import annotations

import pytest

from proxy.errors import SettingsError
from proxy.ratelimit import client_address, trusted_networks

INGRESS = trusted_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.9", [], "203.0.113.9"),  # no proxy in between
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # an untrusted peer's header is ignored
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # the ingress vouches for its client
        ("10.0.0.5", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),  # 1.2.3.4: the caller's own
        ("10.0.0.5", ["1.2.3.4", "198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # two trusted hops
        ("10.0.0.5", ["10.0.0.7"], "10.0.0.7"),  # only trusted hops: the last of them
        ("10.0.0.5", [], "10.0.0.5"),  # a trusted peer that forwards nothing
        ("fd00::1", ["2001:db8::2"], "2001:db8::2"),
        (None, ["198.51.100.1"], ""),
    ],
)
def test_the_client_address(remote: str | None, forwarded: list[str], expected: str) -> None:
    assert client_address(remote, forwarded, INGRESS) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.0.0.5", ["198.51.100.1"], ()) == "10.0.0.5"


def test_a_bad_entry_is_named() -> None:
    with pytest.raises(SettingsError, match=r"QSIGNER_TRUSTED_PROXIES.*nonsense"):
        trusted_networks(["10.0.0.0/8", "nonsense"])
