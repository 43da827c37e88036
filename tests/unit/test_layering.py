"""Shape rules of issue 13's "Structure": handlers see the `AsyncSigner` seam, never PKCS#11
types; the key cache belongs to the signing side's keyring, not to `Services`."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from proxy.context import Services

HANDLERS = Path(__file__).resolve().parents[2] / "proxy" / "handlers"


def test_handlers_do_not_import_pkcs11() -> None:
    for path in HANDLERS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("signer.pkcs11"), path.name
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("signer.pkcs11") for a in node.names), path.name


def test_services_holds_no_key_cache() -> None:
    names = {field.name for field in dataclasses.fields(Services)}
    assert "keys" not in names and "keyring" in names


POLICY = HANDLERS.parents[1] / "policy"
# policy/ decides over plain values: nothing from the proxy, the HSM, the network or the disk.
POLICY_MAY_NOT_IMPORT = ("proxy", "signer.pkcs11", "aiohttp", "asyncpg", "pkcs11", "socket",
                         "subprocess", "os", "pathlib", "io")  # fmt: skip


def test_policy_imports_point_inward_only() -> None:
    for path in POLICY.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                assert not any(
                    name == banned or name.startswith(banned + ".")
                    for banned in POLICY_MAY_NOT_IMPORT
                ), f"{path.name} imports {name}"
