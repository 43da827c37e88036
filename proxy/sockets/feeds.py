"""Clients' `eth_subscribe` subscriptions, carried to the nodes' WebSockets.

A client's subscription id is the proxy's own (random, like a node's), never a node's: the
subscription on the node behind it (its feed) can then move to another node without the client
seeing another id. Clients of a replica that subscribe to the same thing (same kind, same filter,
same private state) share one feed, hence one subscription on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from proxy import logs, rpc
from proxy.errors import (
    InvalidParams,
    NodeError,
    NodeTimeout,
    NodeUnreachable,
    NoNodeAvailable,
    RateLimited,
)
from proxy.metrics import Metrics
from proxy.nodes.pool import NodePool
from proxy.nodes.websocket import NodeSocket
from proxy.sockets.session import SocketSession, Subscription

KINDS = ("newHeads", "logs", "newPendingTransactions")
OPEN_TIMEOUT = 5.0  # seconds to open a node's WebSocket
PARKED_MAX = 256  # notifications for ids not known yet (the answer naming them still on its way)
RECENT_MAX = 4096  # notifications remembered to drop one delivered twice
RETRY_MAX_SECONDS = 2.0
WATCH_SECONDS = 1.0  # how often node sockets are held to the pool's view of their node


def subscription_key(kind: str, params: list[Any]) -> tuple[str, bytes]:
    """The feed a subscription belongs to; `InvalidParams` for a kind or filter we do not
    carry."""
    if kind not in KINDS:
        raise InvalidParams(f"unknown subscription kind {kind!r}: the proxy carries newHeads, "
                            "logs, newPendingTransactions and qsigner_transactions")  # fmt: skip
    if kind == "logs":
        criteria = params[0] if params else {}
        if not isinstance(criteria, dict) or not set(criteria) <= {"address", "topics"}:
            raise InvalidParams('logs takes a filter object with "address" and "topics"')
        return kind, rpc.dumps(_log_filter(criteria))
    if kind == "newPendingTransactions":
        if params not in ([], [False], [True]):
            raise InvalidParams("newPendingTransactions takes at most one boolean (full "
                                "transactions)")  # fmt: skip
        return kind, rpc.dumps(params)
    if params:
        raise InvalidParams(f"{kind} takes no parameters")
    return kind, b"[]"


def _log_filter(criteria: dict[str, Any]) -> dict[str, Any]:
    """The filter in one spelling (addresses and topics in lower case), so that equal filters
    share a feed; shapes that a node would refuse are refused here, with what to fix."""
    result: dict[str, Any] = {}
    address = criteria.get("address")
    if address is not None:
        addresses = address if isinstance(address, list) else [address]
        if not all(_is_hex(a, 20) for a in addresses):
            raise InvalidParams('"address" must be an address or a list of addresses')
        result["address"] = [a.lower() for a in addresses] if isinstance(address, list) \
            else address.lower()  # fmt: skip
    topics = criteria.get("topics")
    if topics is not None:
        if not isinstance(topics, list) or len(topics) > 4:
            raise InvalidParams('"topics" must be a list of at most 4 entries')
        spelled: list[Any] = []
        for topic in topics:
            if topic is None:
                spelled.append(None)
            elif isinstance(topic, list) and all(_is_hex(t, 32) for t in topic):
                spelled.append([t.lower() for t in topic])
            elif _is_hex(topic, 32):
                spelled.append(topic.lower())
            else:
                raise InvalidParams("each topic must be null, a 32-byte hex string or a list "
                                    "of them")  # fmt: skip
        result["topics"] = spelled
    return result


def _is_hex(value: Any, size: int) -> bool:
    if not isinstance(value, str) or len(value) != 2 + 2 * size or value[:2] not in ("0x", "0X"):
        return False
    try:
        bytes.fromhex(value[2:])
    except ValueError:
        return False
    return True


class ClientSubscription(Subscription):
    """A client's subscription: its id, its socket, and the feed that brings its
    notifications."""

    def __init__(self, session: SocketSession, feed: Feed,
                 on_end: Callable[[ClientSubscription], None]) -> None:  # fmt: skip
        super().__init__(session, on_end)
        self.feed = feed

    @property
    def kind(self) -> str:
        return self.feed.kind


class Feed:
    """One subscription on a node, shared by the clients that asked for the same thing, and
    what it delivered: enough to take it up on another node with nothing missed and nothing
    twice.

    newHeads are delivered in strictly increasing block numbers (`head_through`: the last one,
    or the chain's height when the feed began); logs are told apart by transaction hash and log
    index, so the same log seen on two nodes goes out once, and `logs_through` is the block
    whose logs have all been delivered (a node's next head vouches for its block's logs).
    While the feed catches up on a new node (`replaying`), the node's own notifications wait.
    """

    def __init__(self, key: tuple[str, bytes, str | None], kind: str, params: list[Any],
                 headers: Mapping[str, str]) -> None:  # fmt: skip
        self.key = key
        self.kind = kind
        self.params = params  # eth_subscribe's params on the node: [kind] or [kind, filter]
        self.headers = dict(headers)
        self.clients: dict[str, ClientSubscription] = {}
        self.node: int | None = None
        self.socket: NodeSocket | None = None
        self.upstream_id: str | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.mover: asyncio.Task[None] | None = None
        self.waiting = 0  # clients waiting for `started`
        self.head_through: int | None = None  # newHeads: the last block number delivered
        self.logs_through: int | None = None  # logs: every log up to this block delivered
        self.replaying = False
        # The fields of the node's own newHeads notifications (geth sends the header, anvil the
        # whole block): a head caught up from eth_getBlockByNumber is sent with the same ones.
        self.header_fields: frozenset[str] | None = None
        self._waiting_notifications: list[Any] = []
        self._recent: deque[bytes] = deque()
        self._recent_set: set[bytes] = set()

    def notified(self, result: Any) -> None:
        """A notification from the node (it waits while the feed catches up)."""
        if self.kind == "newHeads" and isinstance(result, dict):
            self.header_fields = frozenset(result)
        if self.replaying:
            self._waiting_notifications.append(result)
        else:
            self.deliver(result)

    def caught_up(self) -> None:
        self.replaying = False
        waiting, self._waiting_notifications = self._waiting_notifications, []
        for result in waiting:
            self.deliver(result)

    def deliver(self, result: Any) -> None:
        """A notification to every client of the feed, unless it was delivered already."""
        if self.kind == "newHeads":
            number = _quantity(result, "number")
            if number is not None:
                if self.head_through is not None and number <= self.head_through:
                    return
                self.head_through = number
        else:
            identity = _identity(self.kind, result)
            if identity in self._recent_set:
                return
            self._remember(identity)
            if self.kind == "logs" and isinstance(result, dict) and result.get("removed"):
                # A log taken back by a reorganisation: if the chain includes it again, that
                # comes out again too.
                self._recent_set.discard(_identity("logs", {**result, "removed": False}))
        encoded = rpc.dumps(result)
        for client in list(self.clients.values()):
            client.notify(encoded)

    def _remember(self, identity: bytes) -> None:
        self._recent.append(identity)
        self._recent_set.add(identity)
        if len(self._recent) > RECENT_MAX:
            self._recent_set.discard(self._recent.popleft())


def _quantity(result: Any, field: str) -> int | None:
    value = result.get(field) if isinstance(result, dict) else None
    try:
        return int(value, 16) if isinstance(value, str) else None
    except ValueError:
        return None


def _identity(kind: str, result: Any) -> bytes:
    """What tells one notification from another of the same feed, on any node: a log's
    transaction hash, index and removal flag; a pending transaction's hash."""
    if kind == "logs" and isinstance(result, dict):
        return (f"{result.get('transactionHash')}:{result.get('logIndex')}:"
                f"{bool(result.get('removed'))}").encode()  # fmt: skip
    if isinstance(result, dict):
        return str(result.get("hash")).encode()
    return str(result).encode()


# Fields of eth_getBlockByNumber that a newHeads notification does not carry.
_NOT_HEADER = ("transactions", "uncles", "size", "totalDifficulty", "withdrawals")


def header_of(block: dict[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    """A block (eth_getBlockByNumber) as newHeads notifies it: with the `fields` the node's own
    notifications carry, else the header's (as geth sends it)."""
    if fields is not None:
        return {name: value for name, value in block.items() if name in fields}
    return {name: value for name, value in block.items() if name not in _NOT_HEADER}


class SubscriptionHub:
    """The feeds of one replica over WebSockets to the nodes, one socket per node (and private
    state), opened when a feed first needs it."""

    def __init__(self, pool: NodePool, ws_urls: list[str], metrics: Metrics,
                 replay_blocks: int) -> None:  # fmt: skip
        self._pool = pool
        self._urls = ws_urls
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._feeds: dict[tuple[str, bytes, str | None], Feed] = {}
        self._sockets: dict[tuple[int, str | None], NodeSocket] = {}
        self._opening: dict[tuple[int, str | None], asyncio.Future[NodeSocket]] = {}
        self._routes: dict[NodeSocket, dict[str, Feed]] = {}
        self._parked: dict[NodeSocket, deque[tuple[str, Any]]] = {}
        self._clocks: dict[NodeSocket, str] = {}  # each node socket's own newHeads
        self._heads: dict[NodeSocket, int] = {}  # the last head each socket's clock heard
        self._behind: set[NodeSocket] = set()  # sockets behind their node at the last look
        self._timeout = pool.read_timeout
        self._replay_blocks = replay_blocks
        self._watcher: asyncio.Task[None] | None = None
        self._endings: set[asyncio.Task[None]] = set()
        self._closed = False

    async def subscribe(
        self, session: SocketSession, request_id: str, kind: Any, params: list[Any],
        headers: Mapping[str, str],
    ) -> ClientSubscription:  # fmt: skip
        """A new client subscription, held until the answer that names it is sent."""
        if not isinstance(kind, str):
            raise InvalidParams("eth_subscribe takes the subscription kind first")
        kind_key, criteria = subscription_key(kind, params)
        if len(session.subscriptions) >= session.max_subscriptions:
            raise RateLimited(f"at most {session.max_subscriptions} subscriptions per connection "
                              "(QSIGNER_WS_MAX_SUBSCRIPTIONS)")  # fmt: skip
        psi = headers.get("Quorum-PSI")
        key = (kind_key, criteria, psi)
        feed = self._feeds.get(key)
        if feed is None:
            upstream_params: list[Any] = [kind] + ([rpc.loads(criteria)] if kind == "logs"
                                                   else list(params))  # fmt: skip
            feed = Feed(key, kind, upstream_params, headers)
            self._feeds[key] = feed
            feed.mover = asyncio.create_task(self._start(feed), name=f"feed {kind}")
        feed.waiting += 1
        joined = False
        try:
            await asyncio.shield(feed.started)
            if session.closing is not None or self._feeds.get(key) is not feed:
                raise NoNodeAvailable("the subscription could not be made")
            if len(session.subscriptions) >= session.max_subscriptions:
                raise RateLimited(f"at most {session.max_subscriptions} subscriptions per "
                                  "connection (QSIGNER_WS_MAX_SUBSCRIPTIONS)")  # fmt: skip
            client = ClientSubscription(session, feed, self.unsubscribe)
            feed.clients[client.id] = client
            joined = True
        finally:
            feed.waiting -= 1
            if not joined:
                self._release_if_unused(feed)
        session.subscriptions[client.id] = client
        session.hold_until_answered(client, request_id)
        self._metrics.ws_subscriptions.labels(kind).inc()
        return client

    def unsubscribe(self, client: ClientSubscription) -> None:
        """The client's subscription ends; a feed left without clients ends on its node."""
        session, feed = client.session, client.feed
        if session.subscriptions.pop(client.id, None) is None:
            return
        feed.clients.pop(client.id, None)
        self._metrics.ws_subscriptions.labels(feed.kind).dec()
        if not feed.clients and self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
            self._ending(feed)

    def _ending(self, feed: Feed) -> None:
        """`_end` in the background (the task kept until done, as asyncio holds tasks weakly)."""
        task = asyncio.create_task(self._end(feed), name=f"feed {feed.kind} end")
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for feed in list(self._feeds.values()):
            if feed.mover is not None:
                feed.mover.cancel()
        self._feeds.clear()
        for socket in list(self._sockets.values()):
            await socket.close()
        self._sockets.clear()
        if self._session is not None:
            await self._session.close()

    # --- feeds on nodes ---------------------------------------------------------------------

    async def _start(self, feed: Feed) -> None:
        """The feed's first subscription on a node; its failure is its first clients'."""
        try:
            await self._place_anywhere(feed)
        except BaseException as exc:
            if self._feeds.get(feed.key) is feed:
                del self._feeds[feed.key]
            cancelled = isinstance(exc, asyncio.CancelledError)
            feed.started.set_exception(NoNodeAvailable("the subscription could not be made")
                                       if cancelled else exc)  # fmt: skip
            feed.started.exception()  # retrieved here: the clients waiting raise it
            if cancelled:
                raise
            return
        finally:
            feed.mover = None
        feed.started.set_result(None)

    async def _place_anywhere(self, feed: Feed) -> None:
        """`_place` on each healthy node in turn until one takes the feed."""
        tried: list[int] = []
        while True:
            try:
                await self._place(feed, avoid=tuple(tried))
                return
            except (NodeUnreachable, NodeTimeout):
                if feed.node is None or feed.node in tried:
                    raise
                tried.append(feed.node)
                if self._pool.pick_node(tried) in tried:
                    raise

    def _release_if_unused(self, feed: Feed) -> None:
        """A feed that nobody joined (its first client went away while it was being made)."""
        if (not feed.clients and not feed.waiting and self._feeds.get(feed.key) is feed
                and feed.started.done()):  # fmt: skip
            del self._feeds[feed.key]
            self._ending(feed)

    async def _place(self, feed: Feed, avoid: tuple[int, ...]) -> None:
        """Subscribe `feed` on a healthy node (another than `avoid` when there is one). A feed
        that delivered before catches up there first: the heads, or the logs, that it missed
        since (at most QSIGNER_WS_REPLAY_BLOCKS blocks back), then the node's own."""
        node = self._pool.pick_node(avoid)
        if node is None:
            raise NoNodeAvailable("no node available")
        feed.node = node  # the node tried (the one it is on, once subscribed)
        socket = await self._socket(node, feed.key[2], feed.headers)
        feed.replaying = True
        try:
            upstream_id = await socket.request("eth_subscribe", feed.params, self._timeout)
            if not isinstance(upstream_id, str):
                raise NodeError(-32603, "the node answered eth_subscribe without an id")
            feed.socket, feed.upstream_id = socket, upstream_id
            self._routes.setdefault(socket, {})[upstream_id] = feed
            self._metrics.ws_upstream_subscriptions.labels(feed.kind).inc()
            # Notifications that arrived before the answer naming their id was read.
            parked = self._parked.get(socket)
            if parked:
                for _, result in [p for p in parked if p[0] == upstream_id]:
                    feed.notified(result)
                self._parked[socket] = deque((p for p in parked if p[0] != upstream_id),
                                             maxlen=PARKED_MAX)  # fmt: skip
            try:
                await self._catch_up(feed, socket)
            except Exception as exc:  # the feed lives on; what was missed may not come
                logs.event("subscription could not catch up", logging.WARNING,
                           kind=feed.kind, error=type(exc).__name__)  # fmt: skip
        finally:
            feed.caught_up()

    async def _catch_up(self, feed: Feed, socket: NodeSocket) -> None:
        """On the node it was just subscribed on: where a new feed starts from, or what a moved
        feed missed (blocks since it last delivered, up to the node's height)."""
        if feed.kind == "newPendingTransactions":
            return  # pending transactions cannot be asked for again
        height = int(await socket.request("eth_blockNumber", [], self._timeout), 16)
        through = feed.head_through if feed.kind == "newHeads" else feed.logs_through
        if through is None:  # a new feed: from now on
            if feed.kind == "newHeads":
                feed.head_through = height
            else:
                feed.logs_through = height
            return
        first = through + 1
        if height - first + 1 > self._replay_blocks:
            logs.event("subscription replay bounded: older blocks not delivered",
                       logging.WARNING, kind=feed.kind, missed=height - through,
                       replayed=self._replay_blocks)  # fmt: skip
            first = height - self._replay_blocks + 1
        if first > height:
            return
        if feed.kind == "newHeads":
            for number in range(first, height + 1):
                block = await socket.request("eth_getBlockByNumber", [hex(number), False],
                                             self._timeout)  # fmt: skip
                if isinstance(block, dict):
                    feed.deliver(header_of(block, feed.header_fields))
            return
        criteria = dict(feed.params[1]) if len(feed.params) > 1 else {}
        found = await socket.request(
            "eth_getLogs",
            [{**criteria, "fromBlock": hex(first), "toBlock": hex(height)}],
            self._timeout,
        )
        for log in found if isinstance(found, list) else []:
            feed.deliver(log)
        feed.logs_through = max(feed.logs_through or 0, height)

    async def _end(self, feed: Feed) -> None:
        """A feed nobody listens to any more: unsubscribed on its node, best effort."""
        mover = feed.mover
        if mover is not None:
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await mover
        socket, upstream_id = feed.socket, feed.upstream_id
        if socket is None or upstream_id is None:
            return
        self._routes.get(socket, {}).pop(upstream_id, None)
        feed.socket = feed.upstream_id = None
        self._metrics.ws_upstream_subscriptions.labels(feed.kind).dec()
        with contextlib.suppress(Exception):
            await socket.request("eth_unsubscribe", [upstream_id], self._timeout)

    async def _move(self, feed: Feed, failed: int | None) -> None:
        """Re-establish a feed whose node socket was lost, on another node when there is one,
        under the same client ids; tried again until it works or nobody listens."""
        delay = 0.1
        while feed.clients and self._feeds.get(feed.key) is feed and not self._closed:
            try:
                await self._place(feed, avoid=() if failed is None else (failed,))
                self._metrics.ws_resubscriptions.labels(feed.kind).inc()
                logs.event("subscription moved", kind=feed.kind,
                           node=self._pool.node_name(feed.node or 0))  # fmt: skip
                return
            except Exception as exc:
                logs.event("subscription not re-established yet", logging.WARNING,
                           kind=feed.kind, error=type(exc).__name__,
                           retry_seconds=delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    # --- node sockets -----------------------------------------------------------------------

    async def _socket(self, node: int, psi: str | None, headers: Mapping[str, str]) -> NodeSocket:
        key = (node, psi)
        socket = self._sockets.get(key)
        if socket is not None and not socket.lost.is_set():
            return socket
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.get_running_loop().create_future()
            self._opening[key] = opening
            try:
                socket = await self._open(node, headers)
            except Exception as exc:
                opening.set_exception(exc)
                opening.exception()
                raise
            finally:
                del self._opening[key]
            self._sockets[key] = socket
            opening.set_result(socket)
            return socket
        return await asyncio.shield(opening)

    async def _open(self, node: int, headers: Mapping[str, str]) -> NodeSocket:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        socket: NodeSocket

        def notified(upstream_id: str, result: Any) -> None:
            if self._clocks.get(socket) == upstream_id:
                self._tick(socket, result)
                return
            feed = self._routes.get(socket, {}).get(upstream_id)
            if feed is not None:
                feed.notified(result)
                return
            parked = self._parked.setdefault(socket, deque(maxlen=PARKED_MAX))
            parked.append((upstream_id, result))

        socket = NodeSocket(self._session, self._urls[node], headers, notified, self._lost,
                            self._pool.node_name(node))  # fmt: skip
        await socket.open(OPEN_TIMEOUT)
        try:
            clock = await socket.request("eth_subscribe", ["newHeads"], self._timeout)
            height = await socket.request("eth_blockNumber", [], self._timeout)
        except BaseException:
            await socket.close()
            raise
        if isinstance(clock, str):
            self._clocks[socket] = clock
        if isinstance(height, str):
            self._heads.setdefault(socket, int(height, 16))
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="node sockets watch")
        return socket

    async def _watch(self) -> None:
        """A node the pool takes out of rotation (it stopped answering, or fell behind) loses
        its sockets here too, so that their feeds move; so does a socket whose heads stay
        behind what the node answers over HTTP (a WebSocket that hangs may still answer pings).
        """
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            for (node, _), socket in list(self._sockets.items()):
                reason = None
                if not self._pool.in_rotation(node):
                    reason = "node out of rotation"
                elif self._stalled(socket, node):
                    reason = "the node's WebSocket stopped sending its new blocks"
                if reason is not None:
                    logs.event(f"{reason}: its WebSocket is closed", logging.WARNING,
                               node=socket.name)  # fmt: skip
                    await socket.close()

    def _stalled(self, socket: NodeSocket, node: int) -> bool:
        """Behind the node's height by more than a block at two looks in a row."""
        heard, height = self._heads.get(socket), self._pool.height(node)
        if heard is None or height is None or height <= heard + 1:
            self._behind.discard(socket)
            return False
        if socket in self._behind:
            return True
        self._behind.add(socket)
        return False

    def _tick(self, socket: NodeSocket, head: Any) -> None:
        """The node's new head N: its logs feeds have delivered every log up to N - 1 (a node
        sends a block's logs before the next block's head)."""
        number = _quantity(head, "number")
        if number is None:
            return
        self._heads[socket] = number
        for feed in self._routes.get(socket, {}).values():
            if feed.kind == "logs" and not feed.replaying and feed.logs_through is not None:
                feed.logs_through = max(feed.logs_through, number - 1)

    def _lost(self, socket: NodeSocket) -> None:
        """A node socket ended: its feeds move elsewhere."""
        for key, known in list(self._sockets.items()):
            if known is socket:
                del self._sockets[key]
        self._parked.pop(socket, None)
        self._clocks.pop(socket, None)
        self._heads.pop(socket, None)
        self._behind.discard(socket)
        feeds = self._routes.pop(socket, {})
        if self._closed:
            return
        for feed in feeds.values():
            failed = feed.node
            feed.socket = feed.upstream_id = None
            self._metrics.ws_upstream_subscriptions.labels(feed.kind).dec()
            logs.event("node WebSocket lost: moving its subscription", logging.WARNING,
                       node=socket.name, kind=feed.kind)  # fmt: skip
            if feed.mover is None:
                feed.mover = asyncio.create_task(self._moving(feed, failed),
                                                 name=f"feed {feed.kind} move")  # fmt: skip

    async def _moving(self, feed: Feed, failed: int | None) -> None:
        try:
            await self._move(feed, failed)
        finally:
            feed.mover = None
