"""`quorum-signer dev` run as a user runs it: the console script in a directory of its own, with
nothing configured but the port, its banner read back, and every process it started found by pid
so that a test can check that Ctrl-C leaves none."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.anvil import free_port, stop

BIN = Path(sys.executable).parent / "quorum-signer"
STATE = ".quorum-signer"


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    cwd: Path
    port: int
    out: Path
    err: Path
    banner: str = ""
    values: dict[str, str] = field(default_factory=dict)  # url, api_key, account, token

    @property
    def keyed_url(self) -> str:
        return f"{self.values['url']}/rpc/{self.values['api_key']}"

    def stderr(self) -> str:
        return self.err.read_text()

    def spawned(self) -> list[psutil.Process]:
        """Every process this dev started and that runs now: its descendants (anvil), and the
        embedded PostgreSQL, which pg_ctl detaches into a session of its own, with its backends."""
        found = psutil.Process(self.process.pid).children(recursive=True)
        postmaster = self.cwd / STATE / "pgdata" / "postmaster.pid"
        if postmaster.exists():
            server = psutil.Process(int(postmaster.read_text().split()[0]))
            found += [server, *server.children(recursive=True)]
        return found

    def interrupt(self, *, group: bool) -> int:
        """SIGINT as Ctrl-C sends it (to the whole foreground process group), or to the pid
        alone; its exit code."""
        if group:
            os.killpg(self.process.pid, signal.SIGINT)
        else:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)


def _environment(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")
           and k != "SOFTHSM2_CONF"}  # fmt: skip
    env["QSIGNER_LISTEN"] = f"127.0.0.1:{port}"
    return env


def _read_banner(banner: str) -> dict[str, str]:
    keyed = re.search(r"RPC URL \(API key\)\s+(http://\S+)/rpc/(qsk_\S+)", banner)
    account = re.search(r"demo account\s+(0x[0-9a-fA-F]{40})\b", banner)
    token = re.search(r"asset token\s+(0x[0-9a-fA-F]{40})\b", banner)
    assert keyed and account and token, banner
    return {"url": keyed.group(1), "api_key": keyed.group(2), "account": account.group(1),
            "token": token.group(1)}  # fmt: skip


@contextmanager
def run_dev(cwd: Path, args: Sequence[str] = ()) -> Iterator[Dev]:
    """`quorum-signer dev ARGS` in `cwd` (in a session of its own, as a terminal's foreground
    job), once its banner is out; stopped with SIGINT afterwards if the test did not."""
    port = free_port()
    out, err = cwd / "dev.out", cwd / "dev.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [str(BIN), "dev", *args], cwd=cwd, env=_environment(port), stdout=stdout,
            stderr=stderr, start_new_session=True,
        )  # fmt: skip
    dev = Dev(process, cwd, port, out, err)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in (banner := out.read_text()):  # its last line
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        assert "quorum-signer dev is ready." in banner, banner
        dev.banner, dev.values = banner, _read_banner(banner)
        yield dev
    finally:
        stop(process, signal.SIGINT, timeout=60)


def refused(cwd: Path, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`quorum-signer dev ARGS` expected to stop at once."""
    return subprocess.run([str(BIN), "dev", *args], cwd=cwd, env=_environment(free_port()),
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
