"""The one frozen settings object, read once from the environment (and an optional TOML file).

Nothing else in the code base reads `os.environ`. The environment wins over the file. A bad
value raises `SettingsError` naming the variable to fix.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from proxy.errors import SettingsError
from proxy.ratelimit import trusted_networks
from signer.pkcs11 import find_softhsm_module

PREFIX = "QSIGNER_"
T = TypeVar("T")


def setting(default: T, meaning: str, *, unset: str | None = None) -> T:
    """A field of `Settings`, with the one line that docs/configuration.md shows for it; `unset`
    says what an empty default (None, none, 0) means. `configuration_table()` renders them."""
    return field(default=default, metadata={"meaning": meaning, "unset": unset})


@dataclass(frozen=True)
class Settings:
    # Each variable is QSIGNER_ + the field's name in capitals. The meanings are the user's
    # reference (docs/configuration.md is generated from them: scripts/configuration_table.py).
    listen: str = setting("127.0.0.1:8545", "host:port the proxy serves on")
    upstreams: tuple[str, ...] = setting(
        (),
        "the nodes' JSON-RPC URLs (http or https), comma-separated; a URL may carry "
        "credentials or an API key (`https://user:pass@host`, `/v3/<key>`), which `/readyz`, "
        "logs and errors never show",
        unset="required for `serve`",
    )
    database_url: str | None = setting(
        None, "PostgreSQL DSN: the one state the replicas share", unset="required for `serve`"
    )
    pkcs11_module: str | None = setting(
        None, "path of the HSM's PKCS#11 library", unset="SoftHSM2's, found in the usual places"
    )
    jwt_secret: str | None = setting(
        None,
        "HS256 secret (at least 32 bytes) that JWTs are verified with; `token issue` signs with it",
        unset="`serve` needs exactly one of the three JWT verifiers",
    )
    jwt_public_key: str | None = setting(
        None,
        "path of a PEM public key that JWTs are verified with: RSA (RS256), P-256 (ES256) "
        "or Ed25519 (EdDSA)",
        unset="see `QSIGNER_JWT_SECRET`",
    )
    jwt_jwks_url: str | None = setting(
        None,
        "the identity provider's JWKS URL that JWTs are verified with (keys kept 5 min, "
        "fetched again for an unknown `kid` at most every 5 s)",
        unset="see `QSIGNER_JWT_SECRET`",
    )
    jwt_issuer: str | None = setting(None, "the `iss` every JWT must carry", unset="not checked")
    jwt_audience: str | None = setting(None, "the `aud` every JWT must carry", unset="not checked")
    chain_id: int | None = setting(
        None,
        "the chain id the nodes must serve (they must also agree with each other); decimal or 0x",
        unset="read from the nodes",
    )
    pbkdf2_iterations: int = setting(
        600_000, "PBKDF2-HMAC-SHA256 iterations for new password envelopes (at least 100000)"
    )
    lockout_attempts: int = setting(5, "wrong passwords in a row that lock a user")
    lockout_seconds: int = setting(
        900, "seconds a lockout lasts; wrong passwords closer together than this are in a row"
    )
    passthrough: tuple[str, ...] = setting(
        (),
        "methods or namespaces (`txpool_*`) forwarded to the nodes besides the allowlist of "
        "[rpc.md](rpc.md), comma-separated; never one that signs with a node's keys",
        unset="only the allowlist",
    )
    tessera_url: str | None = setting(
        None,
        "Tessera's third-party API, for the private transactions of organisations without "
        "a Tessera of their own (`org set-tessera`)",
        unset="`privateFor` refused for those organisations",
    )
    log_format: str | None = setting(
        None, "`json` (one object a line) or `text`", unset="`text` on a terminal, else `json`"
    )
    event_loop: str = setting("uvloop", "`uvloop`, or `asyncio` for the standard library's")
    cors_origins: tuple[str, ...] = setting(
        (),
        "origins whose web pages may call the proxy from a browser, comma-separated (`*` for any)",
        unset="browsers are refused",
    )
    rate_limit: int = setting(0, "JSON-RPC calls per second one user may make", unset="no limit")
    rate_burst: int = setting(
        0,
        "calls one user may make at once, within the rate limit",
        unset="twice `QSIGNER_RATE_LIMIT`",
    )
    unlock_cache_seconds: int = setting(
        900, "seconds an unlocked password stays cached in a replica's memory"
    )
    unlock_cache_size: int = setting(
        10_000,
        "entries of each of a replica's credential caches (unlocked passwords, API keys, "
        "rows read to authenticate), at most",
    )
    read_timeout: float = setting(
        10.0,
        "seconds a node (or Tessera) may take over one caller's request; also the longest "
        "wait for a free connection or an account's place",
    )
    node_connections: int = setting(
        64, "requests (hence connections) to one node at once; more wait for a free one"
    )
    max_response_bytes: int = setting(
        32 * 1024 * 1024,
        "a node's answer, at most (32 MiB); a larger one fails for that caller with -32005",
    )
    max_in_flight: int = setting(
        64,
        "one account's transactions under way in a replica (from the nonce's reservation to "
        "the node's answer); as many more wait, beyond that -32005",
    )
    caller_nonces: str = setting(
        "respect",
        "`respect`: a nonce the caller gives is used as given, and refused if the "
        "proxy already used it; `reassign`: the proxy's accounts always get the ledger's next",
    )
    signed_tx_timeout: int = setting(
        600,
        "seconds after which a nonce reserved by `eth_signTransaction`, whose transaction "
        "never appeared, is filled",
    )
    idempotency_ttl: int = setting(86400, "seconds an `Idempotency-Key` is remembered")
    resend_seconds: int = setting(
        30, "seconds after which a stored transaction not yet mined is sent again (same bytes)"
    )
    database_timeout: int = setting(
        5, "seconds a request waits for the database before it fails closed (HTTP 503)"
    )
    hsm_queue_limit: int = setting(
        256, "signing calls that may wait for a token's sessions; beyond, -32005"
    )
    unlock_threads: int = setting(2, "threads that derive password keys (PBKDF2, first unlocks)")
    unlock_queue_limit: int = setting(
        64, "first unlocks that may wait for those threads; beyond, -32005"
    )
    row_cache_seconds: int = setting(
        30, "seconds the rows read to authenticate (users, keys, grants) may be cached, at most"
    )
    auth_failure_rate: int = setting(
        20, "failed authentications per second allowed from one client address (0: off)"
    )
    auth_failure_burst: int = setting(
        40, "failed authentications at once allowed from one client address"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "reverse proxies (addresses or CIDR blocks, comma-separated) whose "
        "`X-Forwarded-For` names the client",
        unset="the header is ignored",
    )
    audit_checkpoint_rows: int = setting(
        1000, "audit rows after which the audit key signs a chain's head"
    )
    audit_checkpoint_seconds: int = setting(
        60, "seconds after which the audit key signs a chain's head (rows or seconds: the first)"
    )
    upstreams_ws: tuple[str, ...] = setting(
        (),
        "the nodes' WebSocket URLs (ws or wss), comma-separated, in the order of "
        "`QSIGNER_UPSTREAMS`; used for `eth_subscribe`",
        unset="each upstream's URL with the ws(s) scheme (anvil; GoQuorum and geth serve "
        "WebSocket on a port of their own, so set it for them)",
    )
    ws_max_connections: int = setting(32, "one user's open WebSockets in a replica, at most")
    ws_max_subscriptions: int = setting(
        100, "`eth_subscribe` subscriptions of one WebSocket, at most; beyond, -32005"
    )
    ws_max_message_bytes: int = setting(
        1024 * 1024, "a WebSocket message from a client, at most (bytes); beyond, -32600"
    )
    ws_send_queue: int = setting(
        256, "messages waiting for a slow WebSocket client; past it, the socket is closed"
    )
    ws_replay_blocks: int = setting(
        256, "blocks a subscription moved to another node catches up on, at most"
    )
    webhook_timeout: int = setting(
        10, "seconds a webhook receiver has to answer a delivery; past it, the delivery failed"
    )
    webhook_retry_max: int = setting(
        300,
        "seconds between retries of a failing webhook, at most (the wait doubles from 1 s after "
        "each failure)",
    )
    webhook_give_up: int = setting(
        259200,
        "seconds after which an event not yet delivered to a webhook is given up (`expired`)",
    )
    event_retention: int = setting(
        86400,
        "seconds transaction events are kept once every webhook that wanted them has them",
    )

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
        if min(self.webhook_timeout, self.webhook_retry_max, self.webhook_give_up,
               self.event_retention) < 1:  # fmt: skip
            raise SettingsError("QSIGNER_WEBHOOK_TIMEOUT, _RETRY_MAX, _GIVE_UP and "
                                "QSIGNER_EVENT_RETENTION must be at least 1 (seconds)")  # fmt: skip
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


def configuration_table(settings_class: type[Settings] = Settings) -> str:
    """The Markdown table of every QSIGNER_ variable (name, meaning, default) that
    docs/configuration.md holds, built from the fields of `Settings`."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    for spec in fields(settings_class):
        meaning = spec.metadata.get("meaning")
        if not meaning:
            raise ValueError(f"Settings.{spec.name} has no meaning: declare it with setting()")
        name = f"`{PREFIX}{spec.name.upper()}`"
        rows.append(f"| {name} | {_cell(meaning)} | {_cell(_default_shown(spec))} |")
    return "\n".join(rows) + "\n"


def _default_shown(spec: Field[Any]) -> str:
    """The default as the code has it, and what an empty one means (its `unset` text)."""
    value, unset = spec.default, spec.metadata.get("unset")
    if value is None:
        shown = "unset"
    elif value == ():
        shown = "none"
    elif isinstance(value, float):
        shown = f"`{value:g}`"
    elif isinstance(value, tuple):
        shown = f"`{','.join(value)}`"
    else:
        shown = f"`{value}`"
    if unset is None:
        return shown
    if value not in (None, (), 0):
        raise ValueError(f"Settings.{spec.name}: `unset` explains an empty default only")
    return f"{shown}: {unset}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


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
