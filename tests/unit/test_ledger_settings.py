"""The nonce ledger's settings: defaults, parsing, and refusals naming the variable."""

from __future__ import annotations

import pytest

from proxy.errors import SettingsError
from proxy.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.caller_nonces, settings.signed_tx_timeout, settings.idempotency_ttl,
            settings.resend_seconds) == ("respect", 600, 86400, 30)  # fmt: skip


def test_values_from_the_environment() -> None:
    settings = Settings.from_env({"QSIGNER_CALLER_NONCES": "reassign",
                                  "QSIGNER_SIGNED_TX_TIMEOUT": "5",
                                  "QSIGNER_IDEMPOTENCY_TTL": "60",
                                  "QSIGNER_RESEND_SECONDS": "2"})  # fmt: skip
    assert (settings.caller_nonces, settings.signed_tx_timeout, settings.idempotency_ttl,
            settings.resend_seconds) == ("reassign", 5, 60, 2)  # fmt: skip


@pytest.mark.parametrize(("name", "value"), [
    ("QSIGNER_CALLER_NONCES", "ignore"),
    ("QSIGNER_SIGNED_TX_TIMEOUT", "0"),
    ("QSIGNER_IDEMPOTENCY_TTL", "-1"),
    ("QSIGNER_RESEND_SECONDS", "0"),
])  # fmt: skip
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
