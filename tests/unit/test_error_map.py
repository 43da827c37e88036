"""Every exception class of `proxy`, `signer` and `policy` maps through `translate()` to the code
that the table in `proxy.errors`' docstring documents for it (issue 13, item 14)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable

import pytest

import proxy.errors
from proxy.errors import (
    InternalError,
    NodeError,
    NodeUnreachable,
    ProxyError,
    SendOutcomeUnknown,
    translate,
)

PACKAGES = ("proxy", "signer", "policy")
DOC = proxy.errors.__doc__ or ""
TREE, _, MAPPING = DOC.partition("Lower layers")


def _exception_classes() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package] + [
            importlib.import_module(info.name)
            for info in pkgutil.walk_packages(package.__path__, name + ".")
        ]
        for module in modules:
            for value in vars(module).values():
                if (isinstance(value, type) and issubclass(value, BaseException)
                        and value.__module__.partition(".")[0] in PACKAGES):  # fmt: skip
                    found.add(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _documented_codes() -> dict[str, int | None]:
    """Class name -> the code in the tree's second column (None: no JSON-RPC code of its own)."""
    codes: dict[str, int | None] = {}
    for line in TREE.splitlines():
        match = re.match(r"^[\s│├└─]*([A-Z]\w+)\s+(-?\d+)?", line)
        if match and match.group(1) != "The":
            codes[match.group(1)] = int(match.group(2)) if match.group(2) else None
    return codes


def _documented_targets() -> dict[str, str]:
    """Lower layer's class name -> the proxy class `translate()` must turn it into."""
    targets: dict[str, str] = {}
    for line in MAPPING.splitlines():
        if "->" in line:
            sources, _, target = line.partition("->")
            for source in sources.split(","):
                targets.setdefault(source.strip(), target.strip())
    return targets


CLASSES = _exception_classes()
# Constructors that need more than a message.
MAKE: dict[type[BaseException], Callable[[], BaseException]] = {
    NodeError: lambda: NodeError(-32000, "the node's own message"),
    SendOutcomeUnknown: lambda: SendOutcomeUnknown("0x" + "00" * 32),
    NodeUnreachable: lambda: NodeUnreachable("connection refused", delivered=False),
}


def test_the_walk_finds_both_layers() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"ProxyError", "PinLocked", "TokenNotFound", "UnrecognizedChain"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_exception_maps_to_its_documented_code(cls: type[Exception]) -> None:
    codes, targets = _documented_codes(), _documented_targets()
    private = cls.__name__.startswith("_")
    if cls.__module__.startswith("proxy.") and not private:
        assert cls.__module__ == "proxy.errors", f"{cls.__name__} must live in proxy/errors.py"
    # A private class's constructor is its module's business: an instance without it will do.
    default = (lambda: cls.__new__(cls)) if private else (lambda: cls("a message"))
    error = translate(MAKE.get(cls, default)())  # type: ignore[arg-type]
    if issubclass(cls, ProxyError):
        assert error.__class__ is cls
        assert cls.__name__ in codes, f"{cls.__name__} is missing from the errors table"
        if cls is not NodeError:  # a node's error keeps the node's code
            assert error.code == codes[cls.__name__]
        return
    # Private classes are signals caught inside their own module: "anything else" if they
    # ever escaped. Every public one is named in the mapping table.
    target = "InternalError" if private else targets.get(cls.__name__)
    assert target is not None, f"{cls.__name__} is missing from the mapping in proxy.errors"
    assert type(error).__name__ == target
    assert error.code == codes[target]
    if target != "InternalError":
        assert not error.message.startswith("internal error")


def test_hsm_conditions_say_what_is_wrong() -> None:
    from signer.errors import KeyNotFound, PinLocked, TokenNotFound

    locked = translate(PinLocked("the token's user PIN is locked"))
    assert (locked.code, locked.http_status) == (4100, 401) and "locked" in locked.message
    absent = translate(TokenNotFound("no initialised token labelled 'vault-7'"))
    assert (absent.code, absent.http_status) == (-32002, 503)
    assert "token is not present" in absent.message and "vault-7" not in absent.message
    assert "key" in translate(KeyNotFound("no key")).message
    assert type(translate(RuntimeError("boom"))) is InternalError
