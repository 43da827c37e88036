"""One-shot set-up of the docker-compose stack, run by its `init` service before the proxies
start: the schema, the SoftHSM token in the volume the proxies share, the demo organisation
with its HSM account and user, and the organisation's Tessera (the one beside the first node, with
its public key, from the generated network.json) for private transactions. Safe to run again:
what exists is left as it is.

It drives the same `quorum-signer` commands an operator types. The token PINs and the demo
user's password are read from files (the stack's docker secrets, or INIT_SECRETS_DIR); nothing
secret is printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

from proxy import cli
from proxy.settings import Settings
from signer.pkcs11 import Hsm

ORGANISATION, USER, TOKEN_LABEL, ACCOUNT_NAME = "demo", "demo", "demo", "treasury"
SECRETS = Path(os.environ.get("INIT_SECRETS_DIR", "/run/secrets"))
NETWORK = Path(os.environ.get("INIT_NETWORK_JSON", "/deploy/network.json"))


def progress(message: str) -> None:
    print(f"init: {message}", file=sys.stderr, flush=True)


def quorum_signer(*args: str, quiet: bool = False) -> tuple[int, str]:
    """Run one `quorum-signer` command in this process: its exit code and its stdout (its
    stderr too when `quiet`, for a question whose "no" is not a failure)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err if quiet else sys.stderr):
        code = cli.main(list(args))
    return code, out.getvalue()


def must(*args: str) -> str:
    """Run a command that must succeed; its result is the last line of its stdout."""
    code, out = quorum_signer(*args)
    if code != 0:
        raise SystemExit(f"init: `quorum-signer {' '.join(args[:2])}` failed (exit {code})")
    lines = out.strip().splitlines()
    return lines[-1] if lines else ""


def secret(name: str) -> Path:
    path = SECRETS / name
    if not path.is_file():
        raise SystemExit(f"init: the secret file {path} is missing (run `make network`)")
    return path


def ensure_token() -> None:
    module = Settings.from_env().require_pkcs11_module()
    with Hsm(module, sessions_per_token=1) as hsm:
        if TOKEN_LABEL in hsm.token_labels():
            progress(f"the SoftHSM token {TOKEN_LABEL!r} exists")
            return
        so_pin = secret("token_so_pin").read_text().removesuffix("\n")
        pin = secret("token_pin").read_text().removesuffix("\n")
        hsm.initialise_token(TOKEN_LABEL, so_pin, pin)
        progress(f"created the SoftHSM token {TOKEN_LABEL!r}")


def ensure_demo() -> str:
    code, listing = quorum_signer("account", "list", "--org", ORGANISATION, quiet=True)
    if code == 2:  # no such organisation yet
        must("org", "create", ORGANISATION)
        listing = ""
    elif code != 0:
        raise SystemExit(f"init: `quorum-signer account list` failed (exit {code})")
    if listing.strip():
        address = listing.split()[0]
        progress(f"the organisation {ORGANISATION!r} and its account exist")
        return address
    pin = str(secret("token_pin"))
    address = must("account", "create", "--org", ORGANISATION, "--token-label", TOKEN_LABEL,
                   "--name", ACCOUNT_NAME, "--pin-file", pin)  # fmt: skip
    must("user", "add", "--org", ORGANISATION, "--user", USER, "--role", "signer",
         "--pin-file", pin, "--password-file", str(secret("demo_password")))  # fmt: skip
    progress(f"created the organisation {ORGANISATION!r}, its account and the user {USER!r}")
    return address


def ensure_tessera() -> None:
    """The demo organisation's Tessera: the first one of the network, and its key as the
    organisation's own (`privateFrom`). Setting it again with the same values changes nothing."""
    if not NETWORK.is_file():
        raise SystemExit(f"init: {NETWORK} is missing (run `make network`)")
    nodes = json.loads(NETWORK.read_text())["nodes"]
    tessera = next(node["tessera"] for node in nodes if node.get("tessera"))
    must("org", "set-tessera", "--org", ORGANISATION, tessera["third_party"],
         "--key", tessera["public_key"])  # fmt: skip
    progress(f"the organisation {ORGANISATION!r} sends private transactions through "
             f"{tessera['service']}")  # fmt: skip


def main() -> int:
    must("db", "upgrade")
    ensure_token()
    address = ensure_demo()
    ensure_tessera()
    progress(f"ready: the demo account is {address}")
    print(address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
