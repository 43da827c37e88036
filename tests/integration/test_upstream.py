"""The node pool against real anvil nodes: results and node errors passed on, startup refusals
naming the setting to fix, credentials never shown, failover, lag and chain checks, slow reads
and the per-node cap, and eth_sendRawTransaction retried only where that is safe.

Where a node must misbehave in a way anvil cannot (answer 502, go quiet after a send, answer one
method slowly, vanish and come back on the same port), a small forwarder stands in front of a
real anvil (tests/support/forwarder.py); the answers are still anvil's own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from typing import Any

import pytest
from eth_account import Account

from proxy.errors import (
    NodeAnswerTooLarge,
    NodeBusy,
    NodeError,
    NodeTimeout,
    NoNodeAvailable,
    SendOutcomeUnknown,
    SettingsError,
)
from proxy.nodes.pool import NodePool
from proxy.nodes.transport import NodeTransport, mask_url
from tests.support.anvil import free_port, rpc, run_anvil
from tests.support.forwarder import forwarder

DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
RECIPIENT = "0x000000000000000000000000000000000000dEaD"
# Init code that reverts with Error("abc").
REVERTING = (
    "0x6080604052348015600f57600080fd5b5060405162461bcd60e51b8152602060048201526003602482015262"
    "61626360e81b604482015260640160405180910390fd"
)
NO_PROBES = 3600.0  # health then changes only through failed requests (passive detection)


@contextlib.asynccontextmanager
async def node_pool(urls: list[str], **options: Any) -> AsyncIterator[NodePool]:
    pool = NodePool(urls, **{"probe_interval": 0.1, **options})
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def start_error(urls: list[str], **options: Any) -> str:
    pool = NodePool(urls, **options)
    with pytest.raises(SettingsError) as raised:
        await pool.start()
    await pool.close()
    message = str(raised.value)
    assert "\n" not in message
    return message


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def ok_by_url(pool: NodePool) -> dict[str, bool]:
    return {status.url: status.ok for status in pool.status()}


def signed_transfer(nonce: int, value: int = 1) -> tuple[str, str]:
    signed = Account.sign_transaction(
        {"nonce": nonce, "gasPrice": 0, "gas": 21000, "to": RECIPIENT, "value": value,
         "chainId": 1337},
        DEV_KEY,
    )  # fmt: skip
    return "0x" + bytes(signed.raw_transaction).hex(), "0x" + bytes(signed.hash).hex()


async def receipt(pool: NodePool, tx_hash: str) -> dict[str, Any]:
    for _ in range(200):
        found = await pool.call("eth_getTransactionReceipt", [tx_hash])
        if found:
            return dict(found)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{tx_hash} not mined")


# --- reads and node errors -------------------------------------------------------------------


async def test_reads_return_the_nodes_results() -> None:
    with run_anvil() as url:
        rpc(url, "anvil_mine", ["0x3"])
        async with node_pool([url]) as pool:
            assert pool.chain_id == 1337
            assert await pool.call("eth_chainId") == "0x539"
            assert await pool.call("eth_blockNumber") == "0x3"
            assert int(await pool.call("eth_getBalance", [DEV_ADDRESS, "latest"]), 16) > 0
            [status] = pool.status()
            assert (status.url, status.ok, status.block, status.chain_id) == (url, True, 3, 1337)
            assert pool.healthy_count() == 1


async def test_node_errors_come_back_unchanged_and_leave_the_node_in_rotation() -> None:
    with run_anvil() as url:
        async with node_pool([url]) as pool:
            with pytest.raises(NodeError) as unknown:
                await pool.call("foo_bar", [])
            assert (unknown.value.code, unknown.value.message) == (-32601, "Method not found")
            with pytest.raises(NodeError) as reverted:
                await pool.call("eth_call", [{"data": REVERTING}, "latest"])
            assert (reverted.value.code, reverted.value.message) == (3, "execution reverted: abc")
            assert str(reverted.value.data).startswith("0x08c379a0")  # Error(string)
            assert pool.healthy_count() == 1  # a node's answer, even an error, is not a failure


async def test_requests_carry_json_the_pools_own_ids_and_the_callers_headers() -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as front,
            node_pool([front.url], probe_interval=NO_PROBES) as pool,
        ):
            front.seen.clear()
            await pool.call("eth_chainId")
            await pool.call("eth_getBalance", [DEV_ADDRESS, "latest"], headers={"Quorum-PSI": "A"})
            (headers1, first), (headers2, second) = front.seen
            assert "params" not in first  # as cast sends eth_chainId: no params at all
            assert second["params"] == [DEV_ADDRESS, "latest"]
            assert headers1["Content-Type"] == headers2["Content-Type"] == "application/json"
            assert headers2["Quorum-PSI"] == "A" and "Quorum-PSI" not in headers1
            assert isinstance(first["id"], int) and first["id"] != second["id"]


# --- startup --------------------------------------------------------------------------------


async def test_start_refuses_when_no_node_answers() -> None:
    message = await start_error(
        [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    )
    assert "QSIGNER_UPSTREAMS" in message and "connection refused" in message


async def test_start_refuses_a_chain_other_than_the_expected_one() -> None:
    with run_anvil(chain_id=1337) as url:
        message = await start_error([url], expected_chain_id=1)
        assert "QSIGNER_CHAIN_ID" in message and "1337" in message
        async with node_pool([url], expected_chain_id=1337) as pool:
            assert pool.chain_id == 1337


async def test_start_refuses_nodes_on_different_chains() -> None:
    with run_anvil(chain_id=1337) as first, run_anvil(chain_id=31337) as second:
        message = await start_error([first, second])
        assert "QSIGNER_UPSTREAMS" in message and "1337" in message and "31337" in message


async def test_credentials_in_a_node_url_are_used_but_never_shown() -> None:
    assert mask_url("https://user:pass@host/path") == "https://***@host/***"
    with run_anvil() as url, ExitStack():
        async with forwarder(url) as front:
            with_secret = front.url.replace("http://", "http://user:secret@")
            async with node_pool([with_secret]) as pool:
                assert await pool.call("eth_chainId") == "0x539"
                assert "secret" not in repr(pool.status())
                assert pool.status()[0].url == f"http://***@127.0.0.1:{front.port}"
            expected = "Basic " + base64.b64encode(b"user:secret").decode()
            assert all(headers["Authorization"] == expected for headers, _ in front.seen)
            wrong_chain = await start_error([with_secret], expected_chain_id=1)
            assert "QSIGNER_CHAIN_ID" in wrong_chain and "secret" not in wrong_chain
        dead = f"http://user:secret@127.0.0.1:{free_port()}"
        nobody = await start_error([dead])
        assert "QSIGNER_UPSTREAMS" in nobody and "secret" not in nobody and "***@" in nobody
        with run_anvil(chain_id=31337) as other:
            other_secret = other.replace("http://", "http://user:secret@")
            disagree = await start_error([url.replace("http://", "http://u:secret@"), other_secret])
            assert "QSIGNER_UPSTREAMS" in disagree and "secret" not in disagree


async def test_keys_in_node_url_paths_are_used_but_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    dead = f"http://127.0.0.1:{free_port()}/v3/KEYOFTHEDEADNODE?apikey=QUERYKEY"
    with run_anvil() as url:
        async with forwarder(url) as front:
            keyed = [f"{front.url}/v3/KEYOFNODEONE", f"{front.url}/v3/KEYOFNODETWO"]
            async with node_pool([*keyed, dead]) as pool:
                answers = await asyncio.gather(*(pool.call("eth_chainId") for _ in range(4)))
                assert answers == ["0x539"] * 4
                assert front.paths == {"/v3/KEYOFNODEONE", "/v3/KEYOFNODETWO"}  # used as given
                shown = [status.url for status in pool.status()]
                # One gateway, two keys: told apart by their place in QSIGNER_UPSTREAMS.
                assert shown == [
                    f"{front.url}/*** (node 1)",
                    f"{front.url}/*** (node 2)",
                    dead.split("/v3")[0] + "/***",
                ]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("proxy"))
    assert "out of rotation" in logged and "in rotation" in logged
    assert "KEY" not in logged and "KEY" not in repr(shown)


# --- failover, lag, chain -------------------------------------------------------------------


async def test_a_dead_upstream_does_not_fail_reads() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_anvil() as url:
        async with node_pool([dead, url]) as pool:
            answers = await asyncio.gather(*(pool.call("eth_blockNumber") for _ in range(50)))
            assert answers == ["0x0"] * 50
            assert ok_by_url(pool) == {dead: False, url: True}
            assert pool.status()[0].block is None


@pytest.mark.parametrize("failure", ["refused", "bad_gateway"])
async def test_a_node_failing_between_probes_is_retried_elsewhere_and_taken_out(
    failure: str,
) -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as front,
            node_pool([front.url, url], probe_interval=NO_PROBES, read_timeout=0.5) as pool,
        ):
            if failure == "refused":
                await front.stop()
            else:
                front.mode = failure
            answers = await asyncio.gather(*(pool.call("eth_chainId") for _ in range(20)))
            assert answers == ["0x539"] * 20
            # No probe ran: the failed request itself took the node out.
            assert ok_by_url(pool) == {front.url: False, url: True}


async def test_a_node_that_goes_quiet_is_taken_out_by_its_probe() -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as front,
            node_pool([front.url, url], read_timeout=5.0, probe_timeout=0.3) as pool,
        ):
            front.mode = "hang"  # every request, the probes' too
            await eventually(lambda: ok_by_url(pool) == {front.url: False, url: True})
            answers = await asyncio.gather(*(pool.call("eth_chainId") for _ in range(10)))
            assert answers == ["0x539"] * 10
            front.seen.clear()
            await asyncio.sleep(0.3)
            assert "eth_chainId" in front.methods()  # still probed, to be put back once it answers


# --- slow reads and the per-node cap (issue 13, item 7) ---------------------------------------


async def test_a_slow_read_fails_for_its_caller_alone_and_every_node_stays() -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as first,
            forwarder(url) as second,
            node_pool([first.url, second.url], read_timeout=0.3) as pool,
        ):
            first.held = second.held = {"eth_getLogs"}  # both nodes slow for this one method
            with pytest.raises(NodeTimeout) as slow:
                await pool.call("eth_getLogs", [{"fromBlock": "0x0"}])
            assert (slow.value.code, slow.value.http_status) == (-32603, 200)
            assert "eth_getLogs" in slow.value.message and "0.3 s" in slow.value.message
            assert "QSIGNER_READ_TIMEOUT" in slow.value.message
            assert (first.methods() + second.methods()).count("eth_getLogs") == 1  # not retried
            assert ok_by_url(pool) == {first.url: True, second.url: True}

            # Slow reads under way: every other call is served, and no node is taken out.
            slow_reads = [
                asyncio.create_task(pool.call("eth_getLogs", [{"fromBlock": "0x0"}]))
                for _ in range(4)
            ]
            await eventually(lambda: first.holding + second.holding >= 4)
            answers = await asyncio.gather(*(pool.call("eth_blockNumber") for _ in range(20)))
            assert answers == ["0x0"] * 20
            for outcome in await asyncio.gather(*slow_reads, return_exceptions=True):
                assert isinstance(outcome, NodeTimeout)
            assert ok_by_url(pool) == {first.url: True, second.url: True}
            assert pool.healthy_count() == 2


async def test_connections_to_one_node_are_capped_and_its_probes_still_pass() -> None:
    with run_anvil() as url:
        async with forwarder(url) as slow, node_pool([slow.url], node_connections=2) as pool:
            slow.held = {"eth_getLogs"}
            reads = [
                asyncio.create_task(pool.call("eth_getLogs", [{"fromBlock": "0x0"}]))
                for _ in range(6)
            ]
            await eventually(lambda: slow.holding == 2)
            probes_before = slow.methods().count("eth_blockNumber")
            await eventually(lambda: slow.methods().count("eth_blockNumber") > probes_before + 2)
            assert slow.most_held == 2  # the other four wait for one of the two connections
            assert ok_by_url(pool) == {slow.url: True}  # its probes pass the cap
            slow.release()
            assert await asyncio.gather(*reads) == [[]] * 6
            assert slow.methods().count("eth_getLogs") == 6


async def test_a_node_stopped_mid_run_fails_no_read() -> None:
    with run_anvil() as first, ExitStack() as stopping:
        second = stopping.enter_context(run_anvil())
        rpc(second, "anvil_mine", ["0x1"])  # tells its answers apart, well within the lag limit
        async with node_pool([first, second]) as pool:
            served: list[str] = []

            async def read_for(seconds: float) -> None:
                loop = asyncio.get_running_loop()
                until = loop.time() + seconds
                while loop.time() < until:
                    served.extend(
                        await asyncio.gather(*(pool.call("eth_blockNumber") for _ in range(8)))
                    )

            reads = asyncio.create_task(read_for(1.0))
            await asyncio.sleep(0.3)
            assert set(served) == {"0x0", "0x1"}  # both nodes were serving
            await asyncio.to_thread(stopping.close)  # anvil stopped while reads are in flight
            await reads  # not one read failed
            assert served[-8:] == ["0x0"] * 8
            await eventually(lambda: ok_by_url(pool) == {first: True, second: False})
            assert pool.healthy_count() == 1


async def test_an_unreachable_node_comes_back_when_it_answers_again() -> None:
    with run_anvil() as url:
        async with forwarder(url) as front, node_pool([front.url, url]) as pool:
            await front.stop()
            await eventually(lambda: ok_by_url(pool)[front.url] is False)
            await front.start()  # the same URL answers again
            await eventually(lambda: ok_by_url(pool)[front.url] is True)
            assert pool.healthy_count() == 2


async def test_a_lagging_node_leaves_rotation_until_it_catches_up() -> None:
    with run_anvil() as ahead, run_anvil() as behind:
        async with node_pool([ahead, behind]) as pool:
            rpc(ahead, "anvil_mine", ["0x14"])
            await eventually(lambda: ok_by_url(pool) == {ahead: True, behind: False})
            assert pool.status()[1].block == 0  # still answering, shown with its height
            answers = await asyncio.gather(*(pool.call("eth_blockNumber") for _ in range(20)))
            assert answers == ["0x14"] * 20
            rpc(behind, "anvil_mine", ["0x12"])  # two behind: within max_lag_blocks
            await eventually(lambda: ok_by_url(pool) == {ahead: True, behind: True})


async def test_a_node_that_switches_chain_is_taken_out() -> None:
    with run_anvil() as first, run_anvil() as second:
        async with node_pool([first, second]) as pool:
            rpc(second, "anvil_setChainId", [999])
            await eventually(lambda: ok_by_url(pool) == {first: True, second: False})
            assert pool.status()[1].chain_id == 999
            assert pool.chain_id == 1337
            answers = await asyncio.gather(*(pool.call("eth_chainId") for _ in range(10)))
            assert answers == ["0x539"] * 10


# --- answer size (issue 13, item 10) ---------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_answer_over_the_size_cap_fails_for_its_caller_alone(framing: str) -> None:
    with run_anvil() as url:
        rpc(url, "anvil_setCode", [RECIPIENT, "0x" + "60" * 6000])  # 12 kB of hex when read
        async with (
            forwarder(url) as first,
            forwarder(url) as second,
            node_pool([first.url, second.url], max_response_bytes=8192) as pool,
        ):
            first.chunked = second.chunked = framing == "chunked"
            with pytest.raises(NodeAnswerTooLarge) as large:
                await pool.call("eth_getCode", [RECIPIENT, "latest"])
            assert (large.value.code, large.value.http_status) == (-32005, 200)
            assert "eth_getCode" in large.value.message and "8192 bytes" in large.value.message
            assert "QSIGNER_MAX_RESPONSE_BYTES" in large.value.message
            assert (first.methods() + second.methods()).count("eth_getCode") == 1  # not retried
            assert ok_by_url(pool) == {first.url: True, second.url: True}
            rpc(url, "anvil_setCode", [RECIPIENT, "0x" + "60" * 3000])  # 6 kB: under the cap
            assert await pool.call("eth_getCode", [RECIPIENT, "latest"]) == "0x" + "60" * 3000


# --- eth_sendRawTransaction -----------------------------------------------------------------


async def test_a_sent_transaction_is_mined_and_sending_it_again_is_success() -> None:
    with run_anvil() as url:
        async with node_pool([url]) as pool:
            raw, tx_hash = signed_transfer(nonce=0)
            assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
            assert (await receipt(pool, tx_hash))["status"] == "0x1"
            # anvil answers "nonce too low" for the mined duplicate: still this very transaction.
            assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
            other_raw, other_hash = signed_transfer(nonce=0, value=2)
            with pytest.raises(NodeError) as taken:  # another transaction on a used nonce
                await pool.send("eth_sendRawTransaction", [other_raw], other_hash)
            assert (taken.value.code, taken.value.message) == (-32003, "nonce too low")


async def test_a_duplicate_still_in_the_pool_is_success() -> None:
    with run_anvil(extra=("--no-mining",)) as url:
        async with node_pool([url]) as pool:
            raw, tx_hash = signed_transfer(nonce=0)
            assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
            # anvil: -32003 "transaction already imported"
            assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
            rpc(url, "anvil_mine", ["0x1"])
            assert (await receipt(pool, tx_hash))["status"] == "0x1"


async def test_a_send_goes_past_a_dead_upstream() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with run_anvil() as url:
        async with node_pool([dead, url]) as pool:
            raw, tx_hash = signed_transfer(nonce=0)
            assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
            assert (await receipt(pool, tx_hash))["status"] == "0x1"


async def test_a_send_goes_to_another_node_when_the_first_surely_never_got_it() -> None:
    # The pool holds idle connections that the node closed when it went down, as after a node
    # restart: they are not used, and a new connection is refused.
    with run_anvil() as url:
        async with (
            forwarder(url) as front,
            node_pool([front.url, url], probe_interval=NO_PROBES) as pool,
        ):
            await front.stop()  # between probes: the pool still counts it healthy
            for nonce in (0, 1):  # round robin: one of the two sends tries the stopped node first
                raw, tx_hash = signed_transfer(nonce=nonce)
                assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
                assert (await receipt(pool, tx_hash))["status"] == "0x1"
            assert ok_by_url(pool) == {front.url: False, url: True}


async def test_a_send_that_may_have_reached_a_node_is_not_retried() -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as first,
            forwarder(url) as second,
            node_pool([first.url, second.url], probe_interval=NO_PROBES, read_timeout=1.0) as pool,
        ):
            first.mode = second.mode = "hang_sends"  # pass the send on, then never answer
            raw, tx_hash = signed_transfer(nonce=0)
            with pytest.raises(SendOutcomeUnknown) as unknown:
                await pool.send("eth_sendRawTransaction", [raw], tx_hash)
            assert isinstance(unknown.value, NoNodeAvailable) and unknown.value.tx_hash == tx_hash
            sends = (first.methods() + second.methods()).count("eth_sendRawTransaction")
            assert sends == 1
            # It did reach the node: a retry would not have been the pool's decision to make.
            assert rpc(url, "eth_getTransactionReceipt", [tx_hash])["status"] == "0x1"


# --- waiting for a connection (QSIGNER_NODE_CONNECTIONS) ends before anything is sent ----------


async def test_a_request_that_never_got_a_connection_is_known_not_sent() -> None:
    with run_anvil() as url:
        async with forwarder(url) as slow:
            slow.held = {"eth_getLogs"}
            transport = NodeTransport(slow.url, connect_timeout=1.0, max_connections=1,
                                      max_response_bytes=1 << 20)  # fmt: skip
            holder = asyncio.create_task(
                transport.request("eth_getLogs", [{"fromBlock": "0x0"}], timeout=30)
            )
            await eventually(lambda: slow.holding == 1)
            raw, _ = signed_transfer(nonce=0)
            with pytest.raises(NodeBusy) as busy:  # not NodeTimeout: it never left
                await transport.request("eth_sendRawTransaction", [raw], timeout=0.3)
            assert isinstance(busy.value, NoNodeAvailable)
            assert "eth_sendRawTransaction" not in slow.methods()
            slow.release()
            assert await holder == []


async def test_a_send_that_waited_in_vain_for_a_connection_goes_to_the_next_node() -> None:
    with run_anvil() as url:
        async with (
            forwarder(url) as busy,
            forwarder(url) as free,
            node_pool([busy.url, free.url], node_connections=1, read_timeout=0.3,
                      probe_interval=NO_PROBES) as pool,
        ):  # fmt: skip
            busy.held = free.held = {"eth_getLogs"}
            # Reaching into the pool's own transports: only a request with a longer deadline than
            # the pool's can hold a connection past a send's deadline. Both nodes then count one
            # request in flight, but only the busy node's one connection is taken.
            busy_node, free_node = (node.transport for node in pool._nodes)
            held = [
                asyncio.create_task(busy_node.request("eth_getLogs", [{}], timeout=30)),
                asyncio.create_task(free_node.request("eth_getLogs", [{}], timeout=30,
                                                      capped=False)),
            ]  # fmt: skip
            await eventually(lambda: busy.holding + free.holding == 2)
            sent = []
            for nonce in (0, 1):  # the first send tries the busy node first (round robin)
                raw, tx_hash = signed_transfer(nonce=nonce)
                assert await pool.send("eth_sendRawTransaction", [raw], tx_hash) == tx_hash
                sent.append(tx_hash)
            assert "eth_sendRawTransaction" not in busy.methods()
            assert free.methods().count("eth_sendRawTransaction") == 2
            assert ok_by_url(pool) == {busy.url: True, free.url: True}  # busy, not down
            busy.release()
            free.release()
            await asyncio.gather(*held)
            for tx_hash in sent:
                assert (await receipt(pool, tx_hash))["status"] == "0x1"


async def test_a_refused_send_whose_lookup_gets_no_answer_is_an_unknown_outcome() -> None:
    """ "nonce too low" is also what a resent transaction that is already mined gets: when the
    hash lookup that tells the two apart gets no answer, the outcome is unknown, not failed."""
    with run_anvil() as url:
        async with (
            forwarder(url) as node,
            node_pool([node.url], read_timeout=0.3, probe_interval=NO_PROBES) as pool,
        ):
            raw, tx_hash = signed_transfer(nonce=0)
            node.errors["eth_sendRawTransaction"] = {"code": -32003, "message": "nonce too low"}
            node.held = {"eth_getTransactionByHash"}  # the lookup outlasts the deadline
            with pytest.raises(SendOutcomeUnknown) as unknown:
                await pool.send("eth_sendRawTransaction", [raw], tx_hash)
            assert unknown.value.tx_hash == tx_hash
            node.release()
