"""The `quorum-signer` command line: thin shells over the same services the server uses.

Machine-readable results go alone on the last line of stdout; progress goes to stderr. Every
failure is one line on stderr: exit 2 for input to fix, 1 for a failure of the system (database
or HSM unreachable or failing).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import json
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg

from proxy import store
from proxy.audit import AuditLog
from proxy.audit import commands as audit_commands
from proxy.errors import BadInput, ProxyError, SettingsError, SystemFailure
from proxy.events import webhooks
from proxy.guard import admin as guard_admin
from proxy.identity import ROLES, Identity
from proxy.identity.auth import issue_token
from proxy.ledger import queries
from proxy.nodes.transport import mask_url
from proxy.settings import Settings
from signer.base import checksum
from signer.errors import HsmError, InvalidTransaction, PinIncorrect, SignerError
from signer.pkcs11 import Hsm
from signer.transactions import parse_address

T = TypeVar("T")


def _read_secret(path: str | None, prompt: str) -> str:
    """A secret from a file (`-` = standard input; one trailing newline dropped) or a prompt."""
    if path is None:
        if not sys.stdin.isatty():
            raise BadInput(f"no terminal to ask for the {prompt.lower()}: give it in a file")
        secret = getpass.getpass(f"{prompt}: ")
    elif path == "-":
        secret = sys.stdin.read()
    else:
        try:
            secret = Path(path).read_text()
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise BadInput(f"cannot read {path}: not UTF-8 text") from None
    secret = secret.removesuffix("\n")
    if not secret:
        raise BadInput(f"the {prompt.lower()} is empty")
    return secret


def _check_one_stdin(*paths: str | None) -> None:
    if sum(1 for p in paths if p == "-") > 1:
        raise BadInput("at most one secret may be read from standard input (-)")


def _address(text: str) -> bytes:
    try:
        address = parse_address("--account", text)
    except InvalidTransaction as exc:
        raise BadInput(str(exc)) from None
    return address or b""  # parse_address answers None only for None


async def _connect(settings: Settings, max_size: int) -> asyncpg.Pool:
    dsn = settings.require_database()  # unset: a setting to fix (exit 2)
    try:
        return await store.connect(dsn, max_size=max_size)
    except SettingsError as exc:  # set but unreachable: the system fails (exit 1)
        raise SystemFailure(str(exc)) from None


def _with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[T]], *,
               max_size: int = 1) -> T:  # fmt: skip
    async def run() -> T:
        pool = await _connect(settings, max_size=max_size)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def _with_identity(settings: Settings, work: Callable[[Identity], Awaitable[T]]) -> T:
    return _with_pool(settings, lambda pool: work(Identity(pool, settings)), max_size=2)


def _hsm(settings: Settings) -> Hsm:
    return Hsm(settings.require_pkcs11_module(), sessions_per_token=1)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.dev import stack

    return stack.run(settings, Path(args.state_dir), reset=args.reset)


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> list[str]:
        pool = await _connect(settings, max_size=1)
        try:
            return await store.upgrade(pool)
        finally:
            await pool.close()

    applied = asyncio.run(run())
    _progress(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
    print(store.migrations()[-1][0])
    return 0


def _org_create(args: argparse.Namespace, settings: Settings) -> int:
    _with_identity(settings, lambda identity: identity.create_organisation(args.name))
    print(args.name.strip())
    return 0


def _org_set_psi(args: argparse.Namespace, settings: Settings) -> int:
    psis = _with_identity(
        settings, lambda identity: identity.set_private_states(args.org, args.psi)
    )
    _progress(f"{args.org}: private states {', '.join(psis)}" if psis else
              f"{args.org}: no private states (a Quorum-PSI header is refused)")  # fmt: skip
    print(" ".join(psis))
    return 0


def _org_set_tessera(args: argparse.Namespace, settings: Settings) -> int:
    keys = _with_identity(
        settings, lambda identity: identity.set_tessera(args.org, args.url, args.key)
    )
    owned = (f"keys {', '.join(keys)} (default {keys[0]})" if keys
             else "no keys of its own (no privateFrom; Tessera's default key sends)")  # fmt: skip
    _progress(f"{args.org}: Tessera {mask_url(args.url)}; {owned}")
    print(" ".join(keys))
    return 0


def _account_create(args: argparse.Namespace, settings: Settings) -> int:
    pin = _read_secret(args.pin_file, "Token PIN")
    with _hsm(settings) as hsm:
        account = _with_identity(
            settings,
            lambda identity: identity.create_account(
                args.org, hsm, args.token_label, pin, name=args.name
            ),
        )
    print(checksum(account.address))
    return 0


def _account_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(identity: Identity) -> list[Any]:
        org_id = await identity.organisation_id(args.org)
        if args.user is None:
            return await identity.accounts(org_id)
        user_org = await identity.pool.fetchval(
            "SELECT organisation_id FROM users WHERE id = $1", args.user
        )
        if user_org != org_id:
            raise BadInput(f"no user {args.user!r} in organisation {args.org!r}")
        return await identity.granted_accounts(args.user)

    for account in _with_identity(settings, work):
        print(f"{checksum(account.address)}\t{account.name or ''}")
    return 0


def _user_add(args: argparse.Namespace, settings: Settings) -> int:
    _check_one_stdin(args.pin_file, args.password_file)
    accounts = None if args.account is None else [_address(a) for a in args.account]
    pin = _read_secret(args.pin_file, "Token PIN")
    password = _read_secret(args.password_file, "Password")
    if args.password_file is None:
        if _read_secret(None, "Password again") != password:
            raise BadInput("the two passwords differ")
    with _hsm(settings) as hsm:
        _with_identity(settings, lambda identity: identity.add_user(
            args.org, args.user, args.role, hsm, pin, password, token_label=args.token_label,
            accounts=accounts,
        ))  # fmt: skip
    print(args.user)
    return 0


def _user_passwd(args: argparse.Namespace, settings: Settings) -> int:
    _check_one_stdin(args.password_file, args.new_password_file)
    old = _read_secret(args.password_file, "Current password")
    new = _read_secret(args.new_password_file, "New password")
    if args.new_password_file is None and _read_secret(None, "New password again") != new:
        raise BadInput("the two new passwords differ")
    _with_identity(settings, lambda identity: identity.change_password(args.user, old, new))
    print(args.user)
    return 0


def _user_disable(args: argparse.Namespace, settings: Settings) -> int:
    _with_identity(settings, lambda identity: identity.disable_user(args.user))
    print(args.user)
    return 0


def _user_grant(args: argparse.Namespace, settings: Settings) -> int:
    address = _address(args.account)
    if not _with_identity(settings, lambda identity: identity.grant_account(args.user, address)):
        _progress(f"{args.user} was already granted {checksum(address)}")
    print(checksum(address))
    return 0


def _user_revoke_account(args: argparse.Namespace, settings: Settings) -> int:
    address = _address(args.account)
    _with_identity(settings, lambda identity: identity.revoke_account(args.user, address))
    print(checksum(address))
    return 0


def _apikey_create(args: argparse.Namespace, settings: Settings) -> int:
    password = _read_secret(args.password_file, "Password")
    key = _with_identity(settings, lambda identity: identity.create_api_key(args.user, password))
    _progress(f"key id: {key.key_id}")
    _progress("the key is shown once: store it now")
    print(key.key)
    return 0


def _apikey_revoke(args: argparse.Namespace, settings: Settings) -> int:
    _with_identity(settings, lambda identity: identity.revoke_api_key(args.key_id))
    print(args.key_id)
    return 0


def _token_issue(args: argparse.Namespace, settings: Settings) -> int:
    if args.ttl < 1:
        raise BadInput("--ttl must be a positive number of seconds")
    _with_identity(settings, lambda identity: identity.principal(args.user))
    print(issue_token(settings, args.user, args.ttl))
    return 0


_TX_HASH = re.compile(r"0[xX][0-9a-fA-F]{64}")


def _tx_hash(text: str) -> bytes:
    if not _TX_HASH.fullmatch(text):
        raise BadInput("HASH must be a transaction hash: 0x and 64 hex digits")
    return bytes.fromhex(text[2:])


def _shown(text: str | None) -> str:
    """A value from the ledger (some came from callers: user ids, request ids, node messages) on
    one line, with no control characters to play tricks on a terminal."""
    if text is None or text == "":
        return "-"
    return "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


_RECEIPT_STATUS: dict[int | None, str] = {1: "1 (success)", 0: "0 (reverted)", None: "-"}


def _private_shown(private_args: str | None) -> str:
    """A private transaction's recipients and privacy flag; "-" for a public one."""
    if private_args is None:
        return "-"
    args = json.loads(private_args)
    shown = f"for {', '.join(args.get('privateFor') or []) or 'no one else'}"
    shown += f" (privacy flag {args.get('privacyFlag', 0)}"
    if args.get("mandatoryFor"):
        shown += f"; mandatory for {', '.join(args['mandatoryFor'])}"
    return shown + ")"


