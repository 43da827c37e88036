"""The proxy's exception tree; each exception carries its JSON-RPC code and HTTP status.

    ProxyError                      -32603  500-free internal error (with a correlation id)
    ├── InternalError               -32603  unexpected failure: only a correlation id is shown
    │   ├── HsmFailure              -32603  the HSM failed or returned a bad signature
    │   └── ReservationLost         -32603  recovery gave a nonce up while it was being signed
    │                                       (its replica looked dead): nothing was sent
    ├── ParseError                  -32700  body is not JSON
    ├── InvalidRequest              -32600  not a JSON-RPC request
    │   └── BodyTooLarge            -32600  HTTP 413: over the body size limit
    ├── MethodNotFound              -32601  method unknown or refused
    │   └── MethodNotAllowed        -32601  HTTP 405: an admin API route called with an HTTP
    │                                       method it does not take
    ├── InvalidParams               -32602  bad parameters
    │   └── BadInput                -32602  bad input: one line saying what to fix (exit 2
    │       │                               on the command line)
    │       ├── InputProblems           -32602  admin API input its model refused, each problem
    │       │                               with its location (query.limit, body.source)
    │       ├── NotFound                -32602  what the input names does not exist (or is not
    │       │                               the caller's organisation's): HTTP 404 in the admin API
    │       └── Conflict                -32602  the thing named is not in a state that allows it
    │                                       (already decided, expired): HTTP 409 in the admin API
    ├── Unauthorized                  4100  HTTP 401: missing/invalid/expired credentials,
    │   │                                   wrong password, disabled or locked user
    │   ├── LockedOut                 4100  HTTP 401: too many wrong passwords in a row
    │   └── TokenPinLocked            4100  HTTP 401: the token's PIN is locked (an operator
    │                                       must unlock it)
    ├── Forbidden                     4100  `from` (or the method) not allowed to this caller
    ├── UnrecognizedChain             4902  EIP-3326: the nodes serve another chain
    ├── PolicyRefused               -32003  refused by policy or a balance check (data: reason)
    ├── RateLimited                 -32005  HTTP 429: over a rate limit, or too much work waits
    ├── NoNodeAvailable             -32002  HTTP 503
    │   ├── SendOutcomeUnknown      -32002  HTTP 503: a send may have reached a node
    │   ├── NodeUnreachable         -32002  HTTP 503: one node failed in transport (the pool
    │   │                                   retries elsewhere or answers NoNodeAvailable)
    │   └── NodeBusy                -32002  HTTP 503: no connection to a node came free in time:
    │                                       nothing was sent (the pool tries the next node)
    ├── NodeTimeout                 -32603  a node did not answer this request in time
    │                                       (QSIGNER_READ_TIMEOUT); the node stays in rotation
    ├── NodeAnswerTooLarge          -32005  a node's answer is over QSIGNER_MAX_RESPONSE_BYTES
    ├── TesseraError                -32603  Tessera did not store a private payload (unreachable,
    │                                       too slow, or refused it): nothing was signed
    ├── DatabaseUnavailable         -32603  HTTP 503: the database does not answer (fail closed)
    ├── HsmUnavailable              -32002  HTTP 503: the account's token or key is not present
    │                                       (or the PKCS#11 module cannot be loaded)
    └── NodeError                   (node's)  a node's own JSON-RPC error, passed on unchanged
    SettingsError                           a setting to fix, named (startup, command line)
    SystemFailure                           command line: exit 1 with one line (database or
                                            HSM unreachable or failing)
    EnvelopeError                           a credential envelope does not open (identity)
    ChainError                              the dev chain (anvil) is missing or failed

Lower layers' exceptions, as `translate()` maps them (the first matching line wins):

    InvalidDigest, InvalidTransaction, InvalidMessage           -> InvalidParams
    CalldataError                                               -> InvalidParams
    PinIncorrect, EnvelopeError                                 -> Unauthorized
    PinLocked                                                   -> TokenPinLocked
    Overloaded                                                  -> RateLimited
    TokenNotFound, KeyNotFound, NotLoggedIn, ModuleNotFound     -> HsmUnavailable
    SignatureInvalid, HsmError, SignerError                     -> HsmFailure
    PolicyError, AmountError                                    -> InternalError
    SettingsError, ChainError, SystemFailure, anything else     -> InternalError

policy's PolicyError is a file that `policy set` refuses before installing it (bad input there,
never raised while serving); evaluate turns an AmountError into a deny.

Handlers and services raise; `translate()` is the one place that turns them into responses
(the command line turns them into exit codes). Messages are shown to callers: they name what to
fix and never carry a password, PIN, key or token.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from policy.abi import CalldataError
from proxy import logs
from signer.errors import (
    HsmError,
    InvalidDigest,
    InvalidMessage,
    InvalidTransaction,
    KeyNotFound,
    ModuleNotFound,
    NotLoggedIn,
    Overloaded,
    PinIncorrect,
    PinLocked,
    SignatureInvalid,
    SignerError,
    TokenNotFound,
)


class ProxyError(Exception):
    code = -32603
    http_status = 200

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InternalError(ProxyError):
    """An unexpected failure: the caller sees only a correlation id; the log has the rest."""


class HsmFailure(InternalError):
    """The HSM failed or returned a signature that does not verify (logged with the details)."""


class ReservationLost(InternalError):
    """Recovery gave this reservation's nonce up (its replica looked dead) before the signed
    bytes were stored: they must never be sent."""


class ParseError(ProxyError):
    code = -32700


class InvalidRequest(ProxyError):
    code = -32600


class BodyTooLarge(InvalidRequest):
    http_status = 413


class MethodNotFound(ProxyError):
    code = -32601


class MethodNotAllowed(MethodNotFound):
    """An admin API route called with an HTTP method it does not take; `allowed` are those it
    takes (the Allow header)."""

    http_status = 405

    def __init__(self, message: str, allowed: list[str] | None = None) -> None:
        super().__init__(message)
        self.allowed = allowed or []


class InvalidParams(ProxyError):
    code = -32602


class BadInput(InvalidParams):
    """Bad input to a command or a request parameter: one clear line saying what to fix."""


class InputProblems(BadInput):
    """A path, query or body of the admin API that its model refused: `problems` holds each
    (location, what is wrong), e.g. ("query.limit", "Input should be greater than 0")."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class NotFound(BadInput):
    """The user, key, approval or transaction named does not exist, or belongs to another
    organisation (the two are not told apart, so that nobody learns what another holds)."""


