"""The node pool: which node serves a request, whether each node is healthy, and failover.

Requests go to the least busy healthy node; background probes (chain id, block height) and failed
requests take nodes out of rotation, and a request is retried elsewhere only where that is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from proxy.errors import (
    NodeAnswerTooLarge,
    NodeBusy,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoNodeAvailable,
    SendOutcomeUnknown,
    SettingsError,
)
from proxy.nodes.transport import NodeTransport

log = logging.getLogger(__name__)
T = TypeVar("T")

# What nodes answer when they already hold a transaction with the same hash: geth and GoQuorum
# ("already known"; "known transaction: <hash>" before 1.9), Besu ("Known transaction"),
# Nethermind ("AlreadyKnown"), anvil ("transaction already imported"). Not "nonce too low": that
# also means another transaction took the nonce, so it is settled by looking the hash up.
_ALREADY_KNOWN = re.compile(r"already ?known|known transaction|already imported", re.IGNORECASE)


# Changes of the nodes' health kept in memory for the admin API (the newest last).
HEALTH_HISTORY = 500


@dataclass(frozen=True)
class NodeStatus:
    url: str  # masked (mask_url), unique within the pool
    ok: bool
    block: int | None
    chain_id: int | None
    reason: str | None = None  # why it is out of rotation
    in_flight: int = 0  # requests under way at it from this replica


@dataclass(frozen=True)
class HealthChange:
    """A node going into or out of rotation, as this replica saw it."""

    at: datetime
    url: str
    ok: bool
    reason: str | None


class _Node:
    """A node's transport and what the pool knows of its health."""

    def __init__(self, transport: NodeTransport, name: str) -> None:
        self.transport = transport
        self.name = name  # masked: shown in /readyz, /metrics and logs
        self.reachable = False
        self.chain_id: int | None = None
        self.block: int | None = None
        self.reason = "not probed yet"
        self.healthy = False
        self.why_out: str | None = "not probed yet"
        # Bumped when a request fails, so that a probe already under way when it failed cannot
        # put the node straight back: only a probe started afterwards can.
        self.epoch = 0


