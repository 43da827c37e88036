"""README's "Try it" client snippets, run unchanged but for the placeholders README tells users to
replace, against `quorum-signer dev` started as a user starts it: web3.py, ethers v6, viem (a
JSON-RPC account), hardhat 2 (`accounts: "remote"`) and foundry's cast, all pinned here. Each
must move 1 DEMO from the demo account, in a transaction the HSM signed for that account."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from policy.abi import parse_signature
from tests.support.checks import assert_signed_by
from tests.support.contracts import read, rpc
from tests.support.dev import Dev, run_dev
from tests.support.readme import README, snippets

REPO = Path(__file__).resolve().parents[2]
RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
ONE = 10**18
BALANCE_OF = parse_signature("balanceOf(address owner)")
TRANSFER_EVENT = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
# What README tells a user to replace, as README writes it.
PLACEHOLDERS = ("qsk_YOUR_API_KEY", "0xYOUR_DEMO_ACCOUNT", "0xYOUR_ASSET_TOKEN", "127.0.0.1:8545")


# Snippet: the file README has the user save it as (None: a shell command, run as written), how
# README has it run, and what it prints once the transfer is mined.
RUNS = {
    "web3.py": ("transfer.py", [sys.executable, "transfer.py"], "1"),
    "ethers": ("transfer.mjs", ["node", "transfer.mjs"], "1"),
    "viem": ("transfer.mjs", ["node", "transfer.mjs"], "success"),
    "hardhat-run": (None, ["bash", "-ec"], "1"),  # with hardhat.config.js, scripts/transfer.js
    "cast": (None, ["bash", "-ec"], "1 (success)"),
}


def filled(code: str, dev: Dev) -> str:
    v = dev.values
    values = (v["api_key"], v["account"], v["token"], f"127.0.0.1:{dev.port}")
    for placeholder, value in zip(PLACEHOLDERS, values, strict=True):
        code = code.replace(placeholder, value)
    return code


def run(args: list[str], cwd: Path) -> str:
    """A user's command in `cwd`, with the pinned npm tools on PATH (as `npx` finds them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSIGNER_")}
    env["PATH"] = f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{env['PATH']}"
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
                          check=False)  # fmt: skip
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def project(directory: Path) -> Path:
    """A directory of a user's with the npm packages installed (this repository's, linked)."""
    directory.mkdir(parents=True)
    (directory / "node_modules").symlink_to(REPO / "node_modules")
    return directory


def balances(dev: Dev) -> tuple[int, int]:
    token, account = dev.values["token"], dev.values["account"]
    return (read(dev.keyed_url, token, BALANCE_OF, [account]),
            read(dev.keyed_url, token, BALANCE_OF, [RECIPIENT]))  # fmt: skip


def assert_one_token_moved(dev: Dev, before: tuple[int, int], from_block: int) -> None:
    """1 DEMO left the demo account for the recipient, in one transfer whose transaction the
    demo account's HSM key signed (low-s, right chain id)."""
    sender, recipient = balances(dev)
    assert (sender, recipient) == (before[0] - ONE, before[1] + ONE)
    topics = [TRANSFER_EVENT, "0x" + dev.values["account"][2:].lower().rjust(64, "0"),
              "0x" + RECIPIENT[2:].lower().rjust(64, "0")]  # fmt: skip
    logs = rpc(dev.keyed_url, "eth_getLogs", [{"address": dev.values["token"], "topics": topics,
                                              "fromBlock": hex(from_block)}])  # fmt: skip
    assert len(logs) == 1, logs
    raw = rpc(dev.keyed_url, "eth_getRawTransactionByHash", [logs[0]["transactionHash"]])
    assert_signed_by(bytes.fromhex(raw[2:]), bytes.fromhex(dev.values["account"][2:]),
                     chain_id=1337)  # fmt: skip


def test_readme_snippets_move_tokens(tmp_path: Path) -> None:
    blocks = snippets()
    prose = README.read_text()
    for placeholder in PLACEHOLDERS:
        assert f"`{placeholder}`" in prose, f"README does not tell users to replace {placeholder}"
    scripts, hardhat = project(tmp_path / "scripts"), project(tmp_path / "hardhat")
    (hardhat / "scripts").mkdir()
    with run_dev(tmp_path) as dev:
        (hardhat / "hardhat.config.js").write_text(filled(blocks["hardhat.config.js"].code, dev))
        (hardhat / "scripts" / "transfer.js").write_text(filled(blocks["hardhat-script"].code, dev))
        for name, (saved_as, command, printed) in RUNS.items():
            code = filled(blocks[name].code, dev)
            if saved_as:
                (scripts / saved_as).write_text(code)
            before = balances(dev)
            from_block = int(rpc(dev.keyed_url, "eth_blockNumber"), 16) + 1
            output = run(command if saved_as else [*command, code],
                         hardhat if name.startswith("hardhat") else scripts)  # fmt: skip
            assert printed in output, f"{name}: {output}"
            assert_one_token_moved(dev, before, from_block)
