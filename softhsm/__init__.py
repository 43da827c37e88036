"""SoftHSM2 set-up for development and tests: a private token directory and its config file.

A process uses it by setting `SOFTHSM2_CONF` to the written file before it opens the PKCS#11
module; tokens are then created with `signer.pkcs11.Hsm.initialise_token` (C_InitToken), so no
PIN ever appears on a command line (softhsm2-util takes them as arguments).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONF_NAME = "softhsm2.conf"


def write_config(directory: str | Path) -> Path:
    """Create `directory/tokens/` and `directory/softhsm2.conf` (idempotent); return the conf."""
    root = Path(directory).resolve()
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    template = files("softhsm").joinpath("softhsm2.conf.in").read_text()
    conf = root / CONF_NAME
    text = template.replace("@TOKENDIR@", str(tokens))
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
        conf.chmod(0o600)
    return conf
