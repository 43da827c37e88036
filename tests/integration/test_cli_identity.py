"""The identity commands of CONTRACT section 1, run as a user runs them, on a fresh database
and a fresh SoftHSM token: happy path, bad input (exit 2, one line, no half-written rows), and
a pg_dump that holds no secret."""

from __future__ import annotations

import os
import re
import subprocess

import jwt

from proxy import store
from tests.support.cli import JWT_SECRET, Cli, count


def _count(database_url: str, table: str) -> int:
    return count(database_url, table)


def test_the_whole_identity_flow(cli: Cli, token: tuple[str, str], database_url: str) -> None:
    label, pin = token
    pin_file = cli.secret_file("pin", pin)
    password, new_password = (
        "correct horse " + os.urandom(4).hex(),
        "battery staple " + os.urandom(4).hex(),
    )

    latest = str(store.migrations()[-1][0])  # the schema version: the newest migration's
    assert cli.ok("db", "upgrade") == latest
    assert cli.ok("db", "upgrade") == latest  # safe to run again
    assert cli.ok("org", "create", "acme") == "acme"
    cli.bad("org", "create", "acme", match="already exists")

    address = cli.ok("account", "create", "--org", "acme", "--token-label", label,
                     "--name", "treasury", "--pin-file", pin_file)  # fmt: skip
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", address) and address != address.lower()
    assert cli.run("account", "list", "--org", "acme").stdout == f"{address}\ttreasury\n"
    cli.bad("account", "create", "--org", "nope", "--token-label", label, "--pin-file", pin_file,
            match="no organisation named 'nope'")  # fmt: skip
    wrong_pin = cli.secret_file("wrong", "wrong-pin")
    cli.bad("account", "create", "--org", "acme", "--token-label", label,
            "--pin-file", wrong_pin, match="refused the PIN")  # fmt: skip
    assert _count(database_url, "accounts") == 1

    # user add: PIN on stdin, password from a file
    pw_file = cli.secret_file("pw", password)
    added = cli.ok("user", "add", "--org", "acme", "--user", "alice", "--role", "signer",
                   "--pin-file", "-", "--password-file", pw_file, stdin=pin + "\n")  # fmt: skip
    assert added == "alice"
    cli.bad("user", "add", "--org", "acme", "--user", "alice", "--pin-file", pin_file,
            "--password-file", pw_file, match="already exists")  # fmt: skip
    cli.bad("user", "add", "--org", "acme", "--user", "bob", "--pin-file", wrong_pin,
            "--password-file", pw_file, match="refused the PIN")  # fmt: skip
    cli.bad("user", "add", "--org", "acme", "--user", "bob", "--pin-file", "-",
            "--password-file", "-", stdin="x", match="at most one")  # fmt: skip
    cli.bad("user", "add", "--org", "acme", "--user", "bob", "--pin-file", "/nonexistent/pin",
            "--password-file", pw_file, match="cannot read /nonexistent/pin")  # fmt: skip
    assert _count(database_url, "users") == 1
    assert _count(database_url, "credential_envelopes") == 1

    # passwd: the old password is required, then only the new one opens the envelope
    new_file = cli.secret_file("new", new_password)
    cli.bad("user", "passwd", "--user", "alice", "--password-file", new_file,
            "--new-password-file", new_file, match="wrong password")  # fmt: skip
    cli.ok("user", "passwd", "--user", "alice", "--password-file", pw_file,
           "--new-password-file", new_file)  # fmt: skip
    cli.bad("apikey", "create", "--user", "alice", "--password-file", pw_file,
            match="wrong password")  # fmt: skip

    created = cli.run("apikey", "create", "--user", "alice", "--password-file", new_file)
    assert created.returncode == 0, created.stderr
    api_key = created.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"qsk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}", api_key)
    assert match and f"key id: {match.group(1)}" in created.stderr
    assert api_key not in created.stderr
    assert cli.ok("apikey", "revoke", match.group(1)) == match.group(1)
    cli.bad("apikey", "revoke", match.group(1), match="no active API key")

    token_text = cli.ok("token", "issue", "--user", "alice", "--ttl", "60")
    claims = jwt.decode(token_text, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    cli.bad("token", "issue", "--user", "mallory", match="unknown or disabled user")

    assert cli.ok("user", "disable", "--user", "alice") == "alice"
    cli.bad("token", "issue", "--user", "alice", match="unknown or disabled user")
    cli.bad("user", "disable", "--user", "nobody", match="no user 'nobody'")

    # A copy of the database holds none of the secrets used above.
    dump = subprocess.run(["pg_dump", "--data-only", database_url], capture_output=True,
                          check=True).stdout  # fmt: skip
    assert b"alice" in dump  # the dump is real
    for secret in (pin, password, new_password, api_key, api_key.split("_", 2)[2], token_text):
        assert secret.encode() not in dump, "a secret is in the database dump"


def test_bad_usage_is_one_line_and_exit_2(cli: Cli) -> None:
    cli.bad("user", "add", "--org", "acme", match="required")
    cli.bad("token", "issue", "--user", "a", "--ttl", "x", match="invalid int value")


def test_unreachable_database_names_the_setting(cli: Cli) -> None:
    cli.env["QSIGNER_DATABASE_URL"] = "postgresql://nobody:hunter2@127.0.0.1:1/none"
    line = cli.broken("org", "create", "x", match="QSIGNER_DATABASE_URL")  # the system: 1
    assert "hunter2" not in line
    del cli.env["QSIGNER_DATABASE_URL"]
    cli.bad("org", "create", "x", match="QSIGNER_DATABASE_URL is not set")
