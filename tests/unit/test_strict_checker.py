"""The strict checker itself, against ethereum/tests TransactionTests (chain id 1).

For the signature categories, the checker must accept exactly the transactions the latest fork
accepts, with the expected sender and hash: it is what stands between our tests and a node
(anvil) that would accept a high-s signature.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.checks import SignatureProblem, check_raw_transaction
from tests.support.vectors import case_id, hexbytes, load

SIGNATURE_CATEGORIES = {"ttRSValue", "ttSignature", "ttVValue"}
CASES = [c for c in load("tx_decoding.json") if c["category"] in SIGNATURE_CATEGORIES]


def _latest(case: dict[str, Any]) -> dict[str, str]:
    return list(case["results"].values())[-1]


def test_cases_include_high_s_rejections() -> None:
    exceptions = {_latest(c).get("exception") for c in CASES}
    assert "TransactionException.INVALID_SIGNATURE_VRS" in exceptions
    assert sum(1 for c in CASES if "hash" in _latest(c)) >= 15


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_checker_agrees_with_ethereum_tests(case: dict[str, Any]) -> None:
    result = _latest(case)
    raw = hexbytes(case["txbytes"])
    if "hash" in result:
        # Unprotected legacy transactions are valid on mainnet rules; say so explicitly.
        try:
            checked = check_raw_transaction(raw, chain_id=1)
        except SignatureProblem:
            checked = check_raw_transaction(raw, chain_id=None)
        assert checked.sender == hexbytes(result["sender"])
        assert checked.hash == hexbytes(result["hash"])
    else:
        with pytest.raises(SignatureProblem):
            check_raw_transaction(raw, chain_id=1)
        with pytest.raises(SignatureProblem):
            check_raw_transaction(raw, chain_id=None)


def test_high_s_is_refused() -> None:
    (case,) = [c for c in CASES if c["name"] == "TransactionWithSvalueHigh"]
    with pytest.raises(SignatureProblem, match="high s"):
        check_raw_transaction(hexbytes(case["txbytes"]), chain_id=None)
