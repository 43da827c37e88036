"""Log records that a blocked stderr could not take are dropped, never waited for, and every one
of them is accounted for: in a JSON line of its own, before the next record or at stop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

RECORDS = 20_000

SCRIPT = textwrap.dedent(f"""
    import os, sys, threading
    import proxy.logs as logs

    logs.MAX_QUEUED = 50
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)  # stderr: a pipe nobody reads yet, so the writer thread blocks
    logs.configure("json")
    for n in range({RECORDS}):
        logs.event("record", n=n)
    chunks = []

    def read_all():
        while chunk := os.read(read_end, 1 << 16):
            chunks.append(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    logs.stop()
    os.dup2(saved, 2)
    os.close(write_end)
    reader.join()
    sys.stdout.buffer.write(b"".join(chunks))
""")


def test_dropped_records_are_counted_and_reported() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60,
                          check=True)  # fmt: skip
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    written = [line for line in lines if line["message"] == "record"]
    notices = [line for line in lines if line["message"].startswith("log records dropped")]
    assert notices, "records were dropped (the queue holds 50) but no notice says so"
    assert all(n["level"] == "warning" for n in notices)
    assert len(written) + sum(n["dropped"] for n in notices) == RECORDS
