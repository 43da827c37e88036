"""The node settings: read timeout, connections per node, answer size, and the bound on one
account's waiting transactions; bad values name the variable."""

from __future__ import annotations

import pytest

from proxy.errors import SettingsError
from proxy.settings import Settings

MODULE = {"QSIGNER_PKCS11_MODULE": "/nonexistent/libsofthsm2.so"}


def test_node_settings_have_defaults_and_are_read_from_the_environment() -> None:
    defaults = Settings.from_env(MODULE)
    assert (defaults.read_timeout, defaults.node_connections) == (10.0, 64)
    assert (defaults.max_response_bytes, defaults.max_in_flight) == (32 * 1024 * 1024, 64)
    settings = Settings.from_env(
        {**MODULE, "QSIGNER_READ_TIMEOUT": "2.5", "QSIGNER_NODE_CONNECTIONS": "8",
         "QSIGNER_MAX_RESPONSE_BYTES": "1048576", "QSIGNER_MAX_IN_FLIGHT": "16"}
    )  # fmt: skip
    assert (settings.read_timeout, settings.node_connections) == (2.5, 8)
    assert (settings.max_response_bytes, settings.max_in_flight) == (1048576, 16)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("QSIGNER_READ_TIMEOUT", "soon"),
        ("QSIGNER_READ_TIMEOUT", "0"),
        ("QSIGNER_NODE_CONNECTIONS", "0"),
        ("QSIGNER_MAX_RESPONSE_BYTES", "100"),
        ("QSIGNER_MAX_IN_FLIGHT", "0"),
    ],
)
def test_bad_node_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({**MODULE, variable: value})
    assert variable in str(raised.value)
