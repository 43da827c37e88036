"""A local anvil chain (npm @foundry-rs/anvil, pinned in package.json) for `dev` and the tests,
and stopping a child process by its pid."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy.errors import ChainError

_BINARY = Path("node_modules") / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def anvil_binary() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / _BINARY).exists():
            return root / _BINARY
    raise ChainError("anvil is not installed: run `make dev` or `make test` (npm ci)")


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
        raise ChainError(f"{method}: {answer['error'].get('message')}")
    return answer["result"]


def stop(process: subprocess.Popen[Any], first: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Ask a child to stop (`first` signal), then kill it if it has not within `timeout`."""
    if process.poll() is None:
        process.send_signal(first)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def run_anvil(*, chain_id: int = 1337, quorum_like: bool = True, extra: tuple[str, ...] = (),
              log: Path | None = None) -> Iterator[str]:  # fmt: skip
    """anvil on a free loopback port; `quorum_like` = `--gas-price 0 --base-fee 0`, as on a
    usual Quorum network. Its output goes to `log` (else nowhere). Stopped with SIGTERM, on
    which anvil also writes its `--state` file."""
    port = free_port()
    args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(port),
            "--chain-id", str(chain_id)]  # fmt: skip
    if quorum_like:
        args += ["--gas-price", "0", "--base-fee", "0"]
    with contextlib.ExitStack() as files:
        output: Any = files.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        process = subprocess.Popen([*args, *extra], stdout=output, stderr=output)  # noqa: S603
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise ChainError(f"anvil exited with {process.returncode}"
                                     + (f"; see {log}" if log else ""))  # fmt: skip
                try:
                    rpc(url, "eth_chainId")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise ChainError("anvil did not answer within 30 s") from None
                    time.sleep(0.05)
            yield url
        finally:
            stop(process)
