"""Structured logs: one JSON object a line (or plain text on a terminal), never a secret.

Only fields chosen here are written: request id, method, user, organisation, account, outcome,
code, duration. Params, headers, paths (which may hold an API key) and bodies are never logged.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import sys
import threading
import time
from typing import Any

LOGGER = logging.getLogger("proxy")  # parent of every proxy.* module logger


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        line = f"{record.levelname.lower():7} {record.getMessage()} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class BufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to a block-buffered copy of stderr, flushed every half second, at once for
    warnings and errors, and at exit. A line-buffered stderr costs a write(2) per request:
    a third of the proxy's passthrough throughput (bench/passthrough.py)."""

    FLUSH_SECONDS = 0.5

    def __init__(self) -> None:
        super().__init__(open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                              closefd=False))  # fmt: skip
        flusher = threading.Thread(target=self._flush_regularly, name="log-flush", daemon=True)
        flusher.start()
        atexit.register(self.flush_now)

    def flush(self) -> None:
        """Called by `emit` after every record: left to the timer."""

    def flush_now(self) -> None:
        with contextlib.suppress(ValueError, OSError), self.lock:  # type: ignore[union-attr]
            self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.flush_now()

    def _flush_regularly(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            self.flush_now()


def configure(log_format: str | None) -> None:
    chosen = log_format or ("text" if sys.stderr.isatty() else "json")
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if sys.stderr.isatty() else BufferedHandler()
    )
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def flush() -> None:
    for handler in LOGGER.handlers:
        if isinstance(handler, BufferedHandler):
            handler.flush_now()


def event(message: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    LOGGER.log(level, message, exc_info=exc_info, extra={"fields": fields})
