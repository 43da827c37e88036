"""The real stack the benchmarks run against: anvil, PostgreSQL, SoftHSM, `quorum-signer serve`
(one replica, or several on the same database, token and node)."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from signer.pkcs11 import find_softhsm_module  # noqa: E402
from softhsm import write_config  # noqa: E402
from tests.support.anvil import free_port, run_anvil  # noqa: E402
from tests.support.database import fresh_database, postgres_server  # noqa: E402
from tests.support.serve import serve  # noqa: E402
from tests.support.stack import Stack, build_stack, environment  # noqa: E402


@dataclass
class Running:
    proxy: str  # the first replica's base URL
    anvil: str
    stack: Stack
    module: str
    replicas: list[str] = field(default_factory=list)  # every replica's base URL, proxy first
    processes: list[psutil.Process] = field(default_factory=list)  # the replicas' processes


@contextmanager
def running_stack(anvil_extra: tuple[str, ...] = (), replicas: int = 1,
                  serve_env: Mapping[str, str] | None = None) -> Iterator[Running]:  # fmt: skip
    """The stack with `replicas` `serve` processes, each with the environment a user would give
    (plus `serve_env`) on its own port; every process is stopped on the way out."""
    module = find_softhsm_module()
    if module is None:
        raise SystemExit("SoftHSM2 is not installed (make deps)")
    chain = run_anvil(chain_id=1337, extra=anvil_extra)
    with tempfile.TemporaryDirectory() as tmp, chain as anvil, postgres_server() as server, \
            fresh_database(server) as database, ExitStack() as processes:  # fmt: skip
        conf = write_config(Path(tmp) / "softhsm")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        stack = asyncio.run(build_stack(anvil, database, module))
        urls: list[str] = []
        children: list[psutil.Process] = []
        for index in range(replicas):
            env = {**environment(stack, conf, f"127.0.0.1:{free_port()}"), **(serve_env or {})}
            urls.append(processes.enter_context(serve(env, Path(tmp) / f"serve-{index}.log")))
            children += [child for child in psutil.Process().children()
                         if child not in children and "serve" in child.cmdline()]  # fmt: skip
        yield Running(urls[0], anvil, stack, module, urls, children)
