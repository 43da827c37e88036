"""Settings: from the environment, a TOML file (the environment wins), clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import SettingsError
from proxy.settings import Settings


def test_defaults_and_environment() -> None:
    settings = Settings.from_env({})
    assert settings.listen == "127.0.0.1:8545" and settings.pbkdf2_iterations == 600_000
    assert (settings.lockout_attempts, settings.lockout_seconds) == (5, 900)
    settings = Settings.from_env({
        "QSIGNER_UPSTREAMS": "http://a:1, http://b:2", "QSIGNER_CHAIN_ID": "0x539",
        "QSIGNER_PASSTHROUGH": "txpool_*,admin_peers", "QSIGNER_OTHER": "ignored",
    })  # fmt: skip
    assert settings.upstreams == ("http://a:1", "http://b:2") and settings.chain_id == 1337
    assert settings.passthrough == ("txpool_*", "admin_peers")


def test_toml_file_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "qsigner.toml"
    config.write_text('listen = "0.0.0.0:9000"\nupstreams = ["http://n1:8545", "http://n2:8545"]\n'
                      'lockout_attempts = 3\nQSIGNER_CHAIN_ID = 10\n')  # fmt: skip
    settings = Settings.from_env({"QSIGNER_LOCKOUT_ATTEMPTS": "7"}, config_file=config)
    assert settings.listen == "0.0.0.0:9000"
    assert settings.upstreams == ("http://n1:8545", "http://n2:8545")
    assert settings.lockout_attempts == 7 and settings.chain_id == 10


def test_audit_checkpoint_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.audit_checkpoint_rows, defaults.audit_checkpoint_seconds) == (1000, 60)
    settings = Settings.from_env({"QSIGNER_AUDIT_CHECKPOINT_ROWS": "50",
                                  "QSIGNER_AUDIT_CHECKPOINT_SECONDS": "5"})  # fmt: skip
    assert (settings.audit_checkpoint_rows, settings.audit_checkpoint_seconds) == (50, 5)


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"QSIGNER_PBKDF2_ITERATIONS": "many"}, "QSIGNER_PBKDF2_ITERATIONS must be an integer"),
        ({"QSIGNER_PBKDF2_ITERATIONS": "1000"}, "at least 100000"),
        ({"QSIGNER_LOG_FORMAT": "xml"}, "QSIGNER_LOG_FORMAT"),
        ({"QSIGNER_AUDIT_CHECKPOINT_ROWS": "0"}, "QSIGNER_AUDIT_CHECKPOINT_ROWS"),
        ({"QSIGNER_AUDIT_CHECKPOINT_SECONDS": "0"}, "QSIGNER_AUDIT_CHECKPOINT_SECONDS"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        Settings.from_env(environ)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--config"):
        Settings.from_env({}, config_file=tmp_path / "missing.toml")


def test_rate_limiter_refills() -> None:
    import time

    from proxy.errors import RateLimited
    from proxy.ratelimit import RateLimiter

    limiter = RateLimiter(per_second=50, burst=2)
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check("b")
    time.sleep(0.05)  # 2.5 calls' worth refilled
    limiter.check("a")
    RateLimiter(0, 0).check("anyone")  # off
