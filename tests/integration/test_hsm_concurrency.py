"""Concurrency stress on one SoftHSM token: the C_Initialize locking trap must not bite.

Without CKF_OS_LOCKING_OK (FIELD-NOTES) four threads crashed the process within seconds; here
eight threads sign 500 digests each on one key, then the token must open cleanly again.
"""

from __future__ import annotations

import os
import threading

import pytest

from signer.base import Signature
from signer.pkcs11 import Hsm
from tests.conftest import SoftHsmToken
from tests.support.checks import check_digest_signature

THREADS = 8
PER_THREAD = 500


@pytest.mark.slow
def test_eight_threads_sign_on_one_token(hsm_token: SoftHsmToken, softhsm_module: str) -> None:
    keys = [hsm_token.token.generate_key(os.urandom(16), f"stress-{i}") for i in range(2)]
    results: list[list[tuple[int, bytes, Signature]]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        try:
            start.wait()
            for n in range(PER_THREAD):
                key_index = (index + n) % len(keys)
                digest = os.urandom(32)
                signature = keys[key_index].sign_digest(digest)
                results[index].append((key_index, digest, signature))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sum(len(r) for r in results) == THREADS * PER_THREAD
    for per_thread in results:
        for key_index, digest, signature in per_thread:
            key = keys[key_index]
            check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)

    # The token is intact: closing and opening it again finds the same keys, which still sign.
    hsm_token.hsm.close()
    with Hsm(softhsm_module) as hsm:
        token = hsm.login(hsm_token.label, hsm_token.pin)
        for key in keys:
            again = token.key(key_id=key.key_id)
            assert again.address == key.address
            digest = os.urandom(32)
            signature = again.sign_digest(digest)
            check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)
