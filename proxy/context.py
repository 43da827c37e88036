"""What a handler gets: the caller and the long-lived services of the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.audit import AuditLog
from proxy.forwarding import Forwarding
from proxy.guard.gate import Gate
from proxy.identity import Identity, Principal
from proxy.identity.auth import JwtVerifier
from proxy.identity.credentials import HsmCredentials
from proxy.keyring import Keyring
from proxy.ledger.nonces import Ledger
from proxy.metrics import Metrics
from proxy.nodes.facts import ChainFacts
from proxy.nodes.pool import NodePool
from proxy.nodes.tessera import Tessera
from proxy.probes import HsmProbe
from proxy.ratelimit import AuthFailureThrottle, RateLimiter
from proxy.settings import Settings
from signer.pkcs11 import Hsm

if TYPE_CHECKING:
    from proxy.events.stream import TransactionEvents
    from proxy.sockets.feeds import SubscriptionHub
    from proxy.sockets.registry import SocketRegistry
    from proxy.sockets.session import SocketSession


@dataclass(frozen=True)
class Services:
    """The app's long-lived services, wired once in its cleanup_ctx and closed with it; one per
    process. Immutable: what changes at run time (caches, counters) belongs to a service."""

    settings: Settings
    pool: NodePool
    identity: Identity
    hsm: Hsm
    verifier: JwtVerifier
    ledger: Ledger
    metrics: Metrics
    rate_limiter: RateLimiter
    forwarding: Forwarding
    keyring: Keyring
    hsm_probe: HsmProbe
    auth_failures: AuthFailureThrottle
    chain_facts: ChainFacts
    audit: AuditLog
    gate: Gate
    tessera: Tessera
    sockets: SocketRegistry
    subscriptions: SubscriptionHub
    events: TransactionEvents


@dataclass
class Caller:
    """An authenticated caller; `credentials` is set once unlocked (API key, or password)."""

    principal: Principal
    credentials: HsmCredentials | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    forward_headers: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    idempotency_key: str | None = None  # the Idempotency-Key header
    socket: SocketSession | None = None  # the WebSocket the call came on, if it did