class NodePool:
    """JSON-RPC to a set of nodes of one chain, with health checks, balancing and failover."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        expected_chain_id: int | None = None,
        probe_interval: float = 1.0,
        max_lag_blocks: int = 5,
        read_timeout: float = 10.0,
        probe_timeout: float = 5.0,
        node_connections: int = 64,
        max_response_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if not urls:
            raise SettingsError("QSIGNER_UPSTREAMS is empty: give the URL of at least one node")
        # Shorter than either deadline, so that a node that never accepted the connection is
        # told apart (down: taken out, and a send is safe to retry) from a slow answer.
        connect_timeout = min(read_timeout, probe_timeout) / 2
        transports = [
            NodeTransport(url, connect_timeout=connect_timeout,
                          max_connections=node_connections,
                          max_response_bytes=max_response_bytes)
            for url in urls
        ]  # fmt: skip
        # Masking leaves only scheme, host and port: nodes behind one gateway (Infura's
        # /v3/<key>) would look alike, so those are told apart by their place in the list.
        shown = Counter(transport.masked for transport in transports)
        self._nodes = [
            _Node(transport, transport.masked if shown[transport.masked] == 1
                  else f"{transport.masked} (node {place})")
            for place, transport in enumerate(transports, 1)
        ]  # fmt: skip
        # Callers' requests have their deadline, health probes theirs: a caller's slow read
        # says nothing of the node's health, a probe that goes unanswered does.
        self._read_timeout = read_timeout
        self._probe_timeout = probe_timeout
        self._expected_chain_id = expected_chain_id
        self._chain_id: int | None = None
        self._probe_interval = probe_interval
        self._max_lag_blocks = max_lag_blocks
        self._turn = itertools.count()
        self._probe_task: asyncio.Task[None] | None = None
        self._history: deque[HealthChange] = deque(maxlen=HEALTH_HISTORY)

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
        for node in self._nodes:
            node.transport.close()

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            raise RuntimeError("NodePool.start() has not run")
        return self._chain_id

    @property
    def read_timeout(self) -> float:
        """Seconds a caller's request may take at a node (QSIGNER_READ_TIMEOUT)."""
        return self._read_timeout

    def status(self) -> list[NodeStatus]:
        return [
            NodeStatus(
                url=node.name,
                ok=node.healthy,
                # What an unreachable node said last is no longer known to be true.
                block=node.block if node.reachable else None,
                chain_id=node.chain_id if node.reachable else None,
                reason=None if node.healthy else node.why_out,
                in_flight=node.transport.in_flight,
            )
            for node in self._nodes
        ]

    def health_history(self) -> list[HealthChange]:
        """The nodes' latest changes in and out of rotation (at most HEALTH_HISTORY), oldest
        first, since this replica started: the pool keeps them in memory only."""
        return list(self._history)

    def healthy_count(self) -> int:
        return sum(node.healthy for node in self._nodes)

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        affinity: bytes | None = None,
    ) -> Any:
        """One JSON-RPC request to a healthy node; a transport failure is retried once elsewhere.

        Reads only: a retried submission could be one that reached the first node (`send`).
        A read that outlasts the read timeout fails for its caller alone (NodeTimeout), as does
        an answer over the size cap (NodeAnswerTooLarge): the node stays in rotation and the
        read is not tried elsewhere, where it would fare the same. With `affinity`, the read
        goes where `submit` sends that sender's transactions (while that node is healthy), so
        that reads that must agree with each other come from one node.
        """
        return await self._read(
            method,
            lambda node: node.transport.request(method, params, headers,
                                                timeout=self._read_timeout),
            affinity,
        )  # fmt: skip

    async def forward(self, method: str, params: Any, headers: Mapping[str, str] | None,
                      caller_id: bytes) -> bytes:  # fmt: skip
        """A read passed on for a caller: the node's answer as bytes, with `caller_id` (JSON)
        as its id (NodeTransport.forward); chosen, retried and failed as `call`."""
        return await self._read(
            method,
            lambda node: node.transport.forward(method, params, headers, caller_id,
                                                timeout=self._read_timeout),
            None,
        )  # fmt: skip

    async def forward_batch(
        self, calls: list[tuple[str, Any]], headers: Mapping[str, str] | None
    ) -> list[bytes | NodeError] | None:
        """Reads passed on for a caller as one batch (NodeTransport.forward_batch); chosen,
        retried and failed as `call`."""
        return await self._read(
            "batch",
            lambda node: node.transport.forward_batch(calls, headers,
                                                      timeout=self._read_timeout),
            None,
        )  # fmt: skip

    async def _read(self, method: str, attempt: Callable[[_Node], Awaitable[T]],
                    affinity: bytes | None) -> T:  # fmt: skip
        tried: list[_Node] = []
        busy = False
        for _attempt in range(2):
            node = self._pick(tried, affinity)
            if node is None:
                break
            tried.append(node)
            try:
                return await attempt(node)
            except NodeUnreachable as failure:
                self._take_out(node, failure.reason)
            except NodeBusy:
                busy = True  # busy, not down: it stays in rotation
            except NodeTimeout:
                raise NodeTimeout(
                    f"{method}: the node did not answer within {self._read_timeout:g} s "
                    "(QSIGNER_READ_TIMEOUT); ask for less (e.g. a narrower block range) or "
                    "try again"
                ) from None
        raise self._no_node(busy)

    async def send(
        self,
        method: str,
        params: list[Any],
        tx_hash: str,
        *,
        headers: Mapping[str, str] | None = None,
        answers_hash: bool = True,
    ) -> str:
        """`submit`'s answer alone."""
        result, _ = await self.submit(method, params, tx_hash, headers=headers,
                                      answers_hash=answers_hash)  # fmt: skip
        return result

    async def submit(
        self,
        method: str,
        params: list[Any],
        tx_hash: str,
        *,
        headers: Mapping[str, str] | None = None,
        answers_hash: bool = True,
        affinity: bytes | None = None,
    ) -> tuple[str, str]:
        """A submission of a signed transaction (eth_sendRawTransaction, GoQuorum's
        eth_sendRawPrivateTransaction, eth_distributePrivateTransaction); returns the node's
        answer, the transaction hash where `answers_hash`.

        Tried on the next node only while the previous one surely never got the request
        (connection refused, could not connect); after a timeout or a reset the transaction may
        be in that node's pool, and SendOutcomeUnknown says so. Where the node answers with the
        transaction's hash, a node that already holds this very transaction counts as success
        (eth_distributePrivateTransaction answers with Tessera's hash of the payload instead, and
        puts nothing in the node's pool). A timeout leaves the node in rotation, as for reads, and
        so does waiting in vain for one of its connections (NodeBusy: nothing was sent, so the
        next node is tried).

        With `affinity` (a sender's address), every submission of that sender goes to the same
        node while it is healthy, on every replica alike (rendezvous hashing over the nodes in
        rotation), so that nonce N+1 never reaches a node long before N. Answers the node's
        answer and the node's (masked) name.
        """
        tried: list[_Node] = []
        busy = False
        while (node := self._pick(tried, affinity)) is not None:
            tried.append(node)
            try:
                result = await node.transport.request(
                    method, params, headers, timeout=self._read_timeout
                )
            except NodeBusy:
                busy = True  # never sent: the next node may take it
                continue
            except NodeUnreachable as failure:
                self._take_out(node, failure.reason)
                if failure.delivered:
                    raise SendOutcomeUnknown(tx_hash) from None
                continue
            except (NodeTimeout, NodeAnswerTooLarge):
                raise SendOutcomeUnknown(tx_hash) from None
            except NodeError as error:
                if not answers_hash:
                    raise
                holds = await self._holds_transaction(node, error, tx_hash, headers)
                if holds is None:  # the node refused it, but may hold it: nobody can tell yet
                    raise SendOutcomeUnknown(tx_hash) from None
                if holds:
                    return tx_hash, node.name
                raise
            if not isinstance(result, str):
                self._take_out(node, f"{method} answered no hash")
                raise SendOutcomeUnknown(tx_hash)
            return result, node.name
        raise self._no_node(busy)

    def node_for(self, affinity: bytes) -> str | None:
        """The node that `affinity`'s submissions go to now, or None when none is healthy."""
        node = self._pick([], affinity)
        return None if node is None else node.name

    def pick_node(self, avoid: Sequence[int] = ()) -> int | None:
        """The place in QSIGNER_UPSTREAMS of a healthy node (the least busy, others than
        `avoid` when there are), or None when none is healthy: where a WebSocket subscription
        goes."""
        node = self._pick([self._nodes[n] for n in avoid]) or self._pick([])
        return None if node is None else self._nodes.index(node)

    def in_rotation(self, place: int) -> bool:
        """Whether the node at `place` in QSIGNER_UPSTREAMS is healthy now."""
        return self._nodes[place].healthy

    def height(self, place: int) -> int | None:
        """The latest block the health probes saw on the node at `place`."""
        node = self._nodes[place]
        return node.block if node.reachable else None

    def node_name(self, place: int) -> str:
        """The masked name of the node at `place` in QSIGNER_UPSTREAMS."""
        return self._nodes[place].name

    def _no_node(self, busy: bool) -> NoNodeAvailable:
        if busy:
            return NodeBusy(
                "no node available: every node tried was busy for "
                f"{self._read_timeout:g} s (QSIGNER_NODE_CONNECTIONS requests under way, "
                "QSIGNER_READ_TIMEOUT); nothing was sent, try again"
            )
        return NoNodeAvailable("no node available")

    async def _holds_transaction(
        self, node: _Node, error: NodeError, tx_hash: str, headers: Mapping[str, str] | None
    ) -> bool | None:
        """Whether the node that refused the send holds this very transaction; None when the
        lookup got no answer (then a refusal such as "nonce too low" may still be ours)."""
        if _ALREADY_KNOWN.search(error.message):
            return True
        # A resent transaction that is already mined gets "nonce too low" (anvil, geth), as does
        # a different one whose nonce was taken: only the hash tells them apart.
        try:
            found = await node.transport.request(
                "eth_getTransactionByHash", [tx_hash], headers, timeout=self._read_timeout
            )
        except NodeError:
            return False
        except (NodeUnreachable, NodeBusy, NodeTimeout, NodeAnswerTooLarge):
            return None
        return isinstance(found, dict) and str(found.get("hash", "")).lower() == tx_hash.lower()

    def _pick(self, tried: list[_Node], affinity: bytes | None = None) -> _Node | None:
        candidates = [node for node in self._nodes if node.healthy and node not in tried]
        if not candidates:
            return None
        if affinity is not None:
            return max(candidates, key=lambda node: _rendezvous(affinity, node.name))
        # Least in flight; rotating the starting point makes ties go round robin.
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda node: node.transport.in_flight)

    async def _probe(self, node: _Node) -> None:
        epoch = node.epoch
        answers = await asyncio.gather(
            *(
                node.transport.request(method, timeout=self._probe_timeout, capped=False)
                for method in ("eth_chainId", "eth_blockNumber")
            ),
            return_exceptions=True,
        )
        try:
            chain_id, block = (_quantity(answer) for answer in answers)
        except NodeUnreachable as failure:
            node.reachable, node.reason = False, failure.reason
            return
        except NodeTimeout:
            node.reachable = False
            node.reason = f"health probe unanswered within {self._probe_timeout:g} s"
            return
        except NodeAnswerTooLarge:
            node.reachable, node.reason = False, "health probe answer over the size cap"
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
                log.exception("probing node %s failed", node.name)
            self._refresh()

    def _take_out(self, node: _Node, reason: str) -> None:
        node.epoch += 1
        node.reachable, node.reason = False, reason
        self._refresh()

    def _agreed_chain_id(self) -> int:
        answering = [node for node in self._nodes if node.reachable]
        if not answering:
            detail = "; ".join(f"{node.name}: {node.reason}" for node in self._nodes)
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
        detail = ", ".join(f"{node.name} is on chain {node.chain_id}" for node in answering)
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
            node.why_out = reason
            if announce or healthy != node.healthy:
                self._history.append(HealthChange(datetime.now(UTC), node.name, healthy, reason))
                if reason is None:
                    log.info("node %s in rotation", node.name)
                else:
                    log.warning("node %s out of rotation: %s", node.name, reason)
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


def _rendezvous(affinity: bytes, name: str) -> bytes:
    return hashlib.blake2b(affinity + name.encode(), digest_size=8).digest()


def _quantity(answer: object) -> int:
    if isinstance(answer, BaseException):
        raise answer
    if not isinstance(answer, str) or not answer.startswith("0x"):
        raise ValueError(f"not a quantity: {answer!r}")
    return int(answer, 16)
