"""Several `quorum-signer serve` processes on one database and one node set, as an operator
runs replicas behind a load balancer: each on a free port with its own log, started as a user
starts it, killed with SIGKILL (a crashed pod) and started again on the same port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.anvil import free_port
from tests.support.serve import BIN, wait_until_ready


class Replica:
    """One `serve` process; its port (hence URL) stays the same across restarts."""

    def __init__(self, index: int, env: dict[str, str], log_path: Path) -> None:
        self.index = index
        self.port = free_port()
        # PYTHONFAULTHANDLER: a replica that will not stop is shown, not just killed
        self.env = {"PYTHONFAULTHANDLER": "1", **env, "QSIGNER_LISTEN": f"127.0.0.1:{self.port}"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        assert not self.running(), f"replica {self.index} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            self.process = subprocess.Popen([str(BIN), "serve"], env=self.env, stdout=log,
                                            stderr=log)  # fmt: skip

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_until_ready(self.url, self.process, self.log_path.read_text)

    def restart(self) -> None:
        self.launch()
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a node failure does: no shutdown code runs."""
        assert self.process is not None and self.running(), f"replica {self.index} is not running"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def interrupt(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGINT)

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for the process to end; kill it after `timeout`. False if it had to be killed."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            # With PYTHONFAULTHANDLER set, SIGABRT writes every thread's stack to the log first.
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            return False
        return True


class Replicas:
    """N replicas of one configuration (`env` without QSIGNER_LISTEN); `own` adds or overrides
    variables of replica i (its own nodes, say)."""

    def __init__(self, env: dict[str, str], count: int, directory: Path,
                 own: list[dict[str, str]] | None = None) -> None:  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        self.forced: list[int] = []  # replicas that ignored Ctrl-C and were killed at the stop
        self.stop_seconds = 0.0
        own = own or [{} for _ in range(count)]
        self.members = [Replica(i, {**env, **own[i]}, directory / f"serve-{i}.log")
                        for i in range(count)]  # fmt: skip

    def __getitem__(self, index: int) -> Replica:
        return self.members[index]

    def __len__(self) -> int:
        return len(self.members)

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    def start(self) -> None:
        """Start every replica at once, then wait until each answers /readyz with 200."""
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_ready()

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def restart(self, index: int) -> None:
        self.members[index].restart()

    def stop(self, timeout: float = 20) -> None:
        """SIGINT to all (Ctrl-C), then wait for each; a replica still running is killed."""
        started = time.monotonic()
        for member in self.members:
            member.interrupt()
        deadline = started + timeout
        for member in self.members:
            if not member.wait_stopped(deadline - time.monotonic()):
                self.forced.append(member.index)
        self.stop_seconds = time.monotonic() - started

    def log_text(self) -> str:
        return "\n".join(m.log_path.read_text(errors="replace") for m in self.members
                         if m.log_path.exists())  # fmt: skip

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log records of every replica (QSIGNER_LOG_FORMAT=json)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def problems(self, limit: int = 20) -> str:
        """The error and warning records (and any non-JSON lines such as a traceback), for an
        assertion message."""
        lines = []
        for line in self.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if not line.startswith("--- start"):
                    lines.append(line)
                continue
            if isinstance(record, dict) and str(record.get("level", "")).lower() in (
                "error", "warning", "critical"
            ):  # fmt: skip
                lines.append(line)
        return "\n".join(lines[-limit:])


@contextlib.contextmanager
def replicas(env: dict[str, str], count: int, directory: Path,
             own: list[dict[str, str]] | None = None) -> Iterator[Replicas]:  # fmt: skip
    """`count` replicas of `serve` started with `env` (and `own`), stopped (by pid) afterwards."""
    group = Replicas(env, count, directory, own)
    try:
        group.start()
        yield group
    except BaseException:
        group.stop()
        raise
    group.stop()
    assert not group.forced, (
        f"replica(s) {group.forced} did not stop within 20 s of SIGINT (Ctrl-C): killed; their "
        f"stacks at the end of {[str(group[i].log_path) for i in group.forced]}"
    )
