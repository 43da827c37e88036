"""`quorum-signer dev` as a newcomer runs it: nothing configured (embedded PostgreSQL, anvil,
SoftHSM under ./.quorum-signer/), the printed credentials work, and a second run reuses them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from web3 import Web3

from tests.support.anvil import free_port, stop
from tests.support.checks import assert_signed_by

BIN = Path(sys.executable).parent / "quorum-signer"


def run_dev(cwd: Path, port: int) -> tuple[str, str]:
    """Start dev, wait for its banner, send a transaction with the printed API key URL, stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")
           and k != "SOFTHSM2_CONF"}  # fmt: skip
    env["QSIGNER_LISTEN"] = f"127.0.0.1:{port}"
    out, err = cwd / "dev.out", cwd / "dev.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen([str(BIN), "dev"], cwd=cwd, env=env, stdout=stdout,
                                   stderr=stderr)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "is ready" not in out.read_text():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.2)
        banner = out.read_text()
        keyed_url = re.search(r"RPC URL \(API key\)\s+(\S+)", banner)
        account = re.search(r"demo account\s+(0x[0-9a-fA-F]{40})", banner)
        assert keyed_url and account, banner
        w3 = Web3(Web3.HTTPProvider(keyed_url.group(1)))
        tx_hash = w3.eth.send_transaction({"from": account.group(1), "to": account.group(1),
                                           "value": 1})  # fmt: skip
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
        raw = w3.provider.make_request("eth_getRawTransactionByHash", [tx_hash.to_0x_hex()])
        assert_signed_by(bytes.fromhex(raw["result"][2:]), bytes.fromhex(account.group(1)[2:]),
                         chain_id=1337)  # fmt: skip
        return account.group(1), keyed_url.group(1)
    finally:
        stop(process, signal.SIGINT, timeout=30)


def test_dev_runs_then_reuses_its_state(tmp_path: Path) -> None:
    first = run_dev(tmp_path, free_port())
    assert (tmp_path / ".quorum-signer" / "pgdata").is_dir()
    assert oct((tmp_path / ".quorum-signer" / "dev.json").stat().st_mode & 0o777) == "0o600"
    second = run_dev(tmp_path, free_port())
    assert second[0] == first[0]  # the same account
    assert second[1].rsplit("/", 1)[1] == first[1].rsplit("/", 1)[1]  # the same API key
