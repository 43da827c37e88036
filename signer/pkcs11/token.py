"""A token this process is logged into and its pool of sessions (one operation at a time on
each), and `Hsm`, the opened module that logs into tokens and initialises new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e

from signer.ecdsa import check_digest
from signer.errors import (
    HsmError,
    KeyNotFound,
    NotLoggedIn,
    PinIncorrect,
    TokenNotFound,
)
from signer.executors import BoundedExecutor
from signer.pkcs11.key import (
    SECP256K1_PARAMS,
    HsmKey,
    _unwrap_ec_point,
    private_key_template,
)
from signer.pkcs11.module import (
    _CKR_OK,
    _CKU_SO,
    _CKU_USER,
    _acquire_module,
    _check_login,
    _encode_pin,
    _release_module,
    _translate,
)


class Hsm:
    """A PKCS#11 module opened by this process: its tokens, their sessions, a bounded executor.

    `sessions_per_token` sessions are opened when a token is logged into, each token with its
    own executor for async callers (so that a burst on one token never queues another's work)
    of as many threads: an async signature sends only `C_Sign` there and finishes on the event
    loop (low-s, recovery id), so each thread keeps its session busy. At most `queue_per_token`
    jobs wait for those threads; beyond that a call is refused at once (`Overloaded`) rather
    than queued without end.
    """

    def __init__(self, module_path: str, *, sessions_per_token: int = 4,
                 queue_per_token: int = 256) -> None:  # fmt: skip
        if sessions_per_token < 1:
            raise ValueError("sessions_per_token must be at least 1")
        self.module_path = module_path
        self.sessions_per_token = sessions_per_token
        self.queue_per_token = queue_per_token
        # First logins from async callers: one at a time (they hold `_lock`), and never behind
        # a token's signing work.
        self.executor = BoundedExecutor(1, queue_per_token, thread_name_prefix="pkcs11-login")
        self._state = _acquire_module(module_path)
        self._lib = self._state.lib
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> Hsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tokens, self._tokens = list(self._tokens.values()), {}
        self.executor.shutdown(wait=True, cancel_futures=True)
        for token in tokens:
            token.close()
        _release_module(self.module_path)

    def describe(self) -> str:
        """A short line proving the module answers (for readiness checks)."""
        try:
            slots = self._lib.get_slots(token_present=True)
        except p11e.PKCS11Error as exc:
            raise _translate(exc, "listing slots") from None
        return f"{self._lib.manufacturer_id} ({len(slots)} token slots)"

    def token_labels(self) -> list[str]:
        try:
            return [token.label for token in self._lib.get_tokens()]
        except p11e.PKCS11Error as exc:
            raise _translate(exc, "listing tokens") from None

    def _find_token(self, label: str) -> Any:
        for attempt in range(3):
            try:
                return self._lib.get_token(token_label=label)
            except p11e.NoSuchToken:
                raise TokenNotFound(f"no initialised token labelled {label!r}") from None
            except p11e.MultipleTokensReturned:
                raise TokenNotFound(f"more than one token is labelled {label!r}") from None
            except p11e.GeneralError as exc:
                # SoftHSM reads a token's file while another process (a second replica logging
                # in at the same moment) rewrites it, and answers CKR_GENERAL_ERROR: seen with
                # two `serve` on one token. Another read a moment later finds it whole.
                if attempt == 2:
                    raise _translate(exc, "finding the token") from None
                time.sleep(0.05 * (attempt + 1))
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "finding the token") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def login(self, label: str, pin: str) -> Token:
        """Log this process into the token once and open its sessions.

        Later calls for the same token do not touch the token (a second `C_Login` is refused,
        and each one rewrites SoftHSM's token file): they check that `pin` is the PIN the
        process logged in with, so a later caller proves knowledge of the PIN all the same.
        """
        with self._lock:
            if self._closed:
                raise HsmError("the HSM handle is closed")
            token = self._tokens.get(label)
            if token is None:
                token = Token._login(self, self._find_token(label), pin)
                self._tokens[label] = token
                return token
        token.check_pin(pin)
        return token

    async def login_async(self, label: str, pin: str) -> Token:
        """`login` from the event loop: a token already logged into costs a PIN check (an HMAC)
        on the loop; only a first login goes to the module's executor."""
        token = self._tokens.get(label)
        if token is not None:
            token.check_pin(pin)
            return token
        return await self.executor.run(self.login, label, pin)

    def token(self, label: str) -> Token:
        """A token this process has logged into."""
        token = self._tokens.get(label)
        if token is None:
            raise NotLoggedIn(f"this process has not logged into the token {label!r}")
        return token

    def initialise_token(self, label: str, so_pin: str, user_pin: str) -> str:
        """Initialise a fresh token on the first free slot; returns its serial.

        For SoftHSM set-up (dev, tests): a production HSM's tokens are made with its own tools.
        """
        if not 1 <= len(label.encode()) <= 32:
            raise ValueError("a token label is 1 to 32 bytes")
        so, padded = _encode_pin(so_pin), label.encode().ljust(32, b" ")
        _encode_pin(user_pin)
        with self._lock:  # two set-ups at once must not pick the same free slot
            if label in self.token_labels():
                raise HsmError(f"a token labelled {label!r} already exists")
            initialised = pkcs11.TokenFlag.TOKEN_INITIALIZED
            try:
                free = [s for s in self._lib.get_slots(token_present=True)
                        if not s.get_token().flags & initialised]  # fmt: skip
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "listing slots") from None
            if not free:
                raise HsmError("the PKCS#11 module has no free slot to initialise a token in")
            rv = self._state.raw.call("C_InitToken", free[0].slot_id, so, len(so), padded)
            if rv != _CKR_OK:
                raise HsmError(f"C_InitToken failed (CKR {rv:#x})")
        token = self._find_token(label)
        try:
            with token.open(rw=True) as session:
                raw = self._state.raw
                _check_login(raw.call("C_Login", session.handle, _CKU_SO, so, len(so)))
                try:
                    session.init_pin(user_pin)
                finally:
                    raw.call("C_Logout", session.handle)
        except p11e.PKCS11Error as exc:
            raise _translate(exc, "setting the user PIN") from None
        return str(token.serial.decode() if isinstance(token.serial, bytes) else token.serial)


class _Session:
    """One PKCS#11 session and the key handles found in it (handles are per session here)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.private_keys: dict[bytes, Any] = {}

    def private_key(self, key_id: bytes) -> Any:
        key = self.private_keys.get(key_id)
        if key is None:
            try:
                key = self.session.get_key(
                    object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, id=key_id
                )
            except p11e.NoSuchKey:
                raise KeyNotFound(f"no private key with id {key_id.hex()} on the token") from None
            self.private_keys[key_id] = key
        return key


class Token:
    """A token this process is logged into, with its pool of sessions."""

    def __init__(self, hsm: Hsm, token: Any, sessions: list[_Session], pin_mac: bytes) -> None:
        self.hsm = hsm
        self._generation = hsm._state.generation
        self._closed = False
        self.executor = BoundedExecutor(
            len(sessions), hsm.queue_per_token, thread_name_prefix=f"pkcs11-{token.label}"
        )
        self.label: str = token.label
        serial = token.serial
        self.serial: str = serial.decode().strip() if isinstance(serial, bytes) else str(serial)
        self._all = sessions
        self._free: queue.SimpleQueue[_Session] = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        self._pin_mac = pin_mac

    # A per-process random key: the PIN is only ever compared as an HMAC under it.
    _PIN_KEY = secrets.token_bytes(32)

    @classmethod
    def _login(cls, hsm: Hsm, token: Any, pin: str) -> Token:
        encoded = _encode_pin(pin)
        sessions: list[_Session] = []
        try:
            first = token.open(rw=True)
            sessions.append(_Session(first))
            _check_login(hsm._state.raw.call("C_Login", first.handle, _CKU_USER, encoded,
                                             len(encoded)))  # fmt: skip
            # Login state is per application and token: the other sessions share it. Each is
            # recorded as soon as it opens, so that a failure closes all of them (the last
            # close logs the process out again).
            while len(sessions) < hsm.sessions_per_token:
                sessions.append(_Session(token.open(rw=True)))
        except (p11e.PKCS11Error, HsmError) as exc:
            for opened in sessions:
                with contextlib.suppress(p11e.PKCS11Error):
                    opened.session.close()
            raise _translate(exc, "logging into the token") from None
        return cls(hsm, token, sessions, cls._mac(pin))

    @classmethod
    def _mac(cls, pin: str) -> bytes:
        return hmac.new(cls._PIN_KEY, _encode_pin(pin), hashlib.sha256).digest()

    def check_pin(self, pin: str) -> None:
        if not hmac.compare_digest(self._mac(pin), self._pin_mac):
            raise PinIncorrect("the PIN does not match the token's PIN")

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, wait for every borrowed session to come back, then close them all
        (closing the last session logs the process out of the token)."""
        self._closed = True
        self.executor.shutdown(wait=True, cancel_futures=True)
        deadline = time.monotonic() + timeout
        returned = 0
        while returned < len(self._all):
            try:
                self._free.get(timeout=max(0.0, deadline - time.monotonic()))
                returned += 1
            except queue.Empty:
                raise HsmError(f"token {self.label!r}: a session is still busy after {timeout}s"
                               ) from None  # fmt: skip
        for session in self._all:
            with contextlib.suppress(p11e.PKCS11Error):
                session.session.close()
        self._all = []

    def _check_usable(self) -> None:
        if self._closed or self.hsm._state.generation != self._generation:
            raise HsmError(f"token {self.label!r}: its HSM handle was closed")

    def _borrow(self, timeout: float = 30.0) -> _Session:
        self._check_usable()
        try:
            borrowed = self._free.get(timeout=timeout)
        except queue.Empty:
            raise HsmError(f"no free session on token {self.label!r} within {timeout}s") from None
        if self._closed:  # closed while we waited: give it back for close() to collect
            self._free.put(borrowed)
            raise HsmError(f"token {self.label!r}: its HSM handle was closed")
        return borrowed

    @contextlib.contextmanager
    def session(self, timeout: float = 30.0) -> Iterator[_Session]:
        """Borrow a session: one operation at a time on each."""
        borrowed = self._borrow(timeout)
        try:
            yield borrowed
        finally:
            self._free.put(borrowed)

    def generate_key(self, key_id: bytes, label: str) -> HsmKey:
        """A new secp256k1 key pair inside the token; the private key never leaves it."""
        public_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ID: key_id,
            Attribute.LABEL: label,
            Attribute.EC_PARAMS: SECP256K1_PARAMS,
        }
        private_template = private_key_template(key_id, label)
        with self.session() as borrowed:
            try:
                existing = list(borrowed.session.get_objects({Attribute.ID: key_id}))
                if existing:
                    raise HsmError(f"the token already holds a key with id {key_id.hex()}")
                public, _private = borrowed.session.generate_keypair(
                    KeyType.EC,
                    public_template=public_template,
                    private_template=private_template,
                    mechanism=Mechanism.EC_KEY_PAIR_GEN,
                )
                point = public[Attribute.EC_POINT]
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "generating a key pair") from None
        return HsmKey(self, key_id, label, _unwrap_ec_point(point))

    def destroy_key(self, key_id: bytes) -> None:
        """Destroy both halves of the key pair with that CKA_ID (a key made for an account
        whose registration then failed: nothing else may ever use it)."""
        with self.session() as borrowed:
            try:
                for obj in list(borrowed.session.get_objects({Attribute.ID: key_id})):
                    obj.destroy()
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "destroying a key pair") from None
            borrowed.private_keys.pop(key_id, None)

    def key(self, *, key_id: bytes | None = None, label: str | None = None) -> HsmKey:
        """The key with that CKA_ID or label (exactly one must match)."""
        if (key_id is None) == (label is None):
            raise ValueError("find a key by key_id or by label")
        attrs: dict[Any, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                 Attribute.KEY_TYPE: KeyType.EC}  # fmt: skip
        attrs[Attribute.ID if key_id is not None else Attribute.LABEL] = key_id or label
        what = f"id {key_id.hex()}" if key_id is not None else f"label {label!r}"
        with self.session() as borrowed:
            try:
                found = list(borrowed.session.get_objects(attrs))
                if len(found) != 1:
                    raise KeyNotFound(
                        f"{'no' if not found else 'more than one'} key with {what} on token "
                        f"{self.label!r}"
                    )
                public = found[0]
                found_id, found_label = public[Attribute.ID], public[Attribute.LABEL]
                point = public[Attribute.EC_POINT]
                borrowed.private_key(found_id)  # the private half must be there too
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "finding a key") from None
        return HsmKey(self, bytes(found_id), str(found_label), _unwrap_ec_point(point))

    def keys(self) -> list[HsmKey]:
        with self.session() as borrowed:
            try:
                ids = [
                    bytes(obj[Attribute.ID])
                    for obj in borrowed.session.get_objects(
                        {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC}
                    )
                ]
            except p11e.PKCS11Error as exc:
                raise _translate(exc, "listing keys") from None
        return [self.key(key_id=key_id) for key_id in ids]

    def sign_raw(self, key_id: bytes, digest: bytes) -> tuple[int, int]:
        """Plain ECDSA over the digest (`Mechanism.ECDSA`: no hashing in the HSM): (r, s)."""
        check_digest(digest)
        borrowed = self._borrow()  # (not `session()`: its generator costs ~1.5 µs a signature)
        try:
            raw = borrowed.private_key(key_id).sign(digest, mechanism=Mechanism.ECDSA)
        except p11e.PKCS11Error as exc:
            raise _translate(exc, "signing") from None
        finally:
            self._free.put(borrowed)
        if len(raw) != 64:
            raise HsmError(f"the HSM returned a {len(raw)}-byte ECDSA signature, expected 64")
        return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
