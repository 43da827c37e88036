"""mask_url: a node URL as shown in /readyz, /metrics, logs and errors keeps only its scheme,
host and port; user info, path, query and fragment (where keys live) become `***`."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.nodes.transport import mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io/***"),
        ("wss://node.example:8546/ws/v3/0123456789abcdef", "wss://node.example:8546/***"),
        ("https://user:pass@host:8545/path?x=1#frag", "https://***@host:8545/***"),
        ("https://node.example/v1?apikey=secret", "https://node.example/***"),
        ("https://node.example?apikey=secret", "https://node.example/***"),
        ("https://node.example#secret", "https://node.example/***"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://127.0.0.1:8545/", "http://127.0.0.1:8545"),
        ("http://[::1]:8545/key", "http://[::1]:8545/***"),
        ("user:secret@host:8545", "***@host:8545"),  # scheme forgotten
        ("host:8545/v3/secret", "host:8545/***"),
    ],
)
def test_only_scheme_host_and_port_are_shown(url: str, shown: str) -> None:
    assert mask_url(url) == shown


SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=8, max_size=40)


@given(secret=SECRET, where=st.sampled_from(["user", "password", "path", "query", "fragment"]))
def test_a_secret_anywhere_but_the_host_is_never_shown(secret: str, where: str) -> None:
    assume(secret not in "https://***@node.example:8545/***")
    url = {
        "user": f"https://{secret}:pw@node.example:8545/",
        "password": f"https://user:{secret}@node.example:8545",
        "path": f"https://node.example:8545/v3/{secret}",
        "query": f"https://node.example:8545/rpc?key={secret}",
        "fragment": f"https://node.example:8545#{secret}",
    }[where]
    shown = mask_url(url)
    assert secret not in shown
    assert shown.startswith("https://") and "node.example:8545" in shown
