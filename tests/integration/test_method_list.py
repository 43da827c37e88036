"""docs/rpc.md is the method list users read (issue 13, item 8): every method it names is walked
through the app, in front of a recording node (which passes calls on to anvil), and is answered
by the proxy, forwarded, or refused with -32601 without reaching the node, as the list says."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import forwarding, router
from proxy.handlers import signing
from tests.support.anvil import run_anvil
from tests.support.stack import CHAIN_ID, Stack, build_stack, in_process

DOC = Path(__file__).resolve().parents[2] / "docs" / "rpc.md"
_NAME = re.compile(r"`([a-z][A-Za-z0-9]*_(?:[A-Za-z0-9_]+|\*))`")
# Whatever QSIGNER_PASSTHROUGH says, these are never forwarded.
PASSTHROUGH = ("personal_*", "account_*", "quorumPermission_*", "quorumExtension_*",
               "eth_sendTransactionAsync", "eth_sendUnsignedTransaction", "eth_signTypedData_v1",
               "eth_sign")  # fmt: skip
# Example methods for the namespaces the list names.
NAMESPACE_EXAMPLES = {
    "net_*": ["net_version", "net_listening", "net_peerCount"],
    "web3_*": ["web3_clientVersion", "web3_sha3"],
    "personal_*": ["personal_unlockAccount", "personal_sendTransaction", "personal_newAccount",
                   "personal_signTransaction", "personal_importRawKey"],
    "account_*": ["account_signTransaction", "account_list"],
    # GoQuorum's permissioning and contract extension: the node signs and sends with `from`.
    "quorumPermission_*": ["quorumPermission_addOrg", "quorumPermission_approveOrg",
                           "quorumPermission_assignAccountRole"],
    "quorumExtension_*": ["quorumExtension_extendContract", "quorumExtension_approveExtension",
                          "quorumExtension_cancelExtension"],
}  # fmt: skip


def documented() -> dict[str, list[str]]:
    """Section title (## level) -> the method names and `ns_*` entries written in it."""
    sections: dict[str, list[str]] = {}
    title = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            sections[title] = []
        elif title:
            sections[title] += _NAME.findall(line)
    return sections


def section(start: str) -> list[str]:
    return next(names for title, names in documented().items() if title.startswith(start))


def test_the_document_is_the_code() -> None:
    assert set(section("Answered")) == set(router.LOCAL)
    forwarded = set(section("Forwarded"))
    assert forwarding.STANDARD_ETH | forwarding.QUORUM_ETH <= forwarded
    assert {"net_*", "web3_*"} <= forwarded
    never = set(section("Never forwarded"))
    assert forwarding.NODE_SIGNING <= never
    assert {f"{ns}_*" for ns in forwarding.NODE_SIGNING_NAMESPACES} <= never
    # GoQuorum's namespaces that send transactions signed with the node's own account.
    assert {"quorumPermission_*", "quorumExtension_*"} <= never
    assert not {"quorumPermission_*", "quorumExtension_*"} & set(section("Refused unless"))
    assert set(section("Reads of GoQuorum")) == forwarding.QUORUM_NAMESPACE_READS


def test_goquorum_namespace_reads_need_passthrough_and_writes_never_pass() -> None:
    for read in forwarding.QUORUM_NAMESPACE_READS:
        namespace = read.partition("_")[0] + "_*"
        assert not forwarding.is_forwarded(read, ())
        assert forwarding.is_forwarded(read, (namespace,))
        assert forwarding.is_forwarded(read, (read,))
    for write in ("quorumPermission_addOrg", "quorumExtension_extendContract"):
        assert not forwarding.is_forwarded(write, (write, write.partition("_")[0] + "_*"))
    for namespace in ("istanbul", "qbft", "raft"):
        assert not forwarding.is_forwarded(f"{namespace}_getValidators", ())
        assert forwarding.is_forwarded(f"{namespace}_getValidators", (f"{namespace}_*",))


@pytest.fixture
def anvil() -> Iterator[str]:
    with run_anvil(chain_id=CHAIN_ID) as url:
        yield url


@pytest.fixture
async def recording_node(anvil: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A node that records every method it is asked, then lets anvil answer."""
    seen: list[str] = []

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        decoded: Any = json.loads(body)
        for item in decoded if isinstance(decoded, list) else [decoded]:
            seen.append(item.get("method"))
        async with aiohttp.ClientSession() as session, session.post(
            anvil, data=body, headers={"Content-Type": "application/json"}) as answer:  # fmt: skip
            return web.Response(body=await answer.read(), status=answer.status,
                                content_type="application/json")  # fmt: skip

    app = web.Application()
    app.router.add_post("/", relay)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/")), seen
    finally:
        await server.close()


async def test_every_listed_method_is_answered_forwarded_or_refused_as_documented(
    anvil: str, recording_node: tuple[str, list[str]], database_url: str, softhsm_conf: Path,
    softhsm_module: str,
) -> None:  # fmt: skip
    node_url, seen = recording_node
    stack: Stack = await build_stack(anvil, database_url, softhsm_module, upstreams=(node_url,),
                                     passthrough=PASSTHROUGH)  # fmt: skip

    def expand(names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            if name.endswith("_*"):
                out += NAMESPACE_EXAMPLES.get(name, [name[:-1] + "anything"])
            else:
                out.append(name)
        return out

    async with in_process(stack.settings) as (url, session):
        auth = {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}

        async def call(method: str) -> dict[str, Any]:
            # Submissions need a signed transaction before they are passed on (an empty one here).
            params: list[Any] = ["0xc0"] if method in signing.SUBMISSIONS else []
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            async with session.post(url + "/", json=body, headers=auth) as response:
                answer: dict[str, Any] = await response.json()
                return answer

        def refused_by_proxy(answer: dict[str, Any]) -> bool:
            error = answer.get("error") or {}
            return error.get("code") == -32601 and "not available" in error.get("message", "")

        # `namespace_*` and `txpool_*` describe QSIGNER_PASSTHROUGH entries, not allowed here.
        forwarded = [m for m in expand(section("Forwarded"))
                     if not m.startswith(("txpool_", "namespace_"))]  # fmt: skip
        for method in forwarded:
            seen.clear()
            answer = await call(method)
            assert not refused_by_proxy(answer), (method, answer)
            assert method in seen or method in forwarding.CONSTANT_ANSWERS, (method, seen)

        for method in section("Answered"):
            seen.clear()
            answer = await call(method)
            assert not refused_by_proxy(answer), (method, answer)
            assert method not in seen, method

        # This stack's QSIGNER_PASSTHROUGH names both GoQuorum namespaces: their reads pass.
        for method in section("Reads of GoQuorum"):
            seen.clear()
            answer = await call(method)
            assert not refused_by_proxy(answer) and method in seen, (method, answer)

        refused = expand(section("Never forwarded")) + expand(section("Refused unless"))
        for method in refused:
            if method in router.LOCAL:
                continue  # answered by the proxy itself (checked above), never by a node
            seen.clear()
            answer = await call(method)
            assert refused_by_proxy(answer), (method, answer)
            assert method not in seen, method
