"""Bounded executor queues (issue 13, item 10): a token whose threads are all busy and whose
queue is full refuses a signature at once with -32005 instead of queueing it without end."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from proxy.errors import translate
from signer.errors import Overloaded
from signer.pkcs11 import Hsm
from tests.support.checks import check_digest_signature
from tests.support.hsm import random_label


async def test_a_full_token_queue_refuses_at_once(softhsm_conf: Path,
                                                  softhsm_module: str) -> None:  # fmt: skip
    label, pin = random_label(), os.urandom(8).hex()
    with Hsm(softhsm_module, sessions_per_token=1, queue_per_token=2) as hsm:
        hsm.initialise_token(label, os.urandom(8).hex(), pin)
        token = hsm.login(label, pin)
        key = token.generate_key(os.urandom(16), "bounded")
        digest = os.urandom(32)
        gate = threading.Event()
        # The one thread (one session) held busy, and two jobs waiting: the queue is at its bound.
        held = [token.executor.submit(gate.wait, 30) for _ in range(1 + 2)]
        try:
            with pytest.raises(Overloaded) as refused:
                await asyncio.wait_for(key.sign_digest_async(digest), timeout=5)
        finally:
            gate.set()
        assert all(future.result(timeout=5) for future in held)
        error = translate(refused.value)
        assert (error.code, error.http_status) == (-32005, 429)
        # Once the queue drains, signing works again.
        check_digest_signature(digest, *await key.sign_digest_async(digest), key.address)
        assert token.executor.outstanding == 0
