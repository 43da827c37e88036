"""The proxy's exception tree; each exception carries its JSON-RPC code and HTTP status.

    ProxyError                      -32603  500-free internal error (with a correlation id)
    ├── ParseError                  -32700  body is not JSON
    ├── InvalidRequest              -32600  not a JSON-RPC request
    │   └── BodyTooLarge            -32600  HTTP 413: over the body size limit
    ├── MethodNotFound              -32601  method unknown or refused
    ├── InvalidParams               -32602  bad parameters
    ├── Unauthorized                  4100  HTTP 401: missing/invalid/expired credentials,
    │   │                                   wrong password, disabled or locked user
    │   └── LockedOut                 4100  HTTP 401: too many wrong passwords in a row
    ├── Forbidden                     4100  `from` (or the method) not allowed to this caller
    ├── PolicyRefused               -32003  refused by policy or a balance check (data: reason)
    ├── RateLimited                 -32005  HTTP 429
    ├── NoNodeAvailable             -32002  HTTP 503
    │   └── SendOutcomeUnknown      -32002  HTTP 503: a send may have reached a node
    └── NodeError                   (node's)  a node's own JSON-RPC error, passed on unchanged
    BadInput                                command line: exit 2 with one line (also -32602)
    SettingsError                           a setting to fix, named (startup, command line)
    SystemFailure                           command line: exit 1 with one line (database or
                                            HSM unreachable or failing)

Handlers and services raise; one place turns them into responses or exit codes. Messages are
shown to callers: they name what to fix and never carry a password, PIN, key or token.
"""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    code = -32603
    http_status = 200

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class ParseError(ProxyError):
    code = -32700


class InvalidRequest(ProxyError):
    code = -32600


class BodyTooLarge(InvalidRequest):
    http_status = 413


class MethodNotFound(ProxyError):
    code = -32601


class InvalidParams(ProxyError):
    code = -32602


class BadInput(InvalidParams):
    """Bad input to a command or a request parameter: one clear line saying what to fix."""


class Unauthorized(ProxyError):
    code = 4100
    http_status = 401


class LockedOut(Unauthorized):
    pass


class Forbidden(ProxyError):
    code = 4100


class PolicyRefused(ProxyError):
    code = -32003


class RateLimited(ProxyError):
    code = -32005
    http_status = 429


class NoNodeAvailable(ProxyError):
    code = -32002
    http_status = 503


class NodeError(ProxyError):
    """A node answered with a JSON-RPC error: code, message and data are the node's own."""

    def __init__(self, code: int, message: str, data: Any = None, http_status: int = 200) -> None:
        super().__init__(message, data)
        self.code = code
        self.http_status = http_status


class SendOutcomeUnknown(NoNodeAvailable):
    """eth_sendRawTransaction failed after the request may have reached a node.

    Unlike a plain NoNodeAvailable, the transaction may be in a node's pool: its nonce is not
    free to give to another transaction until the hash is looked up.
    """

    def __init__(self, tx_hash: str) -> None:
        super().__init__(
            f"no node available; the transaction may still have reached one: {tx_hash}"
        )
        self.tx_hash = tx_hash


class SettingsError(Exception):
    """A configuration value that must be fixed; the message names the setting."""


class SystemFailure(Exception):
    """A command failed because the system did (database or HSM unreachable, an HSM error),
    not because of its input: exit 1 with one line."""
