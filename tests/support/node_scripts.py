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
