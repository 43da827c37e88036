"""The `quorum-signer` command line: thin shells over the same services the server uses.

Machine-readable results go alone on the last line of stdout; progress goes to stderr; bad input
exits 2 with one line on stderr saying what to fix.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from signer.base import checksum
from signer.errors import SignerError
from signer.pkcs11 import Hsm, find_softhsm_module
from softhsm import write_config


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit code 2."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _dev(args: argparse.Namespace) -> int:
    """Until the proxy exists: a SoftHSM token under ./.quorum-signer/ and a demo key in it."""
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = write_config(state_dir / "softhsm")
    # SoftHSM reads its configuration from the environment of the process that loads it.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    module = args.pkcs11_module or find_softhsm_module()
    if module is None:
        raise UsageError("SoftHSM2 is not installed: run `make dev` (or apt-get install softhsm2)")

    # Development state: a random token PIN kept beside the token, readable by this user only.
    # `serve` never reads this file; a token PIN reaches a running proxy only inside a user's
    # password envelope.
    state_file = state_dir / "dev.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
    else:
        state = {
            "token_label": "quorum-signer-dev",
            "so_pin": secrets.token_urlsafe(16),
            "user_pin": secrets.token_urlsafe(16),
            "key_id": secrets.token_hex(16),
            "key_label": "demo",
        }
    with Hsm(module) as hsm:
        if state["token_label"] not in hsm.token_labels():
            _progress(f"creating the SoftHSM token {state['token_label']!r} in {conf.parent}")
            hsm.initialise_token(state["token_label"], state["so_pin"], state["user_pin"])
        state_file.touch(mode=0o600, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))
        token = hsm.login(state["token_label"], state["user_pin"])
        key_id = bytes.fromhex(state["key_id"])
        try:
            key = token.key(key_id=key_id)
            _progress("reusing the demo key")
        except SignerError:
            _progress("generating the demo key inside the HSM token")
            key = token.generate_key(key_id, state["key_label"])
        _progress(f"token {token.label!r} (serial {token.serial}); demo account:")
        print(checksum(key.address))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quorum-signer",
        description="JSON-RPC signing proxy for Quorum nodes, with keys held in an HSM.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dev = commands.add_parser(
        "dev",
        help="run everything on this machine with nothing to configure",
        description="Create (or reuse) a SoftHSM token under ./.quorum-signer/ and a demo "
        "key in it, and print the demo account's address.",
    )
    dev.add_argument(
        "--state-dir",
        default=".quorum-signer",
        help="where the dev state lives (default: %(default)s)",
    )
    dev.add_argument("--pkcs11-module", help="PKCS#11 library (default: SoftHSM2's)")
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"quorum-signer: {exc}", file=sys.stderr)
        return 2
    except SignerError as exc:
        print(f"quorum-signer: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
