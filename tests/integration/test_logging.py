"""Logging off the event loop (issue 13, item 15): `quorum-signer serve` whose stderr is a pipe
that nobody reads keeps answering; once the pipe is read, every line comes out, the last ones at
stop."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.anvil import free_port, run_anvil, stop
from tests.support.serve import BIN, wait_until_ready
from tests.support.stack import CHAIN_ID, build_stack, environment

REQUESTS = 1500  # ~350 KB of log lines: well past a pipe's 64 KB and any stream buffer


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID) as url:
        yield url


async def test_a_blocked_stderr_does_not_stall_requests(
    anvil: str, database_url: str, softhsm_conf: Path, softhsm_module: str
) -> None:
    stack = await build_stack(anvil, database_url, softhsm_module)
    listen = f"127.0.0.1:{free_port()}"
    url = f"http://{listen}"
    env = environment(stack, softhsm_conf, listen)
    # stderr is a pipe that this test does not read until the end: it fills and blocks.
    process = subprocess.Popen([str(BIN), "serve"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    assert process.stderr is not None
    output: list[bytes] = []
    try:
        await asyncio.to_thread(wait_until_ready, url, process, lambda: "(stderr not read)")
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
        auth = {"Authorization": f"Bearer {stack.jwt}"}
        # Every request must be answered within the client's timeout while nobody reads stderr.
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one() -> str:
                async with session.post(url, json=body, headers=auth) as response:
                    assert response.status == 200
                    return str((await response.json())["result"])

            for _ in range(REQUESTS // 50):
                assert await asyncio.gather(*(one() for _ in range(50))) == [hex(CHAIN_ID)] * 50
        reader = threading.Thread(target=lambda: output.append(process.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=30)
    finally:
        stop(process, signal.SIGINT, timeout=20)
        process.stderr.close()
    lines = [json.loads(line) for line in b"".join(output).splitlines()
             if line.startswith(b"{")]  # fmt: skip
    rpc_lines = [line for line in lines if line["message"] == "rpc"]
    assert len(rpc_lines) == REQUESTS  # none lost: flushed at stop
    assert all(line["method"] == "eth_chainId" and line["outcome"] == "ok" for line in rpc_lines)
