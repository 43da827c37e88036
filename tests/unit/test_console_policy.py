"""The Content-Security-Policy of /admin/ (proxy/admin/serving.py): strict, and the page's own
WebSocket host only when the Host header is a plain host."""

from __future__ import annotations

import pytest

from proxy.admin.serving import console_files, content_security_policy

pytestmark = pytest.mark.unit


def test_the_policy_names_the_sockets_of_a_plain_host_only() -> None:
    policy = content_security_policy("signer.example:8545")
    assert "connect-src 'self' ws://signer.example:8545 wss://signer.example:8545;" in policy
    assert "frame-ancestors 'none'" in policy and "'unsafe-" not in policy
    assert "ws://[::1]:80 " in content_security_policy("[::1]:80")
    for hostile in ("a.example; script-src *", "a b", "", None, "a.example:80:90"):
        assert "connect-src 'self';" in content_security_policy(hostile), hostile


def test_the_package_holds_the_console() -> None:
    files = console_files()
    assert {"index.html", "app.js", "api.js", "live.js", "console.css"} <= set(files)
    assert files["app.js"][1] == "text/javascript" and files["index.html"][1] == "text/html"
