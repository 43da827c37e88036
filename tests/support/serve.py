"""`quorum-signer serve` started as a user starts it (a subprocess), stopped by its pid."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy.dev.chain import stop

BIN = Path(sys.executable).parent / "quorum-signer"


def wait_until_ready(url: str, process: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    """Poll /readyz until it answers 200; fail with `output()` if the process exits or is not
    ready within 60 s."""
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited {process.returncode}: {output()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"serve not ready within 60 s: {output()}")
        time.sleep(0.1)


@contextmanager
def serve(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """Start the proxy with `env` (QSIGNER_LISTEN=host:port); its stderr goes to `log_path`."""
    url = "http://" + env["QSIGNER_LISTEN"]
    with log_path.open("ab") as log:
        process = subprocess.Popen([str(BIN), "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_until_ready(url, process, log_path.read_text)
        yield url
    finally:
        stop(process, signal.SIGINT, timeout=20)
