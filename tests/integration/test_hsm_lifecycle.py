"""The HSM handle's life: closing while others sign, stale keys after close, duplicate tokens,
odd PINs, a symlinked module path, and async signing really running off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from signer.errors import HsmError, PinIncorrect
from signer.pkcs11 import Hsm, open_module_users
from tests.conftest import SoftHsmToken
from tests.support.checks import check_digest_signature


def test_a_closed_handle_refuses_work_even_after_a_new_one_opens(
    hsm_token: SoftHsmToken, softhsm_module: str
) -> None:
    key = hsm_token.token.generate_key(os.urandom(16), "stale")
    hsm_token.hsm.close()
    with Hsm(softhsm_module) as fresh:
        fresh.login(hsm_token.label, hsm_token.pin)  # handles are numbered from 1 again
        with pytest.raises(HsmError, match="was closed"):
            key.sign_digest(os.urandom(32))
        with pytest.raises(HsmError, match="was closed"):
            key.token.sign_raw(key.key_id, os.urandom(32))


def test_close_while_threads_sign_does_not_crash(hsm_token: SoftHsmToken) -> None:
    key = hsm_token.token.generate_key(os.urandom(16), "closing")
    stop = threading.Event()
    outcomes: list[str] = []

    def sign_until_closed() -> None:
        while not stop.is_set():
            digest = os.urandom(32)
            try:
                signature = key.sign_digest(digest)
            except HsmError:
                outcomes.append("refused")
                return
            check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)
            outcomes.append("signed")

    threads = [threading.Thread(target=sign_until_closed) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while outcomes.count("signed") < 50 and time.monotonic() < deadline:
        time.sleep(0.001)
    hsm_token.hsm.close()  # sessions are drained before they are closed
    # every thread goes on signing until the closed handle refuses it; `stop` only ends a
    # thread that the close failed to reach, so that a defect fails the test, never hangs it
    for thread in threads:
        thread.join(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert outcomes.count("refused") == len(threads) and "signed" in outcomes


def test_a_second_token_with_the_same_label_is_refused(hsm_token: SoftHsmToken) -> None:
    with pytest.raises(HsmError, match="already exists"):
        hsm_token.hsm.initialise_token(hsm_token.label, "so-pin-2", "user-pin-2")
    assert hsm_token.hsm.token_labels().count(hsm_token.label) == 1


@pytest.mark.parametrize("pin", ["guess-\udc80", "", 1234, None])
def test_odd_pins_are_refused_without_echo(hsm_token: SoftHsmToken, pin: object) -> None:
    with pytest.raises(PinIncorrect) as caught:
        hsm_token.hsm.login(hsm_token.label, pin)  # type: ignore[arg-type]
    assert "guess" not in repr(caught.value) and "guess" not in str(caught.value)


def test_a_symlink_to_the_module_shares_its_initialisation(
    hsm_token: SoftHsmToken, softhsm_module: str, tmp_path: Path
) -> None:
    link = tmp_path / "libpkcs11-link.so"
    link.symlink_to(os.path.realpath(softhsm_module))
    before = open_module_users()
    with Hsm(str(link)) as again:
        assert open_module_users() == before + 1
        assert hsm_token.label in again.token_labels()


async def test_async_signing_runs_in_the_tokens_executor(hsm_token: SoftHsmToken) -> None:
    key = hsm_token.token.generate_key(os.urandom(16), "executor")
    threads: set[str] = set()
    original = key.token.sign_raw

    def recording(key_id: bytes, digest: bytes) -> tuple[int, int]:
        threads.add(threading.current_thread().name)
        return original(key_id, digest)

    key.token.sign_raw = recording  # type: ignore[method-assign]
    digests = [os.urandom(32) for _ in range(20)]
    signatures = await asyncio.gather(*(key.sign_digest_async(digest) for digest in digests))
    assert threads and all(name.startswith(f"pkcs11-{hsm_token.label}") for name in threads)
    assert threading.current_thread().name not in threads
    for digest, signature in zip(digests, signatures, strict=True):
        check_digest_signature(digest, signature.r, signature.s, signature.v, key.address)
