"""The node pool: the only place that talks HTTP to the Ethereum / GoQuorum nodes.

Requests go to the least busy healthy node; background probes (chain id, block height) and failed
requests take nodes out of rotation, and a request is retried elsewhere only where that is safe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import NodeError, NoNodeAvailable, SendOutcomeUnknown, SettingsError

log = logging.getLogger(__name__)

# What nodes answer when they already hold a transaction with the same hash: geth and GoQuorum
# ("already known"; "known transaction: <hash>" before 1.9), Besu ("Known transaction"),
# Nethermind ("AlreadyKnown"), anvil ("transaction already imported"). Not "nonce too low": that
# also means another transaction took the nonce, so it is settled by looking the hash up.
_ALREADY_KNOWN = re.compile(r"already ?known|known transaction|already imported", re.IGNORECASE)

_URL_PARTS = re.compile(r"^(?:(?P<scheme>[^:/?#]+)://)?(?P<authority>[^/?#]*)(?P<rest>.*)$", re.S)


def mask_url(url: str) -> str:
    """`url` fit to show in /readyz, logs and errors: user info and query string hidden."""
    # Parsed by hand rather than with urlsplit: a URL missing its scheme ("user:pw@host") would
    # otherwise read as scheme "user" and show the password as a path.
    parts = _URL_PARTS.match(url)
    if parts is None:  # pragma: no cover - the pattern matches every string
        return "***"
    authority = parts["authority"]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    rest = parts["rest"]
    path = re.split(r"[?#]", rest, maxsplit=1)[0]
    query = "?***" if "?" in rest.split("#", 1)[0] else ""
    scheme = f"{parts['scheme']}://" if parts["scheme"] else ""
    return f"{scheme}{authority}{path}{query}"


@dataclass(frozen=True)
class NodeStatus:
    url: str  # masked
    ok: bool
    block: int | None
    chain_id: int | None


class _NodeUnreachable(Exception):
    """A transport failure. `delivered` is False only when the request surely never left."""

    def __init__(self, reason: str, *, delivered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


class _Node:
    def __init__(self, url: str) -> None:
        self.masked = mask_url(url)
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise SettingsError(f"QSIGNER_UPSTREAMS: {self.masked} is not an http(s) URL")
        # Credentials travel as a header, never in the URL aiohttp sees: its exceptions and
        # logs quote the URL.
        self.endpoint = parsed.with_user(None).with_fragment(None)
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        if parsed.user is not None:
            user_pass = f"{parsed.user}:{parsed.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(user_pass).decode()
        self.reachable = False
        self.chain_id: int | None = None
        self.block: int | None = None
        self.reason = "not probed yet"
        self.healthy = False
        self.in_flight = 0
        # Bumped when a request fails, so that a probe already under way when it failed cannot
        # put the node straight back: only a probe started afterwards can.
        self.epoch = 0


class NodePool:
    """JSON-RPC to a set of nodes of one chain, with health checks, balancing and failover."""

    def __init__(
        self,
        urls: Sequence[str],
        session: aiohttp.ClientSession,
        *,
        expected_chain_id: int | None = None,
        probe_interval: float = 1.0,
        max_lag_blocks: int = 5,
        request_timeout: float = 10.0,
    ) -> None:
        if not urls:
            raise SettingsError("QSIGNER_UPSTREAMS is empty: give the URL of at least one node")
        self._nodes = [_Node(url) for url in urls]
        self._session = session
        self._expected_chain_id = expected_chain_id
        self._chain_id: int | None = None
        self._probe_interval = probe_interval
        self._max_lag_blocks = max_lag_blocks
        # A connect timeout of its own, shorter than the total, so that a node that never
        # accepted the connection is told apart (safe to retry a send) from one that went quiet
        # after the request was written (not safe).
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_connect=request_timeout / 2
        )
        self._request_ids = itertools.count(1)
        self._turn = itertools.count()
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._probe_task is not None:
            raise RuntimeError("NodePool.start() called twice")
        await asyncio.gather(*(self._probe(node) for node in self._nodes))
        self._chain_id = self._agreed_chain_id()
        self._refresh(announce=True)
        self._probe_task = asyncio.create_task(self._probe_forever(), name="node-pool-probes")

    async def close(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            raise RuntimeError("NodePool.start() has not run")
        return self._chain_id

    def status(self) -> list[NodeStatus]:
        return [
            NodeStatus(
                url=node.masked,
                ok=node.healthy,
                # What an unreachable node said last is no longer known to be true.
                block=node.block if node.reachable else None,
                chain_id=node.chain_id if node.reachable else None,
            )
            for node in self._nodes
        ]

    def healthy_count(self) -> int:
        return sum(node.healthy for node in self._nodes)

    async def call(
        self, method: str, params: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> Any:
        """One JSON-RPC request to a healthy node; a transport failure is retried once elsewhere.

        Reads only: a retried eth_sendRawTransaction could be one that reached the first node.
        """
        tried: list[_Node] = []
        for _attempt in range(2):
            node = self._pick(tried)
            if node is None:
                break
            tried.append(node)
            try:
                return await self._post(node, method, params, headers)
            except _NodeUnreachable as failure:
                self._take_out(node, failure.reason)
        raise NoNodeAvailable("no node available")

    async def send_raw_transaction(
        self, raw_hex: str, tx_hash: str, *, headers: Mapping[str, str] | None = None
    ) -> str:
        """eth_sendRawTransaction; returns the transaction hash.

        Tried on the next node only while the previous one surely never got the request
        (connection refused, could not connect); after a timeout or a reset the transaction may
        be in that node's pool, and SendOutcomeUnknown says so. A node that already holds this
        very transaction counts as success.
        """
        tried: list[_Node] = []
        while (node := self._pick(tried)) is not None:
            tried.append(node)
            try:
                result = await self._post(node, "eth_sendRawTransaction", [raw_hex], headers)
            except _NodeUnreachable as failure:
                self._take_out(node, failure.reason)
                if failure.delivered:
                    raise SendOutcomeUnknown(tx_hash) from None
                continue
            except NodeError as error:
                if await self._holds_transaction(node, error, tx_hash, headers):
                    return tx_hash
                raise
            if not isinstance(result, str):
                self._take_out(node, "eth_sendRawTransaction answered no hash")
                raise SendOutcomeUnknown(tx_hash)
            return result
        raise NoNodeAvailable("no node available")

    async def _holds_transaction(
        self, node: _Node, error: NodeError, tx_hash: str, headers: Mapping[str, str] | None
    ) -> bool:
        if _ALREADY_KNOWN.search(error.message):
            return True
        # A resent transaction that is already mined gets "nonce too low" (anvil, geth), as does
        # a different one whose nonce was taken: only the hash tells them apart.
        try:
            found = await self._post(node, "eth_getTransactionByHash", [tx_hash], headers)
        except (NodeError, _NodeUnreachable):
            return False
        return isinstance(found, dict) and str(found.get("hash", "")).lower() == tx_hash.lower()

    def _pick(self, tried: list[_Node]) -> _Node | None:
        candidates = [node for node in self._nodes if node.healthy and node not in tried]
        if not candidates:
            return None
        # Least in flight; rotating the starting point makes ties go round robin.
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda node: node.in_flight)

    async def _post(
        self, node: _Node, method: str, params: Any, headers: Mapping[str, str] | None
    ) -> Any:
        request: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": next(self._request_ids),
            "method": method,
        }
        if params is not None:
            request["params"] = params
        request_headers: CIMultiDict[str] = CIMultiDict(headers or {})
        request_headers.update(node.headers)
        node.in_flight += 1
        try:
            async with self._session.post(
                node.endpoint,
                data=json.dumps(request, separators=(",", ":")).encode(),
                headers=request_headers,
                timeout=self._timeout,
            ) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _NodeUnreachable(_describe(exc), delivered=not _surely_not_sent(exc)) from None
        finally:
            node.in_flight -= 1
        return _json_rpc_result(status, body)

    async def _probe(self, node: _Node) -> None:
        epoch = node.epoch
        answers = await asyncio.gather(
            self._post(node, "eth_chainId", None, None),
            self._post(node, "eth_blockNumber", None, None),
            return_exceptions=True,
        )
        try:
            chain_id, block = (_quantity(answer) for answer in answers)
        except _NodeUnreachable as failure:
            node.reachable, node.reason = False, failure.reason
            return
        except NodeError as error:
            node.reachable, node.reason = False, f"answered error {error.code}: {error.message}"
            return
        except ValueError:
            node.reachable, node.reason = False, "answered something other than a quantity"
            return
        if node.epoch != epoch:
            return
        node.reachable, node.chain_id, node.block = True, chain_id, block

    async def _probe_forever(self) -> None:
        await asyncio.gather(*(self._watch(node) for node in self._nodes))

    async def _watch(self, node: _Node) -> None:
        # One loop per node, so that a node slow to answer delays no other node's probes.
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await self._probe(node)
            except Exception:
                # A bug here must not end health checking for good.
                log.exception("probing node %s failed", node.masked)
            self._refresh()

    def _take_out(self, node: _Node, reason: str) -> None:
        node.epoch += 1
        node.reachable, node.reason = False, reason
        self._refresh()

    def _agreed_chain_id(self) -> int:
        answering = [node for node in self._nodes if node.reachable]
        if not answering:
            detail = "; ".join(f"{node.masked}: {node.reason}" for node in self._nodes)
            raise SettingsError(f"QSIGNER_UPSTREAMS: no node answered ({detail})")
        chains = {node.chain_id for node in answering if node.chain_id is not None}
        expected = self._expected_chain_id
        if len(chains) == 1:
            (chain_id,) = chains
            if expected is not None and chain_id != expected:
                raise SettingsError(
                    f"QSIGNER_CHAIN_ID is {expected}, but the nodes are on chain {chain_id}"
                )
            return chain_id
        detail = ", ".join(f"{node.masked} is on chain {node.chain_id}" for node in answering)
        if expected is not None:
            raise SettingsError(
                f"QSIGNER_UPSTREAMS: every node must be on chain {expected} (QSIGNER_CHAIN_ID), "
                f"but {detail}"
            )
        raise SettingsError(f"QSIGNER_UPSTREAMS: the nodes are on different chains: {detail}")

    def _refresh(self, *, announce: bool = False) -> None:
        """Recompute who is in rotation (a node lagging behind the best block is out) and log
        the changes, or with `announce` every node's state."""
        on_chain = [
            node
            for node in self._nodes
            if node.reachable and node.chain_id == self._chain_id and node.block is not None
        ]
        best = max((node.block for node in on_chain if node.block is not None), default=0)
        for node in self._nodes:
            reason = self._why_out(node, best)
            healthy = reason is None
            if announce or healthy != node.healthy:
                if reason is None:
                    log.info("node %s in rotation", node.masked)
                else:
                    log.warning("node %s out of rotation: %s", node.masked, reason)
                node.healthy = healthy

    def _why_out(self, node: _Node, best: int) -> str | None:
        if self._chain_id is None:
            return "pool not started"
        if not node.reachable:
            return node.reason
        if node.chain_id != self._chain_id or node.block is None:
            return f"on chain {node.chain_id}, not {self._chain_id}"
        if best - node.block > self._max_lag_blocks:
            return f"{best - node.block} blocks behind"
        return None


