"""Known-answer EIP-191 and EIP-712 vectors through the software signer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signer.messages import (
    personal_message_digest,
    sign_personal_message,
    sign_typed_data,
    typed_data_digest,
)
from signer.software import SoftwareSigner
from tests.support.checks import check_message_signature
from tests.support.vectors import case_id, hexbytes, load

PERSONAL = load("personal_sign.json")
TYPED = load("eip712.json")


@pytest.mark.parametrize("case", PERSONAL, ids=case_id)
def test_personal_sign_vector(case: dict[str, Any]) -> None:
    message = hexbytes(case["messageHex"])
    assert personal_message_digest(message) == hexbytes(case["digest"])
    if case["privateKey"]:
        signed = sign_personal_message(message, SoftwareSigner(hexbytes(case["privateKey"])))
        assert signed.signature_bytes == hexbytes(case["signature"])
        check_message_signature(signed.digest, signed.signature_bytes, hexbytes(case["address"]))


@pytest.mark.parametrize("case", TYPED, ids=case_id)
def test_typed_data_vector(case: dict[str, Any]) -> None:
    assert typed_data_digest(case["typedData"]) == hexbytes(case["digest"])
    # Wallet libraries (viem, ethers) send the typed data as a JSON string.
    assert typed_data_digest(json.dumps(case["typedData"])) == hexbytes(case["digest"])
    if case["privateKey"]:
        signer = SoftwareSigner(hexbytes(case["privateKey"]))
        signed = sign_typed_data(case["typedData"], signer)
        assert signed.signature_bytes == hexbytes(case["signature"])
        check_message_signature(signed.digest, signed.signature_bytes, signer.address)


def test_vectors_cover_signatures() -> None:
    assert sum(1 for c in PERSONAL if c["signature"]) >= 5
    assert sum(1 for c in TYPED if c["signature"]) >= 5
