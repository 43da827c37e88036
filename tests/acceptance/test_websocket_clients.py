"""The proxy's WebSocket as real clients use it, against `quorum-signer serve` started as a user
starts it, in front of anvil (`--block-time 1`): ethers v6's WebSocketProvider (a node script),
web3.py's WebSocketProvider, and two replicas closing a disabled user's sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from web3 import AsyncWeb3, WebSocketProvider

from tests.acceptance.conftest import Running
from tests.support.anvil import free_port, rpc, run_anvil
from tests.support.checks import assert_signed_by
from tests.support.contracts import deploy
from tests.support.faults import fronts_in_thread
from tests.support.forwarder import Forwarder
from tests.support.node_scripts import run_client
from tests.support.replicas import replicas
from tests.support.serve import BIN, serve
from tests.support.stack import CHAIN_ID, build_stack, environment
from tests.support.websocket import connect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ticking(database_url: str, softhsm_conf: Path, softhsm_module: str,
            tmp_path: Path) -> Iterator[tuple[Running, dict[str, str]]]:  # fmt: skip
    """The product in front of anvil producing a block a second; and its environment."""
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as anvil_url:
        stack = asyncio.run(build_stack(anvil_url, database_url, softhsm_module))
        log = tmp_path / "serve.log"
        env = environment(stack, softhsm_conf, f"127.0.0.1:{free_port()}")
        with serve(env, log) as url:
            yield Running(url, stack, log, True), env
        text = log.read_text()
        for secret in stack.secrets():
            assert secret not in text, "a secret reached the logs"


def _ws(url: str) -> str:
    return url.replace("http://", "ws://", 1)


def _checked_on_chain(product: Running, script: str) -> list[int]:
    """Run a client script over the proxy's WebSocket (API key in the URL) and check its report
    on chain: every transaction mined and signed by the account (low-s included), and the
    contract's event heard once per increment it names. Returns the block numbers it heard."""
    stack = product.stack
    env = {**os.environ, "PROXY_WS_URL": _ws(f"{product.url}/rpc/{stack.api_key}"),
           "ACCOUNT": stack.address,
           "ARTIFACT": str(ROOT / "contracts" / "build" / "Counter.json")}  # fmt: skip
    report = run_client(Path(__file__).with_name(script), env)
    assert report["chainId"] == str(CHAIN_ID)
    sender = bytes.fromhex(stack.address[2:])
    for tx_hash in [report["sent"], *report["increments"]]:
        assert rpc(stack.anvil_url, "eth_getTransactionReceipt", [tx_hash])["status"] == "0x1"
        raw = rpc(stack.anvil_url, "eth_getRawTransactionByHash", [tx_hash])
        assert_signed_by(bytes.fromhex(raw[2:]), sender, chain_id=CHAIN_ID)  # low-s included
    assert report["events"], "the contract's event never arrived"
    for event in report["events"]:
        assert event["by"] == stack.address and event["tx"] in report["increments"]
    assert len({event["tx"] for event in report["events"]}) == len(report["events"])  # once each
    return [int(number) for number in report["blocks"]]


def test_ethers_websocket_provider(ticking: tuple[Running, dict[str, str]]) -> None:
    """ethers v6's WebSocketProvider: getSigner(address).sendTransaction, provider.on("block"),
    contract.on for an event."""
    blocks = _checked_on_chain(ticking[0], "ethers_websocket.mjs")
    # Consecutive, none missed (a fourth may come in before the script reports, on a slow run).
    assert len(blocks) >= 3 and blocks == list(range(blocks[0], blocks[0] + len(blocks)))


def test_viem_websocket_transport(ticking: tuple[Running, dict[str, str]]) -> None:
    """viem's webSocket transport: a JSON-RPC account signing through the socket, and
    watchBlockNumber / watchContractEvent over eth_subscribe."""
    blocks = _checked_on_chain(ticking[0], "viem_websocket.mjs")
    assert len(blocks) >= 3 and blocks == list(range(blocks[0], blocks[0] + len(blocks)))


async def test_web3_websocket_provider(ticking: tuple[Running, dict[str, str]]) -> None:
    product, _ = ticking
    stack = product.stack
    headers = {"Authorization": f"Bearer {stack.jwt}", "X-Signer-Password": stack.password}
    provider = WebSocketProvider(_ws(product.url), websocket_kwargs={"additional_headers": headers})
    async with AsyncWeb3(provider) as w3:
        assert await w3.eth.chain_id == CHAIN_ID
        assert await w3.eth.accounts == [stack.address]
        # The organisation's transaction events, as docs/events.md shows them to web3.py users.
        events = await w3.eth.subscribe("qsigner_transactions", {"account": stack.address})  # type: ignore[arg-type]
        tx_hash = await w3.eth.send_transaction({"from": stack.address, "to": stack.address,
                                                 "value": 3})  # fmt: skip
        receipt = await w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        assert receipt["status"] == 1
        seen: list[str] = []
        async with asyncio.timeout(30):
            async for message in w3.socket.process_subscriptions():
                assert message["subscription"] == events
                if message["result"]["transactionHash"] == "0x" + tx_hash.hex():
                    seen.append(message["result"]["event"])
                if seen[-1:] == ["mined"]:
                    break
        assert seen == ["queued", "sent", "mined"]
        assert await w3.eth.unsubscribe(events) is True
        raw = rpc(stack.anvil_url, "eth_getRawTransactionByHash", ["0x" + tx_hash.hex()])
        assert_signed_by(bytes.fromhex(raw[2:]), bytes.fromhex(stack.address[2:]),
                         chain_id=CHAIN_ID)  # fmt: skip
        subscription = await w3.eth.subscribe("newHeads")
        numbers: list[int] = []
        async with asyncio.timeout(30):
            async for message in w3.socket.process_subscriptions():
                assert message["subscription"] == subscription
                numbers.append(message["result"]["number"])
                if len(numbers) == 3:
                    break
        assert numbers == list(range(numbers[0], numbers[0] + 3))
        assert await w3.eth.unsubscribe(subscription) is True


