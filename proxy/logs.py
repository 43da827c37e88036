"""Structured logs: one JSON object a line (or plain text on a terminal), never a secret.

Only fields chosen here are written: request id, method, user, organisation, account, outcome,
code, duration. Params, headers, paths (which may hold an API key) and bodies are never logged.
Records reach stderr through the standard library's QueueHandler / QueueListener, off the loop.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

LOGGER = logging.getLogger("proxy")  # parent of every proxy.* module logger
MAX_QUEUED = 100_000  # records waiting for stderr; beyond, they are dropped and counted
STOP_SECONDS = 5.0
# Records on their way to stderr, and None: the writer thread's stop marker (QueueListener's).
_Records = queue.Queue[logging.LogRecord | None]


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


class _Dropped:
    """Records dropped because the queue was full: counted on the loop's thread, reported by
    the writer's, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def take(self) -> int:
        with self._lock:
            count, self._count = self._count, 0
        return count


class _StderrWriter(logging.StreamHandler):  # type: ignore[type-arg]
    """Runs on the listener's thread only. Writes into a block-buffered copy of stderr and
    flushes once the queue is empty: one write(2) per burst, not per line (a line-buffered
    stderr cost a third of the passthrough throughput, bench/passthrough.py)."""

    def __init__(self, records: _Records, dropped: _Dropped,
                 record_formatter: logging.Formatter) -> None:  # fmt: skip
        super().__init__(open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                              closefd=False))  # fmt: skip
        self.setFormatter(logging.Formatter("%(message)s"))  # formatted by the QueueHandler
        self._records = records
        self._dropped = dropped
        self.record_formatter = record_formatter  # for its own notices (records come formatted)

    def emit(self, record: logging.LogRecord) -> None:
        self.report_dropped()
        super().emit(record)

    def report_dropped(self) -> None:
        count = self._dropped.take()
        if count:
            # Its own record, formatted like every other line (a JSON object in json mode).
            notice = logging.LogRecord("proxy.logs", logging.WARNING, __file__, 0,
                                       "log records dropped: stderr was not keeping up",
                                       None, None)  # fmt: skip
            notice.fields = {"dropped": count}
            super().emit(self._formatted(notice))

    def _formatted(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = self.record_formatter.format(record), None
        return record

    def flush(self) -> None:
        if self._records.empty():
            self.flush_now()

    def flush_now(self) -> None:
        with contextlib.suppress(ValueError, OSError), self.lock:  # type: ignore[union-attr]
            self.stream.flush()


class _BoundedQueueHandler(QueueHandler):
    """On the caller's thread (the event loop): formats, then hands over without ever waiting.
    When the queue is full (stderr blocked for long), the record is dropped and counted."""

    def __init__(self, records: _Records, dropped: _Dropped) -> None:
        super().__init__(records)
        self._dropped = dropped

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._dropped.add()


class _Listener(QueueListener):
    """The writer thread. Its stop marker waits for room in the queue (the stock one gives up
    when the queue is full, and the records still in it were lost); `stop()` bounds the wait."""

    def __init__(self, records: _Records,
                 writer: logging.Handler) -> None:  # fmt: skip
        super().__init__(records, writer)
        self._records = records

    def enqueue_sentinel(self) -> None:
        self._records.put(None)


_running: tuple[_Listener, _StderrWriter] | None = None


def configure(log_format: str | None) -> None:
    """Log records go through a bounded queue to a thread that writes them to stderr, so that a
    slow or blocked stderr never blocks the event loop."""
    global _running
    stop()
    chosen = log_format or ("text" if sys.stderr.isatty() else "json")
    records: _Records = queue.Queue(MAX_QUEUED)
    dropped = _Dropped()
    formatter = JsonFormatter() if chosen == "json" else TextFormatter()
    writer = _StderrWriter(records, dropped, formatter)
    handler = _BoundedQueueHandler(records, dropped)
    handler.setFormatter(formatter)
    listener = _Listener(records, writer)
    listener.start()
    _running = (listener, writer)
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def stop(timeout: float = STOP_SECONDS) -> None:
    """Write out what is queued and stop the writer thread; waits at most `timeout` seconds
    (stderr may be a pipe that nobody reads)."""
    global _running
    if _running is None:
        return
    listener, writer = _running
    _running = None
    LOGGER.handlers[:] = []

    def drain() -> None:
        listener.stop()  # once stderr has taken every record queued (or `timeout` ends it)
        writer.report_dropped()  # drops after the last record written
        writer.flush_now()

    stopper = threading.Thread(target=drain, name="log-drain", daemon=True)
    stopper.start()
    stopper.join(timeout)


atexit.register(stop)


def event(message: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    LOGGER.log(level, message, exc_info=exc_info, extra={"fields": fields})
