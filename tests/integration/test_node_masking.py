"""Node URLs are masked wherever `quorum-signer serve` shows them: the unauthenticated /readyz
and /metrics, and the logs. An Infura-style key in the path (`/v3/<key>`), a query key and user
info are all used to reach the node and never shown (issue 13, item 12)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from tests.support.anvil import free_port, run_anvil
from tests.support.forwarder import forwarder_in_thread
from tests.support.serve import serve
from tests.support.stack import CHAIN_ID, build_stack, environment

PATH_KEY = "0123456789abcdef0123456789abcdef"
QUERY_KEY = "querykey7f3a9c1e"
PASSWORD = "nodepassword5b2d"
DEAD_KEY = "deadnodekey9e8d7c6b"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback http
        text: str = response.read().decode()
        return text


def test_node_keys_never_show_in_readyz_metrics_or_logs(
    database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path
) -> None:
    dead_port = free_port()
    with run_anvil(chain_id=CHAIN_ID) as anvil, forwarder_in_thread(anvil) as gateway:
        live = f"http://node:{PASSWORD}@127.0.0.1:{gateway.port}/v3/{PATH_KEY}?apikey={QUERY_KEY}"
        dead = f"http://127.0.0.1:{dead_port}/v3/{DEAD_KEY}"
        stack = asyncio.run(
            build_stack(anvil, database_url, softhsm_module, upstreams=(live, dead))
        )
        log = tmp_path / "serve.log"
        env = environment(stack, softhsm_conf, f"127.0.0.1:{free_port()}")
        with serve(env, log) as url:
            readyz, metrics = fetch(url + "/readyz"), fetch(url + "/metrics")
        assert gateway.paths == {f"/v3/{PATH_KEY}"}  # the key was used to reach the node
    logged = log.read_text()
    for secret in (PATH_KEY, QUERY_KEY, PASSWORD, DEAD_KEY):
        assert secret not in readyz and secret not in metrics and secret not in logged
    assert f'"url": "http://***@127.0.0.1:{gateway.port}/***"' in readyz
    assert f'"url": "http://127.0.0.1:{dead_port}/***"' in readyz
    assert f'qsigner_node_up{{node="http://***@127.0.0.1:{gateway.port}/***"}} 1.0' in metrics
    assert f"127.0.0.1:{dead_port}/***" in logged and "out of rotation" in logged