def _tx_show(args: argparse.Namespace, settings: Settings) -> int:
    tx_hash = _tx_hash(args.hash)
    rows = _with_pool(settings, lambda pool: queries.transactions_by_hash(pool, tx_hash))
    if not rows:
        # Not an error of the input (the hash is well formed) nor of the system: an answer, which
        # scripts tell from a success by the exit code, as with grep.
        print(f"quorum-signer: no transaction 0x{tx_hash.hex()} in the nonce ledger of this "
              "database", file=sys.stderr)  # fmt: skip
        return 1
    if len(rows) > 1:
        _progress(f"{len(rows)} rows of the ledger hold this hash: the live one first")
    for index, tx in enumerate(rows):
        if index:
            print()
        fields = [
            ("hash", "-" if tx.tx_hash is None else "0x" + tx.tx_hash.hex()),
            ("account", checksum(tx.account)),
            ("chain id", str(tx.chain_id)),
            ("nonce", str(tx.nonce)),
            ("state", tx.state),
            ("kind", tx.kind),
            ("private", _private_shown(tx.private_args)),
            ("user", _shown(tx.user_id)),
            ("request id", _shown(tx.request_id)),
            ("node", _shown(tx.node)),
            ("block", _number(tx.block_number)),
            ("status", _RECEIPT_STATUS[tx.receipt_status]),
            ("reason", _shown(tx.reason)),
            ("send attempts", str(tx.send_attempts)),
            ("created", _time(tx.created_at)),
            ("signed", _time(tx.signed_at)),
            ("sent", _time(tx.sent_at)),
            ("mined", _time(tx.mined_at)),
        ]  # fmt: skip
        for name, value in fields:
            print(f"{name}: {value}")
    return 0


