"""Request bodies read whole, however they arrive (issue 13, item 2): a raw socket sends a large
body in small pieces with pauses, and a chunked body over the limit, to the real served app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.app import MAX_BODY
from tests.support.anvil import run_anvil
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID) as url:
        yield url


@pytest.fixture
async def served(anvil: str, database_url: str, softhsm_conf: Path,
                 softhsm_module: str) -> AsyncIterator[tuple[str, int, Stack]]:  # fmt: skip
    stack = await build_stack(anvil, database_url, softhsm_module)
    async with in_process(stack.settings) as (url, _session):
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        yield parts.hostname, parts.port, stack


async def _exchange(host: str, port: int, head: bytes,
                    pieces: list[bytes], pause: float) -> tuple[int, Any]:  # fmt: skip
    """Send the head, then each piece with a pause before it; return status and JSON body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        for piece in pieces:
            await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), json.loads(body)
    finally:
        writer.close()


def _head(host: str, port: int, stack: Stack, framing: str) -> bytes:
    return (f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {stack.jwt}\r\n{framing}\r\n"
            "Connection: close\r\n\r\n").encode()  # fmt: skip


async def test_a_large_body_in_small_pieces_is_read_whole(served: tuple[str, int, Stack]) -> None:
    host, port, stack = served
    # ~600 KB of call data in a batch: the kind of body a deploy script sends.
    call_data = "0x" + "ab" * 300_000
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_call",
         "params": [{"to": "0x000000000000000000000000000000000000dEaD", "data": call_data},
                    "latest"]},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber"},
    ]  # fmt: skip
    body = json.dumps(batch).encode()
    assert 600_000 < len(body) < MAX_BODY
    pieces = [body[i : i + 16_384] for i in range(0, len(body), 16_384)]
    head = _head(host, port, stack, f"Content-Length: {len(body)}")
    status, answers = await _exchange(host, port, head, pieces, pause=0.01)
    assert status == 200, answers
    by_id = {a["id"]: a for a in answers}
    assert by_id[1]["result"] == hex(CHAIN_ID)
    assert by_id[2]["result"] == "0x"  # no code at that address: the call ran on the whole body
    assert by_id[3]["result"].startswith("0x")

    # The same body chunked, in pieces with pauses, is read whole too.
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    head = _head(host, port, stack, "Transfer-Encoding: chunked")
    status, answers = await _exchange(host, port, head, chunked, pause=0.005)
    assert status == 200 and len(answers) == 3, answers


async def test_a_chunked_body_over_the_limit_gets_413(served: tuple[str, int, Stack]) -> None:
    host, port, stack = served
    body = b"[" + b"1," * (1024 * 1024) + b"1]"  # 2 MB, valid JSON, never announced in advance
    chunk = 64 * 1024
    chunked = [b"%x\r\n%s\r\n" % (len(body[i : i + chunk]), body[i : i + chunk])
               for i in range(0, len(body), chunk)] + [b"0\r\n\r\n"]  # fmt: skip
    status, answer = await _exchange(host, port, _head(host, port, stack, "Transfer-Encoding: "
                                                       "chunked"), chunked, pause=0)  # fmt: skip
    assert status == 413 and answer["error"]["code"] == -32600, answer
