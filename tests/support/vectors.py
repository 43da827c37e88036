"""The one loader of known-answer vectors (tests/vectors/, sources and licences in its README)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


@cache
def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def load(name: str) -> list[dict[str, Any]]:
    """The cases of a vector file (a JSON array), e.g. `load("tx_signing.json")`."""
    cases = _load(name)
    assert isinstance(cases, list) and cases, f"{name} holds no cases"
    return cases


def load_wycheproof(name: str) -> dict[str, Any]:
    data = _load(name)
    assert isinstance(data, dict) and data["testGroups"], f"{name} holds no test groups"
    return data


def hexbytes(value: str) -> bytes:
    assert value.startswith("0x"), value
    return bytes.fromhex(value[2:])


def case_id(case: dict[str, Any]) -> str:
    return str(case["name"])
