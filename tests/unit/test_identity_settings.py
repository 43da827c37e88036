"""The identity's settings (issue 13, items 5 and 10): defaults, and negative values refused."""

from __future__ import annotations

import pytest

from proxy.errors import SettingsError
from proxy.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.row_cache_seconds == 30
    assert (settings.auth_failure_rate, settings.auth_failure_burst) == (20, 40)


@pytest.mark.parametrize(
    "variable",
    ["QSIGNER_ROW_CACHE_SECONDS", "QSIGNER_AUTH_FAILURE_RATE", "QSIGNER_AUTH_FAILURE_BURST"],
)
def test_negative_values_are_refused(variable: str) -> None:
    with pytest.raises(SettingsError, match="must be >= 0"):
        Settings.from_env({variable: "-1"})