async def test_a_disabled_user_s_sockets_close_on_every_replica(
    database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path,
) -> None:  # fmt: skip
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as anvil_url:
        stack = await build_stack(anvil_url, database_url, softhsm_module)
        env = environment(stack, softhsm_conf, "127.0.0.1:0")
        env.pop("QSIGNER_LISTEN")
        with replicas(env, 2, tmp_path / "replicas") as group:
            async with aiohttp.ClientSession() as session, \
                    connect(session, f"{group[0].url}/rpc/{stack.api_key}") as keyed, \
                    connect(session, group[1].url, headers={
                        "Authorization": f"Bearer {stack.jwt}"}) as bearer:  # fmt: skip
                heads = await keyed.result("eth_subscribe", ["newHeads"])
                await keyed.notification(heads)
                assert await bearer.result("eth_chainId") == hex(CHAIN_ID)
                disabled = await asyncio.to_thread(_disable, env, "alice")
                for socket in (keyed, bearer):
                    code, reason = await socket.wait_closed()
                    assert code == 1008 and "disabled" in reason
                closed = time.monotonic()
                assert closed - disabled < 1.0, f"closed {closed - disabled:.3f} s after"
                # Stopping a replica (Ctrl-C) tells its sockets (1001) rather than wait for them.
                async with connect(session, group[0].url, headers={
                        "Authorization": f"Bearer {stack.viewer_jwt}"}) as viewer:  # fmt: skip
                    await viewer.notification(await viewer.result("eth_subscribe",
                                                                  ["newHeads"]))  # fmt: skip
                    await asyncio.to_thread(group.stop)
                    code, _ = await viewer.wait_closed()
                    assert code == 1001 and not group.forced


def _disable(env: dict[str, Any], user: str) -> float:
    """`quorum-signer user disable` as an operator runs it; the moment it returned."""
    result = subprocess.run([str(BIN), "user", "disable", "--user", user], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return time.monotonic()


def test_an_ethers_session_survives_node_kills(
    database_url: str, softhsm_conf: Path, softhsm_module: str, tmp_path: Path,
) -> None:  # fmt: skip
    """ethers' WebSocketProvider through `serve` in front of three nodes of one chain
    (forwarders in front of one anvil, `--block-time 1`). The node carrying its logs
    subscription is killed, then the one carrying its new heads (each time one node, as a read
    is retried once elsewhere): it sees no error, every block once, and every event once."""
    with run_anvil(chain_id=CHAIN_ID, extra=("--block-time", "1")) as anvil_url, \
            fronts_in_thread(*(Forwarder(anvil_url) for _ in range(3))) as nodes:  # fmt: skip
        stack = asyncio.run(build_stack(anvil_url, database_url, softhsm_module,
                                        upstreams=tuple(node.url for node in nodes)))  # fmt: skip
        counter = deploy(anvil_url, "Counter")
        env = environment(stack, softhsm_conf, f"127.0.0.1:{free_port()}")
        artifact = str(ROOT / "contracts" / "build" / "Counter.json")
        with serve(env, tmp_path / "serve.log") as url:
            script_env = {
                **os.environ,
                "PROXY_WS_URL": _ws(f"{url}/rpc/{stack.api_key}"),
                "ACCOUNT": stack.address,
                "COUNTER": counter,
                "ARTIFACT": artifact,
            }
            script = str(Path(__file__).with_name("ethers_failover.mjs"))
            session = subprocess.Popen(["node", script], cwd=ROOT, env=script_env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)  # fmt: skip
            killed: list[Forwarder] = []
            try:
                assert session.stdout is not None and session.stdin is not None
                for said, kind in (("READY", "logs"), ("AGAIN", "newHeads")):
                    assert session.stdout.readline().strip() == said
                    carrier = next(node for node in nodes if node not in killed
                                   and _subscribed(node, kind))  # fmt: skip
                    carrier.stop_from_thread()
                    killed.append(carrier)
                    session.stdin.write("KILLED\n")
                    session.stdin.flush()
                out, err = session.communicate(timeout=120)
            finally:
                if session.poll() is None:
                    session.kill()
                    session.wait()
            assert session.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == []
        blocks = report["blocks"]
        assert blocks == list(range(blocks[0], blocks[0] + len(blocks)))  # no gap, none twice
        heard = report["increments"][report["heardFirst"] :]
        assert report["events"] == heard  # each once, in order, through both kills
        assert len(heard) >= 7
    print(f"ethers session through 2 node kills: {len(blocks)} blocks "
          f"({blocks[0]}..{blocks[-1]}, no gap, none twice), {len(heard)} Incremented events "
          f"each once in order, errors {report['errors']}")  # fmt: skip


def _subscribed(node: Forwarder, kind: str) -> bool:
    """Whether a client subscription of `kind` went through `node` (each of the proxy's node
    sockets also subscribes to newHeads for itself: a newHeads feed makes a second one)."""
    kinds = [m["params"][0] for m in node.socket_messages if m.get("method") == "eth_subscribe"]
    return kinds.count(kind) >= (2 if kind == "newHeads" else 1)