class Conflict(BadInput):
    """The thing named exists but its state refuses the change: an approval already decided
    or expired, a key already revoked."""


class Unauthorized(ProxyError):
    code = 4100
    http_status = 401


class LockedOut(Unauthorized):
    pass


class TokenPinLocked(Unauthorized):
    """The token locked its user PIN after wrong PINs: nobody signs until an operator unlocks it."""


class Forbidden(ProxyError):
    code = 4100


class UnrecognizedChain(ProxyError):
    """EIP-3326: the wallet does not know this chain."""

    code = 4902


class PolicyRefused(ProxyError):
    code = -32003


class RateLimited(ProxyError):
    code = -32005
    http_status = 429


class NoNodeAvailable(ProxyError):
    code = -32002
    http_status = 503


class DatabaseUnavailable(ProxyError):
    """The database is down, restarting or not answering in time: requests that need it fail
    closed (never served from what was known before), and succeed again once it is back."""

    code = -32603
    http_status = 503


class HsmUnavailable(ProxyError):
    """The account's token or key is not in the HSM (or the module cannot be loaded): an
    operator must restore it; retrying later may succeed."""

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

    def __init__(self, tx_hash: str, reason: str | None = None) -> None:
        super().__init__(
            reason or f"no node available; the transaction may still have reached one: {tx_hash}"
        )
        self.tx_hash = tx_hash


