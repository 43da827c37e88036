"""The compiled test contracts (contracts/build/) deployed and driven on an anvil node, from one
of anvil's funded, unlocked dev accounts: test set-up, not the product's signing path."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eth_abi.abi import decode, encode

from policy.abi import AbiSignature, encode_call, parse_signature
from signer.base import checksum

BUILD = Path(__file__).resolve().parents[2] / "contracts" / "build"
MINT = parse_signature("mint(address to,uint256 amount)")


class RpcError(Exception):
    """A node answered a JSON-RPC error; `error` is its error object as sent."""

    def __init__(self, method: str, error: Mapping[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('message')}")
        self.error = error


def artifact(name: str) -> dict[str, Any]:
    """contracts/build/<name>.json: abi, bytecode, deployedBytecode."""
    loaded: dict[str, Any] = json.loads((BUILD / f"{name}.json").read_text())
    return loaded


def rpc(url: str, method: str, params: Sequence[Any] = ()) -> Any:
    """One JSON-RPC call; a JSON-RPC error raises RpcError with the node's error object."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(  # noqa: S310 (a loopback URL the test started)
        url, body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer = json.loads(response.read())
    if "error" in answer:
        raise RpcError(method, answer["error"])
    return answer["result"]


def dev_account(url: str, index: int = 0) -> str:
    """One of anvil's funded, unlocked accounts (checksummed)."""
    return _address(str(rpc(url, "eth_accounts")[index]))


def _address(value: bytes | str) -> str:
    return checksum(value) if isinstance(value, bytes) else checksum(bytes.fromhex(value[2:]))


def send(
    url: str, to: bytes | str | None, data: bytes, sender: str | None = None
) -> dict[str, Any]:
    """eth_sendTransaction from an unlocked account; the mined receipt, which must succeed."""
    tx: dict[str, Any] = {"from": sender or dev_account(url), "data": "0x" + data.hex()}
    if to is not None:
        tx["to"] = _address(to)
    tx_hash = rpc(url, "eth_sendTransaction", [tx])
    deadline = time.monotonic() + 20
    while (receipt := rpc(url, "eth_getTransactionReceipt", [tx_hash])) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{tx_hash} not mined within 20 s")
        time.sleep(0.05)
    if receipt["status"] != "0x1":
        raise AssertionError(f"{tx_hash} failed: {receipt}")
    return dict(receipt)


def call(url: str, to: bytes | str, data: bytes, sender: str | None = None) -> bytes:
    """eth_call at `latest`: the return data; a revert raises RpcError."""
    tx: dict[str, Any] = {"to": _address(to), "data": "0x" + data.hex()}
    if sender is not None:
        tx["from"] = sender
    return bytes.fromhex(rpc(url, "eth_call", [tx, "latest"])[2:])


def deploy(url: str, name: str, args: Sequence[Any] = (), sender: str | None = None) -> str:
    """Deploys contracts/build/<name>.json with constructor `args`; its checksummed address."""
    compiled = artifact(name)
    inputs: list[dict[str, Any]] = next(
        (e["inputs"] for e in compiled["abi"] if e["type"] == "constructor"), []
    )
    if len(inputs) != len(args):
        raise ValueError(f"{name}'s constructor takes {len(inputs)} arguments, not {len(args)}")
    init = bytes.fromhex(compiled["bytecode"][2:]) + encode([i["type"] for i in inputs], list(args))
    receipt = send(url, None, init, sender)
    return _address(receipt["contractAddress"])


def token(
    url: str,
    name: str = "Acme Asset",
    symbol: str = "ACME",
    decimals: int = 18,
    mint_to: Mapping[bytes | str, int] | None = None,
) -> str:
    """An AssetToken owned by anvil's first dev account, minted to `mint_to` (smallest units)."""
    owner = dev_account(url)
    address = deploy(url, "AssetToken", (name, symbol, decimals), sender=owner)
    for holder, amount in (mint_to or {}).items():
        send(url, address, encode_call(MINT, [_address(holder), amount]), sender=owner)
    return address


def read(
    url: str,
    to: bytes | str,
    function: AbiSignature,
    args: Sequence[Any] = (),
    returns: str = "uint256",
) -> Any:
    """A view function's single return value, decoded as the ABI type `returns`."""
    return decode([returns], call(url, to, encode_call(function, args)))[0]
