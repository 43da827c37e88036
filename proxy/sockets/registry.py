"""Every open client socket of this replica: how many each user holds (QSIGNER_WS_MAX_CONNECTIONS),
and closing those whose credentials no longer hold.

`user disable`, `apikey revoke` (and `user passwd`, grants, ...) announce themselves to every
replica through the identity row cache's NOTIFY (`RowCache.on_forget`), within a second. Each
announcement about a user or an API key makes the registry check again the credentials of the
sockets it concerns (a lost listener: of every socket), and close those refused with 1008.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode

from proxy import logs
from proxy.errors import RateLimited, Unauthorized
from proxy.identity.model import Principal
from proxy.identity.rowcache import RowCache
from proxy.metrics import Metrics
from proxy.sockets.session import SocketSession

# Checks a socket's credential again: the principal it stands for now, or Unauthorized.
Recheck = Callable[[SocketSession], Awaitable[Principal]]
REVOKED = "credentials revoked or user disabled"


class SocketRegistry:
    def __init__(self, rows: RowCache, recheck: Recheck, max_per_user: int,
                 metrics: Metrics) -> None:  # fmt: skip
        self._rows = rows
        self._recheck = recheck
        self._max_per_user = max_per_user
        self._metrics = metrics
        self._sessions: dict[int, SocketSession] = {}
        self._by_user: dict[str, set[int]] = {}
        self._checking: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        rows.on_forget(self._changed)

    @property
    def generation(self) -> int:
        """Changes with every announcement: a socket authenticated before one is checked again
        (`add`), as the announcement may have come before it was registered."""
        return self._rows.generation

    def admit(self, user_id: str) -> None:
        """Refuses (RateLimited) a socket beyond the user's limit in this replica."""
        if len(self._by_user.get(user_id, ())) >= self._max_per_user:
            raise RateLimited(f"at most {self._max_per_user} WebSocket connections per user "
                              "(QSIGNER_WS_MAX_CONNECTIONS)")  # fmt: skip

    def add(self, session: SocketSession, generation: int) -> None:
        self._sessions[session.id] = session
        self._by_user.setdefault(session.user_id, set()).add(session.id)
        self._metrics.ws_connections.inc()
        if generation != self._rows.generation:
            self._check(session)

    def remove(self, session: SocketSession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        self._metrics.ws_connections.dec()
        same_user = self._by_user.get(session.user_id)
        if same_user is not None:
            same_user.discard(session.id)
            if not same_user:
                del self._by_user[session.user_id]
        task = self._checking.pop(session.id, None)
        if task is not None:
            task.cancel()

    def sessions(self) -> list[SocketSession]:
        return list(self._sessions.values())

    def _changed(self, kind: str, key: str | None) -> None:
        if key is None:  # the listener was lost or is back: anything may have changed
            concerned = list(self._sessions.values())
        elif kind == "user":
            concerned = [self._sessions[n] for n in self._by_user.get(key, ())]
        elif kind == "apikey":
            concerned = [s for s in self._sessions.values() if s.api_key_id == key]
        else:
            return
        for session in concerned:
            self._check(session)

    def _check(self, session: SocketSession) -> None:
        """Check the socket's credential again (once at a time; again after, if asked
        meanwhile)."""
        if session.closing is not None:
            return
        if session.id in self._checking:
            self._again.add(session.id)
            return
        self._checking[session.id] = asyncio.create_task(
            self._checked(session), name=f"socket {session.id} recheck"
        )

    async def _checked(self, session: SocketSession) -> None:
        try:
            while True:
                self._again.discard(session.id)
                try:
                    principal = await self._recheck(session)
                except Unauthorized:
                    logs.event("socket closed: " + REVOKED, user=session.user_id,
                               org=session.caller.principal.organisation)  # fmt: skip
                    session.close_soon(WSCloseCode.POLICY_VIOLATION, "revoked", REVOKED)
                    return
                except Exception as exc:
                    # The database may be down (the listener lost with it): the socket stays,
                    # and is checked again when the listener is back (announced as a change).
                    logs.event("socket credentials not checked", logging.WARNING,
                               user=session.user_id, error=type(exc).__name__)  # fmt: skip
                    return
                # A role change holds for the socket's next messages.
                session.caller.principal = principal
                if session.id not in self._again:
                    return
        finally:
            self._checking.pop(session.id, None)
            self._again.discard(session.id)