class SettingsError(Exception):
    """A configuration value that must be fixed; the message names the setting."""


class NodeUnreachable(NoNodeAvailable):
    """A transport failure. `delivered` is False only when the request surely never left."""

    def __init__(self, reason: str, *, delivered: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


class NodeBusy(NoNodeAvailable):
    """The deadline passed while waiting for one of a node's connections (QSIGNER_NODE_CONNECTIONS
    requests were under way): the request was never sent, so even a send is safe to try elsewhere,
    and the node, busy rather than down, stays in rotation."""


class NodeTimeout(ProxyError):
    """A node took longer than the caller's deadline to answer (e.g. a wide eth_getLogs).

    -32603 with HTTP 200 rather than -32002 / 503: the nodes are there, this request was too slow,
    and trying it on another node would only make that one slow too.
    """


class TesseraError(ProxyError):
    """The organisation's Tessera did not store a private transaction's payload: unreachable,
    no answer in time, or a refusal (an unknown key, a 4xx or 5xx). Nothing was signed and no
    nonce was taken. The message names Tessera, never its URL's credentials."""


class NodeAnswerTooLarge(ProxyError):
    """A node's answer is larger than QSIGNER_MAX_RESPONSE_BYTES; the node stays in rotation.

    -32005 "limit exceeded" (EIP-1474), as hosted nodes answer an eth_getLogs over their limits,
    and clients know to ask for a narrower range; HTTP 200, unlike RateLimited's 429.
    """

    code = -32005


class EnvelopeError(Exception):
    """The envelope does not open with this secret (wrong secret, or not this row's envelope)."""


class ChainError(RuntimeError):
    """anvil is missing, did not start, or refused a call."""


class SystemFailure(Exception):
    """A command failed because the system did (database or HSM unreachable, an HSM error),
    not because of its input: exit 1 with one line."""


_UNAVAILABLE: dict[type[Exception], str] = {
    TokenNotFound: "the account's HSM token is not present: an operator must connect or restore it",
    KeyNotFound: "the account's key is not on its HSM token: an operator must restore it",
    NotLoggedIn: "the proxy is not logged into the account's HSM token",
    ModuleNotFound: "the HSM's PKCS#11 module cannot be loaded",
}


def translate(exc: Exception) -> ProxyError:
    """The one mapping of lower layers' exceptions to JSON-RPC errors (the table above)."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, InvalidDigest | InvalidTransaction | InvalidMessage | CalldataError):
        return InvalidParams(str(exc))
    if isinstance(exc, PinIncorrect):
        # The PIN in the caller's envelope no longer opens the token (changed on the HSM).
        return Unauthorized("the stored HSM credentials no longer open the token")
    if isinstance(exc, EnvelopeError):
        return Unauthorized("the stored credentials do not open with this secret")
    if isinstance(exc, Overloaded):
        return RateLimited("the signer is busy: too much work is waiting, try again shortly")
    if isinstance(exc, PinLocked):
        logs.event("hsm pin locked", logging.ERROR, error=type(exc).__name__)
        return TokenPinLocked("the token's PIN is locked: an operator must unlock it")
    unavailable = next((m for cls, m in _UNAVAILABLE.items() if isinstance(exc, cls)), None)
    if unavailable is not None:
        # Token labels and key ids are the operator's business: logged, not shown.
        logs.event("hsm unavailable", logging.ERROR, error=type(exc).__name__, detail=str(exc))
        return HsmUnavailable(unavailable)
    correlation = secrets.token_hex(6)
    logs.event("unexpected error", logging.ERROR, exc_info=True, correlation_id=correlation,
               error=type(exc).__name__)  # fmt: skip
    if isinstance(exc, SignatureInvalid):
        return HsmFailure(f"the HSM returned an invalid signature (correlation id {correlation})")
    if isinstance(exc, HsmError | SignerError):
        return HsmFailure(f"HSM error (correlation id {correlation})")
    return InternalError(f"internal error (correlation id {correlation})")
