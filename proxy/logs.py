"""Structured logs: one JSON object a line (or plain text on a terminal), never a secret.

Only fields chosen here are written: request id, method, user, organisation, account, outcome,
code, duration. Params, headers, paths (which may hold an API key) and bodies are never logged.

`event` builds its line on the caller's thread (orjson for JSON) and leaves it for a writer
thread, which writes whatever has gathered every 50 ms in one write(2): a slow or blocked
stderr never blocks the event loop, and a busy proxy pays one line's formatting per request,
not a logging record, a handler lock, a thread wake-up and a write. Other modules' `logging`
records come the same way.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import orjson

LOGGER = logging.getLogger("proxy")  # parent of every proxy.* module logger
MAX_QUEUED = 100_000  # lines waiting for stderr; beyond, they are dropped and counted
STOP_SECONDS = 5.0
WRITE_EVERY = 0.05  # seconds between the writer's turns
_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}  # fmt: skip


# The last second formatted, as one (second, text) pair: lines come from several threads, and
# replacing the pair whole keeps a second and its text together.
_last_second: tuple[int, str] = (0, "")


def _timestamp(created: float) -> str:
    global _last_second
    second = int(created)
    cached, text = _last_second
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{int((created - second) * 1000):03d}Z"


def _json_line(level: str, message: str, fields: dict[str, Any], created: float) -> str:
    entry: dict[str, Any] = {"time": _timestamp(created), "level": level, "message": message}
    entry.update(fields)
    try:
        return orjson.dumps(entry, default=str).decode()
    except TypeError:  # an integer beyond 64 bits
        import json

        return json.dumps(entry, default=str)


def _text_line(level: str, message: str, fields: dict[str, Any], created: float) -> str:
    shown = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"{level:7} {message} {shown}".rstrip()


class _Writer(threading.Thread):
    """The thread that writes lines to stderr, and the lines waiting for it."""

    def __init__(self, line: Any) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.line = line  # _json_line or _text_line
        self.lines: collections.deque[str] = collections.deque()
        self.stop_requested = threading.Event()
        self.stopping = False
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stream = open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                            closefd=False)  # fmt: skip

    def push(self, line: str) -> None:
        """From any thread; never waits."""
        if len(self.lines) >= MAX_QUEUED:
            with self._dropped_lock:
                self._dropped += 1
            return
        self.lines.append(line)

    def run(self) -> None:
        # Woken by the clock, not by each line: a busy proxy pays no signal per line, and the
        # lines of many requests leave in one write.
        while not self.stopping:
            self.stop_requested.wait(WRITE_EVERY)
            self.write_out()
        self.write_out()  # what came in the meantime, and drops counted after the last line

    def write_out(self) -> None:
        with self._write_lock:  # the writer thread, or `quiet` flushing what is waiting
            self._write_out()

    def _write_out(self) -> None:
        taken: list[str] = []
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            # Its own line, formatted like every other (a JSON object in json mode).
            taken.append(self.line("warning", "log records dropped: stderr was not keeping up",
                                   {"dropped": dropped}, time.time()))  # fmt: skip
        with contextlib.suppress(IndexError):
            while True:
                taken.append(self.lines.popleft())
        if not taken:
            return
        with contextlib.suppress(ValueError, OSError):
            self._stream.write("\n".join(taken) + "\n")
            self._stream.flush()


class _Handler(logging.Handler):
    """Other modules' `logging` records (proxy.*), formatted like `event`'s lines."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self._writer = writer

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: push never waits
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < _floor:
            return
        try:
            fields = dict(getattr(record, "fields", {}))
            if record.exc_info:
                fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))
            level = _LEVELS.get(record.levelno, record.levelname.lower())
            self._writer.push(self._writer.line(level, record.getMessage(), fields,
                                                record.created))  # fmt: skip
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_writer: _Writer | None = None
_floor = logging.NOTSET  # lines below it are not written (see `quiet`)


def configure(log_format: str | None) -> None:
    """Lines go to a thread that writes them to stderr, so that a slow or blocked stderr never
    blocks the event loop; `json` or `text` (the default: text on a terminal, else json)."""
    global _writer
    stop()
    chosen = log_format or ("text" if sys.stderr.isatty() else "json")
    writer = _Writer(_json_line if chosen == "json" else _text_line)
    writer.start()
    _writer = writer
    LOGGER.handlers[:] = [_Handler(writer)]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def stop(timeout: float = STOP_SECONDS) -> None:
    """Write out what is waiting and stop the writer thread; waits at most `timeout` seconds
    (stderr may be a pipe that nobody reads)."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    LOGGER.handlers[:] = []
    writer.stopping = True
    writer.stop_requested.set()
    writer.join(timeout)


atexit.register(stop)


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Only lines at `level` or above meanwhile, what was waiting written first: `dev` keeps its
    start-up steps one line each while its own requests set up the demo."""
    global _floor
    if _writer is not None:
        _writer.write_out()
    previous, _floor = _floor, level
    try:
        yield
    finally:
        _floor = previous


def event(message: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    if level < _floor:
        return
    writer = _writer
    if writer is None or exc_info or level < logging.INFO:
        LOGGER.log(level, message, exc_info=exc_info, extra={"fields": fields})
        return
    writer.push(writer.line(_LEVELS.get(level, "info"), message, fields, time.time()))
