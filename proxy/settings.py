"""The one frozen settings object, read once from the environment (and an optional TOML file).

Nothing else in the code base reads `os.environ`. The environment wins over the file. A bad
value raises `SettingsError` naming the variable to fix.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from proxy.errors import SettingsError
from proxy.ratelimit import trusted_networks
from signer.pkcs11 import find_softhsm_module

PREFIX = "QSIGNER_"


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:8545"
    upstreams: tuple[str, ...] = ()
    database_url: str | None = None
    pkcs11_module: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    chain_id: int | None = None
    pbkdf2_iterations: int = 600_000
    lockout_attempts: int = 5
    lockout_seconds: int = 900
    passthrough: tuple[str, ...] = ()
    tessera_url: str | None = None
    log_format: str | None = None
    event_loop: str = "uvloop"  # or "asyncio": the standard library's loop
    cors_origins: tuple[str, ...] = ()
    rate_limit: int = 0
    rate_burst: int = 0
    unlock_cache_seconds: int = 900
    unlock_cache_size: int = 10_000
    read_timeout: float = 10.0  # seconds a node may take over one caller's request
    node_connections: int = 64  # requests (hence connections) to one node at once
    max_response_bytes: int = 32 * 1024 * 1024  # a node's answer, at most
    max_in_flight: int = 64  # one account's transactions under way in a replica, at most
    caller_nonces: str = "respect"  # or "reassign": managed accounts always get the ledger's
    signed_tx_timeout: int = 600  # an eth_signTransaction nonce never seen is filled after this
    idempotency_ttl: int = 86400  # seconds an Idempotency-Key is remembered
    resend_seconds: int = 30  # a stored transaction not mined after this is sent again
    database_timeout: int = 5  # seconds a request waits for the database, at most
    hsm_queue_limit: int = 256
    unlock_threads: int = 2
    unlock_queue_limit: int = 64
    row_cache_seconds: int = 30
    auth_failure_rate: int = 20
    auth_failure_burst: int = 40
    trusted_proxies: tuple[str, ...] = ()  # reverse proxies whose X-Forwarded-For counts
    audit_checkpoint_rows: int = 1000  # a chain's head is signed after this many rows ...
    audit_checkpoint_seconds: int = 60  # ... or this many seconds, whichever comes first
    upstreams_ws: tuple[str, ...] = ()  # the nodes' WebSocket URLs; derived from upstreams if unset
    ws_max_connections: int = 32  # one user's open WebSockets in a replica, at most
    ws_max_subscriptions: int = 100  # eth_subscribe subscriptions of one WebSocket, at most
    ws_max_message_bytes: int = 1024 * 1024  # a client's message, at most (as an HTTP body)
    ws_send_queue: int = 256  # messages waiting for a slow client; past it, the socket closes
    ws_replay_blocks: int = 256  # a subscription moved to another node catches up this far back

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if config_file is not None:
            try:
                loaded = tomllib.loads(Path(config_file).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"--config {config_file}: {exc}") from None
            for key, value in loaded.items():
                name = key.upper().removeprefix(PREFIX)
                values[name] = value if isinstance(value, str) else _toml_value(key, value)
        for key, value in environ.items():
            if key.startswith(PREFIX):
                values[key.removeprefix(PREFIX)] = value
        known = {f.name.upper(): f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for name, raw in values.items():
            spec = known.get(name)
            if spec is None:
                continue  # other QSIGNER_ variables (e.g. a test's) are not ours to refuse
            kwargs[spec.name] = _parse(PREFIX + name, str(spec.type), raw)
        settings = cls(**kwargs)
        if settings.pkcs11_module is None:
            settings = replace(settings, pkcs11_module=find_softhsm_module())
        settings.check()
        return settings

    def check(self) -> None:
        trusted_networks(self.trusted_proxies)  # SettingsError naming the bad entry
        if self.pbkdf2_iterations < 100_000:
            raise SettingsError("QSIGNER_PBKDF2_ITERATIONS must be at least 100000")
        if self.lockout_attempts < 1 or self.lockout_seconds < 1:
            raise SettingsError("QSIGNER_LOCKOUT_ATTEMPTS and QSIGNER_LOCKOUT_SECONDS must be >= 1")
        if self.database_timeout < 1:
            raise SettingsError("QSIGNER_DATABASE_TIMEOUT must be at least 1 (seconds)")
        if self.hsm_queue_limit < 0:
            raise SettingsError("QSIGNER_HSM_QUEUE_LIMIT must be 0 or more")
        if self.unlock_threads < 1 or self.unlock_queue_limit < 0:
            raise SettingsError(
                "QSIGNER_UNLOCK_THREADS must be >= 1, QSIGNER_UNLOCK_QUEUE_LIMIT >= 0"
            )
        if min(self.row_cache_seconds, self.auth_failure_rate, self.auth_failure_burst) < 0:
            raise SettingsError("QSIGNER_ROW_CACHE_SECONDS and QSIGNER_AUTH_FAILURE_RATE, "
                                "_BURST must be >= 0")  # fmt: skip
        if self.log_format not in (None, "json", "text"):
            raise SettingsError("QSIGNER_LOG_FORMAT must be json or text")
        if self.event_loop not in ("uvloop", "asyncio"):
            raise SettingsError("QSIGNER_EVENT_LOOP must be uvloop or asyncio")
        if not self.read_timeout > 0:
            raise SettingsError("QSIGNER_READ_TIMEOUT must be a number of seconds above 0")
        if self.node_connections < 1:
            raise SettingsError("QSIGNER_NODE_CONNECTIONS must be at least 1")
        if self.max_response_bytes < 1024:
            raise SettingsError("QSIGNER_MAX_RESPONSE_BYTES must be at least 1024")
        if self.max_in_flight < 1:
            raise SettingsError("QSIGNER_MAX_IN_FLIGHT must be at least 1")
        if self.caller_nonces not in ("respect", "reassign"):
            raise SettingsError("QSIGNER_CALLER_NONCES must be respect or reassign")
        if min(self.signed_tx_timeout, self.idempotency_ttl, self.resend_seconds) < 1:
            raise SettingsError("QSIGNER_SIGNED_TX_TIMEOUT, QSIGNER_IDEMPOTENCY_TTL and "
                                "QSIGNER_RESEND_SECONDS must be at least 1 (seconds)")  # fmt: skip

        if min(self.ws_max_connections, self.ws_max_subscriptions, self.ws_send_queue,
               self.ws_replay_blocks) < 1:  # fmt: skip
            raise SettingsError("QSIGNER_WS_MAX_CONNECTIONS, _MAX_SUBSCRIPTIONS, _SEND_QUEUE and "
                                "_REPLAY_BLOCKS must be at least 1")  # fmt: skip
        if self.ws_max_message_bytes < 1024:
            raise SettingsError("QSIGNER_WS_MAX_MESSAGE_BYTES must be at least 1024")
        if self.upstreams_ws and len(self.upstreams_ws) != len(self.upstreams):
            raise SettingsError("QSIGNER_UPSTREAMS_WS must name one WebSocket URL per node of "
                                "QSIGNER_UPSTREAMS, in the same order")  # fmt: skip
        if self.audit_checkpoint_rows < 1 or self.audit_checkpoint_seconds < 1:
            raise SettingsError("QSIGNER_AUDIT_CHECKPOINT_ROWS and "
                                "QSIGNER_AUDIT_CHECKPOINT_SECONDS must be at least 1")  # fmt: skip

    def require_database(self) -> str:
        if not self.database_url:
            raise SettingsError("QSIGNER_DATABASE_URL is not set (a PostgreSQL DSN)")
        return self.database_url

    def require_pkcs11_module(self) -> str:
        if not self.pkcs11_module:
            raise SettingsError(
                "QSIGNER_PKCS11_MODULE is not set and SoftHSM2 was not found in the usual places"
            )
        return self.pkcs11_module


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool | int):
        return str(value)
    raise SettingsError(f"--config: {key} must be a string, a number or a list")


def _parse(variable: str, annotation: str, raw: str) -> Any:
    raw = raw.strip()
    if annotation.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if annotation.startswith("int"):
        try:
            return int(raw, 0)
        except ValueError:
            raise SettingsError(f"{variable} must be an integer") from None
    if annotation.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{variable} must be a number") from None
    return raw or None
