"""`quorum-signer dev` as a newcomer runs it: nothing configured (embedded PostgreSQL, anvil,
SoftHSM under ./.quorum-signer/). The printed credentials sign in the HSM, the asset token is
deployed and funded, Ctrl-C leaves no process behind, a second run reuses the state, a second dev
on the same state is refused, and `--reset` starts over."""

from __future__ import annotations

from pathlib import Path

import psutil
from web3 import Web3

from policy.abi import parse_signature
from proxy.dev import asset_token
from tests.support.checks import assert_signed_by
from tests.support.contracts import artifact, read
from tests.support.dev import Dev, refused, run_dev

BALANCE_OF = parse_signature("balanceOf(address owner)")
OWNER = parse_signature("owner()")


def assert_signs(dev: Dev) -> None:
    """A transfer with the printed API key URL, signed in the HSM by the demo account (low-s)."""
    w3 = Web3(Web3.HTTPProvider(dev.keyed_url))
    account = dev.values["account"]
    tx_hash = w3.eth.send_transaction({"from": account, "to": account, "value": 1})
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
    raw = w3.provider.make_request("eth_getRawTransactionByHash", [tx_hash.to_0x_hex()])
    assert_signed_by(bytes.fromhex(raw["result"][2:]), bytes.fromhex(account[2:]), chain_id=1337)


def assert_stops_cleanly(dev: Dev, *, group: bool) -> None:
    """SIGINT (to the process group, as Ctrl-C sends it, or to the pid alone): exit 0, and not
    one of the processes dev started (anvil, PostgreSQL and its backends) is left, by pid."""
    spawned = dev.spawned()
    assert {p.name() for p in spawned} >= {"anvil", "postgres"}, spawned
    assert dev.interrupt(group=group) == 0, dev.stderr()
    _, alive = psutil.wait_procs(spawned, timeout=10)
    assert alive == [], f"left running after SIGINT: {alive}"


def test_dev_start_ctrl_c_restart_and_reset(tmp_path: Path) -> None:
    with run_dev(tmp_path) as first:
        assert_signs(first)
        token, account = first.values["token"], first.values["account"]
        # The token is the repository's AssetToken, deployed by the demo account (so through
        # the proxy, signed in the HSM: no other key can act for it) and minted to it.
        code = Web3(Web3.HTTPProvider(first.keyed_url)).eth.get_code(token).to_0x_hex()
        assert code == artifact("AssetToken")["deployedBytecode"]
        url = first.keyed_url
        assert read(url, token, OWNER, returns="address").lower() == account.lower()
        assert read(url, token, BALANCE_OF, [account]) == asset_token.MINTED
        assert "deployed at " + token in first.stderr()
        # A second dev, or a reset, on a state in use is refused; the state is untouched.
        for args in ([], ["--reset"]):
            second = refused(tmp_path, args)
            assert second.returncode == 2, second.stderr
            assert f"(pid {first.process.pid}) is running on" in second.stderr
        assert (tmp_path / ".quorum-signer" / "dev.json").exists()
        assert_stops_cleanly(first, group=True)
    assert oct((tmp_path / ".quorum-signer" / "dev.json").stat().st_mode & 0o777) == "0o600"

    with run_dev(tmp_path) as again:
        for same in ("account", "api_key", "token"):
            assert again.values[same] == first.values[same], same
        assert f"{token}, already deployed" in again.stderr()
        assert read(again.keyed_url, token, BALANCE_OF, [account]) == asset_token.MINTED
        assert_signs(again)
        assert_stops_cleanly(again, group=False)

    with run_dev(tmp_path, ["--reset"]) as fresh:
        for removed in ("softhsm", "pgdata", "anvil-state.json", "dev.json"):
            assert f"removed {removed}: " in fresh.stderr()
        assert fresh.values["account"] != account
        assert fresh.values["api_key"] != first.values["api_key"]
        assert fresh.values["token"] != token
        assert read(fresh.keyed_url, fresh.values["token"], BALANCE_OF,
                    [fresh.values["account"]]) == asset_token.MINTED  # fmt: skip
        assert_signs(fresh)
        assert_stops_cleanly(fresh, group=True)