def _json_rpc_result(status: int, body: bytes) -> Any:
    """The `result` of a node's answer; its JSON-RPC error as NodeError; else a node failure."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            message = error.get("message")
            raise NodeError(
                error["code"],
                message if isinstance(message, str) else "",
                error.get("data"),
                http_status=status if status >= 400 else 200,
            )
        if "result" in answer and 200 <= status < 300:
            return answer["result"]
    # A proxy in front of the node answering 502 with an HTML page, a truncated body: the request
    # reached something, so a send cannot be retried safely, but the node is not usable.
    raise _NodeUnreachable(f"HTTP {status}, not a JSON-RPC answer", delivered=True)


def _quantity(answer: object) -> int:
    if isinstance(answer, BaseException):
        raise answer
    if not isinstance(answer, str) or not answer.startswith("0x"):
        raise ValueError(f"not a quantity: {answer!r}")
    return int(answer, 16)


def _surely_not_sent(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return True
    # A keep-alive connection that the node closed while it sat idle in the pool (the node
    # restarted): aiohttp refuses the write of headers and body, which _post hands it as one
    # buffer, so not a byte of the request left. Only the cause's message tells this from a
    # connection lost after writing; should that wording change, we fall back to "maybe sent".
    return any(
        isinstance(error, aiohttp.ClientConnectionResetError) and "closing transport" in str(error)
        for error in (exc, exc.__cause__)
    )


def _describe(exc: BaseException) -> str:
    """Why a request failed, in words that never quote the URL (it may hold credentials)."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return "could not connect"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if _surely_not_sent(exc):
        return "connection closed by the node while idle"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "connection closed before the answer"
    return f"transport error ({type(exc).__name__})"