def _tx_list(args: argparse.Namespace, settings: Settings) -> int:
    account = None if args.account is None else _address(args.account)
    rows = _with_pool(settings, lambda pool: queries.recent_transactions(
        pool, account=account, state=args.state, limit=args.limit))  # fmt: skip
    print("nonce\tstate\thash\tuser\tcreated\taccount\tchain")
    for tx in rows:
        shown_hash = "-" if tx.tx_hash is None else "0x" + tx.tx_hash.hex()
        print(f"{tx.nonce}\t{tx.state}\t{shown_hash}\t{_shown(tx.user_id)}\t"
              f"{_time(tx.created_at)}\t{checksum(tx.account)}\t{tx.chain_id}")  # fmt: skip
    if not rows:
        _progress("no transaction in the ledger matches")
    elif len(rows) == args.limit:
        _progress(f"the newest {args.limit} shown; there may be more (--limit N)")
    return 0


def _webhook_add(args: argparse.Namespace, settings: Settings) -> int:
    events = webhooks.parse_events(args.events)
    webhooks.check_url(args.url)
    added = _with_audit(settings, lambda identity, audit: webhooks.add(
        identity.pool, audit, args.org, args.url, events))  # fmt: skip
    _progress(f"webhook id: {added.id}")
    _progress(f"{args.org}: {', '.join(events)} events to {mask_url(args.url)}, signed with "
              "the secret below (shown once): X-QSigner-Signature: sha256=<HMAC-SHA256 of the "
              "body>")  # fmt: skip
    print(added.secret)
    return 0


def _webhook_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = _with_pool(settings, lambda pool: webhooks.listing(pool, args.org))
    print("id\torganisation\turl\tevents\tpending\tdelivered\tstate")
    for row in rows:
        state = "ok"
        if row["failures"]:
            state = f"failing ({row['failures']} in a row: {row['last_error'] or '?'})"
            if row["paused_until"] is not None:
                state += f", next try {_time(row['paused_until'])}"
        counts = f"{row['pending']}\t{row['delivered']}"
        print(f"{row['id']}\t{row['organisation']}\t{mask_url(row['url'])}\t"
              f"{','.join(row['events'])}\t{counts}\t{state}")  # fmt: skip
    if not rows:
        _progress("no webhook")
    return 0


