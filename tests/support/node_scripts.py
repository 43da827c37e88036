"""Running the acceptance tests' Node.js client scripts (ethers, as a dApp's code would run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_client(script: Path, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run `script` with node from the project (its node_modules), and return the JSON report it
    prints on its last stdout line; a failure shows the script's stderr."""
    result = subprocess.run(["node", str(script)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


async def run_client_async(script: Path, env: dict[str, str], timeout: float = 120
                           ) -> dict[str, Any]:  # fmt: skip
    """`run_client` for a test whose server runs in its own event loop (the proxy in process):
    the script runs while the loop goes on serving it."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        "node", str(script), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    report: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return report
