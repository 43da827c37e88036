"""A real anvil node (npm @foundry-rs/anvil, pinned in package.json) on a free loopback port."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANVIL = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(  # noqa: S310 (a loopback URL we built)
        url, body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


@contextmanager
def run_anvil(*, chain_id: int = 1337, quorum_like: bool = True, extra: tuple[str, ...] = ()
              ) -> Iterator[str]:  # fmt: skip
    """Start anvil; `quorum_like` = `--gas-price 0 --base-fee 0` as on a usual Quorum network."""
    if not ANVIL.exists():
        raise RuntimeError(f"anvil is not installed at {ANVIL}: run `make test` (npm ci)")
    port = free_port()
    args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id)]
    if quorum_like:
        args += ["--gas-price", "0", "--base-fee", "0"]
    process = subprocess.Popen(
        [*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"anvil exited: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                rpc(url, "eth_chainId")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("anvil did not answer within 30 s") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