def _webhook_remove(args: argparse.Namespace, settings: Settings) -> int:
    _with_audit(settings, lambda identity, audit: webhooks.remove(identity.pool, audit, args.id))
    _progress(f"{args.id}: removed; its pending deliveries are dropped")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.app import serve_app

    serve_app(settings)
    return 0


def _network_generate(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.dev import network

    funded = []
    for text in args.fund:
        try:
            funded.append(parse_address("--fund", text) or b"")
        except InvalidTransaction as exc:
            raise BadInput(str(exc)) from None
    seed = None if args.seed_file is None else _read_secret(args.seed_file, "Seed").encode()
    built = network.generate(args.chain_id, funded, seed)
    directory = network.write(built, Path(args.directory), force=args.force)
    _progress(f"a {network.NODE_COUNT}-node QBFT network (chain id {built.chain_id}) in "
              f"{directory}: keys and secrets, never to be committed")  # fmt: skip
    print(directory)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _policy_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"cannot read {path}: not UTF-8 text") from None


def _with_audit(settings: Settings,
                work: Callable[[Identity, AuditLog], Awaitable[T]]) -> T:  # fmt: skip
    async def run(pool: asyncpg.Pool) -> T:
        audit = AuditLog(pool)
        try:
            return await work(Identity(pool, settings), audit)
        finally:
            await audit.close()

    return _with_pool(settings, run, max_size=2)


def _policy_set(args: argparse.Namespace, settings: Settings) -> int:
    text = _policy_file(args.file)
    if args.last < 1:
        raise BadInput("--last must be a positive number of requests")
    if args.dry_run:
        guard_admin.validate(text)
        changed = _with_audit(settings, lambda identity, _audit: guard_admin.dry_run(
            identity, args.org, text, args.last,
            settings.upstreams[0] if settings.upstreams else None))  # fmt: skip
        for line in changed:
            print(line)
        _progress(f"{len(changed)} decision(s) would change; nothing was installed")
        return 0
    version = _with_audit(settings, lambda identity, audit: guard_admin.install(
        identity, audit, args.org, text))  # fmt: skip
    _progress(f"{args.org}: policy version {version} in force")
    print(version)
    return 0


def _policy_show(args: argparse.Namespace, settings: Settings) -> int:
    found = _with_identity(settings, lambda identity: guard_admin.current(identity, args.org))
    if found is None:
        _progress(f"{args.org} has no policy: everything a role may do is allowed")
        return 0
    version, source = found
    _progress(f"{args.org}: policy version {version}")
    sys.stdout.write(source if source.endswith("\n") else source + "\n")
    return 0


