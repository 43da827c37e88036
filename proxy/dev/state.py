"""What `quorum-signer dev` keeps under ./.quorum-signer/: its secrets file, a lock held while a
dev runs on the directory, the processes a killed dev left running on it, and `--reset`."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy.errors import BadInput

STATE_FILE, LOCK_FILE = "dev.json", "dev.lock"
ANVIL_STATE, PGDATA, SOFTHSM = "anvil-state.json", "pgdata", "softhsm"
# What --reset says it removed, by entry of the state directory.
CONTENTS = {
    SOFTHSM: "the SoftHSM token (the demo account's private key)",
    PGDATA: "the embedded PostgreSQL (organisation, user, API key, nonce ledger, audit log)",
    ANVIL_STATE: "the anvil chain (balances, the asset token)",
    "anvil.log": "anvil's log",
    STATE_FILE: "the dev secrets (token PINs, password, API key, JWT secret, token address)",
}


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    return {
        "so_pin": secrets.token_urlsafe(16),
        "user_pin": secrets.token_urlsafe(16),
        "password": secrets.token_urlsafe(16),
        "jwt_secret": secrets.token_urlsafe(48),
    }


def save(path: Path, state: dict[str, Any]) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(state, indent=2))


@contextlib.contextmanager
def lock(state_dir: Path) -> Iterator[None]:
    """Held while this process runs a dev on `state_dir`: a second one (or a reset) is refused,
    naming the pid of the first. Child processes do not inherit it (close_fds)."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BadInput(f"another dev (pid {holder}) is running on {state_dir}: "
                           "stop it first (Ctrl-C)") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def leftovers(state_dir: Path) -> list[tuple[int, str]]:
    """(pid, what) of the anvil and PostgreSQL servers still running on `state_dir`'s chain and
    data, as a killed dev leaves them (call it holding the lock: then no dev owns them)."""
    wanted = {("--state", str(state_dir / ANVIL_STATE)): "anvil",
              ("-D", str(state_dir / PGDATA)): "PostgreSQL"}  # fmt: skip
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        pairs = set(itertools.pairwise(argv))
        found += [(int(entry.name), what) for pair, what in wanted.items() if pair in pairs]
    return found


def stop(pid: int, what: str, timeout: float = 15) -> None:
    """Stops a leftover server by its pid: SIGTERM for anvil (which then writes its state),
    SIGINT (fast shutdown) for PostgreSQL; SIGKILL if it is still there after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT if what == "PostgreSQL" else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)


def reset(state_dir: Path) -> list[str]:
    """Removes everything under `state_dir` but the lock (held by the caller); what it removed,
    one line each."""
    removed = []
    for entry in sorted(state_dir.iterdir()):
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(f"{entry.name}: {CONTENTS.get(entry.name, 'removed')}")
    return removed
