"""Keys in an HSM over PKCS#11 (python-pkcs11), safe to use from many threads at once.

The locking trap (FIELD-NOTES): python-pkcs11 calls `C_Initialize(NULL)`, which tells the module
that the application is single-threaded, so SoftHSM turns its internal locking off and concurrent
sessions corrupt its state. PKCS#11 has a proper answer: initialise with `CKF_OS_LOCKING_OK`, which
obliges the module to lock with the OS primitives. python-pkcs11 offers no way to pass those
arguments, so the first time a module path is opened in this process we let python-pkcs11 load
it, then, before any session exists, call `C_Finalize(NULL)` and `C_Initialize(&args)` through
the module's own function list (ctypes). On top of that, each session serves one operation at a
time (a pool of sessions per token) and the process logs into each token once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from signer.errors import (
    HsmError,
    ModuleNotFound,
    PinIncorrect,
    PinLocked,
)

SOFTHSM_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str | None:
    """SoftHSM2's PKCS#11 library in the usual places, or None."""
    return next((path for path in SOFTHSM_MODULE_PATHS if os.path.isfile(path)), None)


# --- the raw PKCS#11 calls python-pkcs11 does not offer ------------------------------------------

_CKR_OK = 0
_CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
_CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
_CKR_PIN_INCORRECT = 0xA0
_CKR_PIN_LOCKED = 0xA4
_CKR_PIN_LEN_RANGE = 0xA2
_CKR_USER_ALREADY_LOGGED_IN = 0x100
_CKF_OS_LOCKING_OK = 0x2
_CKU_SO = 0
_CKU_USER = 1

_ULONG = ctypes.c_ulong
_RV = ctypes.c_ulong


class _InitializeArgs(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", _ULONG),
        ("pReserved", ctypes.c_void_p),
    )


# The head of CK_FUNCTION_LIST (PKCS#11 v2.40 section 5.16 order), as far as we need it.
_FUNCTION_NAMES = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
    "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
    "C_InitToken", "C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
    "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState", "C_SetOperationState",
    "C_Login", "C_Logout",
)  # fmt: skip


class _FunctionListHead(ctypes.Structure):
    _fields_ = (
        ("version", ctypes.c_ubyte * 2),
        *((name, ctypes.c_void_p) for name in _FUNCTION_NAMES),
    )


_SIGNATURES: dict[str, tuple[Any, ...]] = {
    "C_Initialize": (ctypes.c_void_p,),
    "C_Finalize": (ctypes.c_void_p,),
    "C_InitToken": (_ULONG, ctypes.c_char_p, _ULONG, ctypes.c_char_p),
    "C_Login": (_ULONG, _ULONG, ctypes.c_char_p, _ULONG),
    "C_Logout": (_ULONG,),
}


class _RawModule:
    """Direct calls into a PKCS#11 module through its `C_GetFunctionList` table."""

    def __init__(self, path: str) -> None:
        self._dll = ctypes.CDLL(path)
        head = ctypes.POINTER(_FunctionListHead)()
        get_list = self._dll.C_GetFunctionList
        get_list.restype = _RV
        get_list.argtypes = (ctypes.POINTER(ctypes.POINTER(_FunctionListHead)),)
        rv = get_list(ctypes.byref(head))
        if rv != _CKR_OK:
            raise HsmError(f"C_GetFunctionList failed (CKR {rv:#x})")
        self._functions = {
            name: ctypes.CFUNCTYPE(_RV, *args)(getattr(head.contents, name))
            for name, args in _SIGNATURES.items()
        }

    def call(self, name: str, *args: Any) -> int:
        return int(self._functions[name](*args))

    def initialise_with_os_locking(self) -> None:
        args = _InitializeArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
        rv = self.call("C_Initialize", ctypes.byref(args))
        if rv != _CKR_OK:
            raise HsmError(f"C_Initialize with CKF_OS_LOCKING_OK failed (CKR {rv:#x})")

    def finalise(self) -> None:
        rv = self.call("C_Finalize", None)
        if rv not in (_CKR_OK, _CKR_CRYPTOKI_NOT_INITIALIZED):
            raise HsmError(f"C_Finalize failed (CKR {rv:#x})")


