"""The demo's asset token (contracts/AssetToken.sol, an ERC-20 whose owner mints), deployed and
minted to the demo account through the running proxy itself: every transaction is signed inside
the HSM, as a user's would be."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from eth_abi.abi import encode

from policy.abi import encode_call, parse_signature
from proxy.errors import SettingsError
from signer.base import checksum

NAME, SYMBOL, DECIMALS = "Demo Asset", "DEMO", 18
MINTED = 1_000_000 * 10**DECIMALS  # to the demo account
_ARTIFACT = Path("contracts") / "build" / "AssetToken.json"
_MINT = parse_signature("mint(address to,uint256 amount)")


def artifact() -> dict[str, Any]:
    """contracts/build/AssetToken.json, from the working directory or the source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / _ARTIFACT).exists():
            loaded: dict[str, Any] = json.loads((root / _ARTIFACT).read_text())
            return loaded
    raise SettingsError(f"the asset token's compiled contract ({_ARTIFACT}) is not here: "
                        "run `quorum-signer dev` from a checkout of the repository")  # fmt: skip


class _Rpc:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def __call__(self, method: str, params: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with self.session.post(self.url, json=body) as response:
            answer = await response.json(content_type=None)
        if "error" in answer:
            raise SettingsError(f"the asset token: {method} answered "
                                f"{answer['error'].get('message')}")  # fmt: skip
        return answer["result"]

    async def mined(self, tx: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """eth_sendTransaction, then its receipt, which must succeed."""
        tx_hash = await self("eth_sendTransaction", [tx])
        deadline = time.monotonic() + timeout
        while (receipt := await self("eth_getTransactionReceipt", [tx_hash])) is None:
            if time.monotonic() > deadline:
                raise SettingsError(f"the asset token: {tx_hash} was not mined in {timeout:.0f} s")
            await asyncio.sleep(0.1)
        if receipt["status"] != "0x1":
            raise SettingsError(f"the asset token: {tx_hash} reverted")
        return dict(receipt)


async def is_deployed(proxy_url: str, address: str) -> bool:
    """Whether the chain holds the asset token's code at `address` (a remembered deployment
    survives only as long as the chain it was made on)."""
    async with aiohttp.ClientSession() as session:
        code = await _Rpc(session, proxy_url)("eth_getCode", [address, "latest"])
    return bool(code == artifact()["deployedBytecode"])


async def deploy(proxy_url: str, account: str) -> str:
    """Deploys the token from `account` and mints MINTED to it; the token's checksummed address."""
    compiled = artifact()
    init = bytes.fromhex(compiled["bytecode"][2:]) + encode(
        ["string", "string", "uint8"], [NAME, SYMBOL, DECIMALS]
    )
    async with aiohttp.ClientSession() as session:
        rpc = _Rpc(session, proxy_url)
        receipt = await rpc.mined({"from": account, "data": "0x" + init.hex()})
        token = checksum(bytes.fromhex(receipt["contractAddress"][2:]))
        mint = encode_call(_MINT, [account, MINTED])
        await rpc.mined({"from": account, "to": token, "data": "0x" + mint.hex()})
    return token