def _vote(args: argparse.Namespace, settings: Settings, approve: bool) -> int:
    password = _read_secret(args.password_file, "Password")
    vote = _with_audit(settings, lambda identity, audit: guard_admin.vote(
        identity, audit, args.id, args.user, password, approve))  # fmt: skip
    _progress(f"{vote.approval_id}: {vote.state} ({vote.votes} of {vote.needed} approvals)")
    print(vote.state)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="quorum-signer",
        description="JSON-RPC signing proxy for Quorum nodes, with keys held in an HSM. "
        "Configuration comes from QSIGNER_* environment variables (or --config FILE.toml).",
    )
    parser.add_argument("--config", help="a TOML file with the same keys as the environment")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)  # fmt: skip

    dev = commands.add_parser(
        "dev",
        help="run everything on this machine with nothing to configure",
        description="Start a SoftHSM token, an embedded PostgreSQL (unless QSIGNER_DATABASE_URL "
        "is set) and an anvil node (unless QSIGNER_UPSTREAMS is set) under ./.quorum-signer/, "
        "a demo organisation, account, user and API key, and an asset token deployed through "
        "the proxy; print the RPC URL, credentials and client snippets; serve until Ctrl-C. "
        "A second run reuses the same state.",
    )
    dev.add_argument("--reset", action="store_true",
                     help="start over: remove the dev state first (refused while a dev runs on "
                     "it)")  # fmt: skip
    dev.add_argument("--state-dir", default=".quorum-signer",
                     help="where the dev state lives (default: %(default)s)")  # fmt: skip
    dev.set_defaults(handler=_dev)

    commands.add_parser(
        "serve", help="the proxy, configured from the environment / --config",
        description="Serve the JSON-RPC proxy (QSIGNER_LISTEN, QSIGNER_UPSTREAMS, "
        "QSIGNER_DATABASE_URL, QSIGNER_JWT_*, ...).",
    ).set_defaults(handler=_serve)  # fmt: skip

    db = commands.add_parser("db", help="the database schema").add_subparsers(
        dest="db_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    db.add_parser("upgrade", help="create or upgrade the schema; safe to run again",
                  description="Apply the schema migrations not yet applied (idempotent).",
                  ).set_defaults(handler=_db_upgrade)  # fmt: skip

    org = commands.add_parser("org", help="organisations").add_subparsers(
        dest="org_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    org_create = org.add_parser("create", help="a new organisation",
                                description="Create an organisation.")  # fmt: skip
    org_create.add_argument("name")
    org_create.set_defaults(handler=_org_create)
    set_psi = org.add_parser(
        "set-psi", help="the GoQuorum private states (PSIs) the organisation may use",
        description="Replace the organisation's private state identifiers (GoQuorum "
        "multi-tenancy): a caller's Quorum-PSI header reaches the nodes only when it names one "
        "of them; with exactly one, it is sent for every call, with several a caller must name "
        "one. With none, the header is refused, and so is every call while another "
        "organisation holds PSIs.",
    )  # fmt: skip
    set_psi.add_argument("--org", required=True)
    set_psi.add_argument("psi", nargs="*", metavar="PSI")
    set_psi.set_defaults(handler=_org_set_psi)

    set_tessera = org.add_parser(
        "set-tessera", help="the organisation's Tessera and the Tessera keys it owns",
        description="Set the Tessera (its third-party API URL, e.g. http://tessera:9080) that "
        "stores the organisation's private transaction payloads, and the Tessera public keys "
        "the organisation owns: a caller's privateFrom must be one of them, and the first is "
        "used when a caller gives none. Replaces what was set before.",
    )  # fmt: skip
    set_tessera.add_argument("--org", required=True)
    set_tessera.add_argument("url", metavar="URL")
    set_tessera.add_argument("--key", action="append", default=[], metavar="PUBKEY",
                             help="a Tessera public key (base64) the organisation owns; "
                             "repeat for several, the first is the default")  # fmt: skip
    set_tessera.set_defaults(handler=_org_set_tessera)

    account = commands.add_parser("account", help="HSM accounts").add_subparsers(
        dest="account_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    create = account.add_parser(
        "create", help="generate a key pair inside the HSM token for an organisation",
        description="Generate a secp256k1 key pair inside the token (private key sensitive and "
        "not extractable), register it for the organisation and print its address.",
    )  # fmt: skip
    create.add_argument("--org", required=True)
    create.add_argument("--token-label", required=True)
    create.add_argument("--name")
    create.add_argument("--pin-file", help="file holding the token PIN (- for stdin)")
    create.set_defaults(handler=_account_create)
    listing = account.add_parser("list", help="the organisation's accounts",
                                 description="Print address and name of each account.")  # fmt: skip
    listing.add_argument("--org", required=True)
    listing.add_argument("--user", help="only the accounts this user was granted")
    listing.set_defaults(handler=_account_list)

    user = commands.add_parser("user", help="users").add_subparsers(
        dest="user_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    add = user.add_parser(
        "add", help="register a user with encrypted HSM credentials",
        description="Register a user; the token PIN is stored only inside an envelope "
        "encrypted under the user's password.",
    )  # fmt: skip
    add.add_argument("--org", required=True)
    add.add_argument("--user", required=True)
    add.add_argument("--role", choices=ROLES, default="signer")
    add.add_argument("--token-label", help="the token (default: that of the org's accounts)")
    add.add_argument("--pin-file", help="file holding the token PIN (- for stdin)")
    add.add_argument("--password-file", help="file holding the user's password (- for stdin)")
    add.add_argument("--account", action="append", metavar="ADDRESS",
                     help="grant only this account (repeatable; default: all the organisation's "
                     "current accounts on the token)")  # fmt: skip
    add.set_defaults(handler=_user_add)
    passwd = user.add_parser(
        "passwd",
        help="re-encrypt a user's credentials under a new password",
        description="Change a user's password (the old one is required).",
    )
    passwd.add_argument("--user", required=True)
    passwd.add_argument("--password-file", help="file holding the current password")
    passwd.add_argument("--new-password-file", help="file holding the new password")
    passwd.set_defaults(handler=_user_passwd)
    disable = user.add_parser(
        "disable",
        help="the user can no longer sign or read",
        description="Disable a user, at once on every replica.",
    )
    disable.add_argument("--user", required=True)
    disable.set_defaults(handler=_user_disable)
    for name, handler, summary in (
        ("grant", _user_grant, "let a user sign with one more account of the organisation"),
        ("revoke-account", _user_revoke_account, "the user may no longer sign with that account"),
    ):
        description = f"{summary[0].upper()}{summary[1:]}; holds on every replica within a second."
        change = user.add_parser(name, help=summary, description=description)
        change.add_argument("--user", required=True)
        change.add_argument("--account", required=True, metavar="ADDRESS")
        change.set_defaults(handler=handler)

    apikey = commands.add_parser("apikey", help="API keys").add_subparsers(
        dest="apikey_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    key_create = apikey.add_parser(
        "create", help="a new API key qsk_... for a user (shown once)",
        description="Print a new API key for the user; the key alone authenticates and unlocks.",
    )  # fmt: skip
    key_create.add_argument("--user", required=True)
    key_create.add_argument("--password-file", help="file holding the user's password")
    key_create.set_defaults(handler=_apikey_create)
    revoke = apikey.add_parser("revoke", help="revoke an API key by its id",
                               description="Revoke the API key with this id.")  # fmt: skip
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_apikey_revoke)

    token = commands.add_parser("token", help="development JWTs").add_subparsers(
        dest="token_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    issue = token.add_parser(
        "issue", help="an HS256 JWT signed with QSIGNER_JWT_SECRET",
        description="Print an HS256 JWT for the user (development and tests).",
    )  # fmt: skip
    issue.add_argument("--user", required=True)
    issue.add_argument("--ttl", type=int, default=3600, help="seconds (default: %(default)s)")
    issue.set_defaults(handler=_token_issue)

    policy = commands.add_parser("policy", help="the organisation's policy").add_subparsers(
        dest="policy_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    policy_set = policy.add_parser(
        "set", help="validate and install a policy file (a new version)",
        description="Validate FILE (an error names its line and field, and nothing is "
        "installed), then make it the organisation's policy on every replica within a second. "
        "With --dry-run, install nothing: replay the organisation's last audited requests "
        "against FILE and print one line per decision that would change.",
    )  # fmt: skip
    policy_set.add_argument("--org", required=True)
    policy_set.add_argument("file", metavar="FILE")
    policy_set.add_argument("--dry-run", action="store_true")
    policy_set.add_argument("--last", type=int, default=1000, metavar="N",
                            help="requests a dry-run replays (default: %(default)s)")  # fmt: skip
    policy_set.set_defaults(handler=_policy_set)
    policy_show = policy.add_parser("show", help="print the policy in force")
    policy_show.add_argument("--org", required=True)
    policy_show.set_defaults(handler=_policy_show)
    for name, approve in (("approve", True), ("reject", False)):
        vote = commands.add_parser(
            name, help=f"{name} a request that policy held (reason approval_required)",
            description=f"An admin of the request's organisation, other than its requester, "
            f"{name}s it, proving who they are with their own password.",
        )  # fmt: skip
        vote.add_argument("id", metavar="ID", help="the approval id the requester was given")
        vote.add_argument("--user", required=True, help="the admin")
        vote.add_argument("--password-file", metavar="F")
        vote.set_defaults(handler=functools.partial(_vote, approve=approve))

    net = commands.add_parser("network", help="a GoQuorum network for docker-compose")
    net_commands = net.add_subparsers(dest="network_command", metavar="COMMAND", required=True,
                                      parser_class=_Parser)  # fmt: skip
    generate = net_commands.add_parser(
        "generate",
        help="write the keys, genesis and configs of a 4-node QBFT network with Tessera",
        description="Write into DIR everything docker-compose.yml needs for 4 GoQuorum nodes in "
        "QBFT and Tessera beside two of them: the genesis (validators in extraData), node keys, "
        "static and permissioned nodes, Tessera key pairs and configs, and the stack's secrets. "
        "DIR holds private keys: it is created with mode 0700 and ignores itself in git.",
    )
    generate.add_argument("directory", metavar="DIR")
    generate.add_argument("--chain-id", type=int, default=1337,
                          help="the chain id, not 1 (default: %(default)s)")  # fmt: skip
    generate.add_argument("--fund", action="append", default=[], metavar="ADDRESS",
                          help="give ADDRESS a balance in the genesis (repeatable)")  # fmt: skip
    generate.add_argument("--seed-file", metavar="F",
                          help="derive every key from this file's content (tests, reproducible "
                          "demos; - for stdin); default: random keys")  # fmt: skip
    generate.add_argument("--force", action="store_true",
                          help="replace the network already in DIR")  # fmt: skip
    generate.set_defaults(handler=_network_generate)

    tx = commands.add_parser("tx", help="what the nonce ledger knows").add_subparsers(
        dest="tx_command", metavar="COMMAND", required=True, parser_class=_Parser)  # fmt: skip
    show = tx.add_parser(
        "show", help="one transaction: nonce, account, user, request id, node, state, times",
        description="Print what the nonce ledger knows of the transaction with this hash, one "
        "'field: value' line each (times in UTC). Exits 1 when the ledger does not know it.",
    )  # fmt: skip
    show.add_argument("hash", metavar="HASH", help="the transaction hash (0x and 64 hex digits)")
    show.set_defaults(handler=_tx_show)
    tx_list = tx.add_parser(
        "list", help="the newest transactions of the ledger",
        description="Print a header line, then one tab-separated line per transaction, newest "
        "first: nonce, state, hash, user, created (UTC), account, chain id.",
    )  # fmt: skip
    tx_list.add_argument("--account", metavar="ADDRESS", help="only this account's")
    tx_list.add_argument("--state", choices=queries.STATES, help="only those in this state")
    tx_list.add_argument("--limit", type=int, default=50, metavar="N",
                         help="at most N transactions (default: %(default)s)")  # fmt: skip
    tx_list.set_defaults(handler=_tx_list)
    webhook = commands.add_parser(
        "webhook", help="transaction events POSTed to a URL"
    ).add_subparsers(dest="webhook_command", metavar="COMMAND", required=True,
                     parser_class=_Parser)  # fmt: skip
    webhook_add = webhook.add_parser(
        "add", help="POST an organisation's transaction events to URL",
        description="POST each transaction event of the organisation's accounts (the JSON of "
        "eth_subscribe(\"qsigner_transactions\")) to URL, at least once, with headers "
        "X-QSigner-Event-Id and X-QSigner-Signature: sha256=<hex HMAC-SHA256 of the body under "
        "the secret>. Prints 'webhook id: ID' on stderr and the secret alone on the last line "
        "of stdout, once.",
    )  # fmt: skip
    webhook_add.add_argument("--org", required=True, metavar="NAME")
    webhook_add.add_argument("url", metavar="URL", help="http:// or https://")
    webhook_add.add_argument("--events", metavar="E,...",
                             help="only these: queued, sent, mined, failed, filled (default: "
                             "all)")  # fmt: skip
    webhook_add.set_defaults(handler=_webhook_add)
    webhook_list = webhook.add_parser(
        "list", help="the webhooks and their deliveries",
        description="Print a header line, then one tab-separated line per webhook: id, "
        "organisation, URL (host only), events, pending and delivered deliveries, state.",
    )  # fmt: skip
    webhook_list.add_argument("--org", metavar="NAME", help="only this organisation's")
    webhook_list.set_defaults(handler=_webhook_list)
    webhook_remove = webhook.add_parser(
        "remove", help="stop a webhook (its pending deliveries are dropped)"
    )
    webhook_remove.add_argument("id", metavar="ID")
    webhook_remove.set_defaults(handler=_webhook_remove)
    audit_commands.add_parser(commands, _Parser)
    return parser


def _failure(exc: Exception) -> tuple[int, str]:
    """Exit code and message: 2 for input to fix, 1 for a failure of the system."""
    if isinstance(exc, PinIncorrect):  # the PIN given is wrong: input to fix
        return 2, str(exc)
    if isinstance(exc, SystemFailure | HsmError):  # HSM or its token unusable
        return 1, str(exc)
    if isinstance(exc, ProxyError | SettingsError | SignerError):
        return 2, str(exc)
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
        # A database failure after connecting; its text may quote rows, so only the kind.
        return 1, f"the database failed ({type(exc).__name__})"
    return 1, f"unexpected failure ({type(exc).__name__})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(config_file=args.config)
        return int(args.handler(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code, message = _failure(exc)
        print(f"quorum-signer: {' '.join(message.split())}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