@dataclass
class _ModuleState:
    lib: Any
    raw: _RawModule
    users: int = 0
    # Bumped at every finalisation: session and object handles from an earlier
    # initialisation are meaningless afterwards (SoftHSM numbers them from 1 again).
    generation: int = 0


_modules: dict[str, _ModuleState] = {}
_modules_lock = threading.Lock()


def _acquire_module(path: str) -> _ModuleState:
    """Load (once per process) and initialise the module with OS locking; count the users.

    The PKCS#11 library's initialisation is process-wide state, so this registry is too: two
    `Hsm` objects on one module share one initialisation, and the last to close finalises it.
    Keyed by the real path: a symlink and its target are one library. Nothing else in the
    process may call python-pkcs11's `reinitialize()` or `unload()` on it (that would undo the
    locking set up here).
    """
    if not os.path.isfile(path):
        raise ModuleNotFound(f"PKCS#11 module not found: {path}")
    path = os.path.realpath(path)
    with _modules_lock:
        state = _modules.get(path)
        if state is None:
            try:
                lib = pkcs11.lib(path)  # loads and calls C_Initialize(NULL) the first time
            except p11e.PKCS11Error as exc:
                raise ModuleNotFound(f"cannot load the PKCS#11 module {path}: {exc}") from None
            raw = _RawModule(path)
            # Must succeed: "not initialised" would mean this is not python-pkcs11's instance
            # and the locking below would not apply to it.
            rv = raw.call("C_Finalize", None)
            if rv != _CKR_OK:
                raise HsmError(f"C_Finalize after loading failed (CKR {rv:#x})")
            state = _ModuleState(lib=lib, raw=raw)
            _modules[path] = state
        if state.users == 0:
            state.raw.initialise_with_os_locking()
        state.users += 1
        return state


def _release_module(path: str) -> None:
    with _modules_lock:
        state = _modules[os.path.realpath(path)]
        state.users -= 1
        if state.users == 0:
            state.generation += 1
            state.raw.finalise()


def open_module_users() -> int:
    """How many `Hsm` handles are open in this process (tests check that none leaks)."""
    with _modules_lock:
        return sum(state.users for state in _modules.values())


def _translate(exc: Exception, doing: str) -> HsmError:
    """One clear `HsmError` for a python-pkcs11 failure; never includes a PIN."""
    if isinstance(exc, p11e.PinIncorrect):
        return PinIncorrect("the token refused the PIN")
    if isinstance(exc, p11e.PinLocked):
        return PinLocked("the token's user PIN is locked after too many wrong attempts")
    if isinstance(exc, HsmError):
        return exc
    return HsmError(f"HSM error while {doing}: {type(exc).__name__}")


def _encode_pin(pin: object) -> bytes:
    """A PIN as UTF-8; anything else is refused without the PIN in the exception."""
    if not isinstance(pin, str) or not pin:
        raise PinIncorrect("a PIN must be a non-empty string")
    try:
        return pin.encode()
    except UnicodeEncodeError:
        raise PinIncorrect("a PIN must be valid Unicode text") from None


def _check_login(rv: int) -> None:
    if rv == _CKR_OK:
        return
    if rv == _CKR_USER_ALREADY_LOGGED_IN:
        # Login state belongs to the process: another Hsm handle on the same module holds it.
        raise HsmError("this process is already logged into the token through another handle")
    if rv in (_CKR_PIN_INCORRECT, _CKR_PIN_LEN_RANGE):
        raise PinIncorrect("the token refused the PIN")
    if rv == _CKR_PIN_LOCKED:
        raise PinLocked("the token's user PIN is locked after too many wrong attempts")
    raise HsmError(f"C_Login failed (CKR {rv:#x})")
