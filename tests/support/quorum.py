"""A stand-in for a GoQuorum node, written here because no GoQuorum binary can be installed on
these machines. It sits in front of anvil (the public chain) and its own Tessera stand-in
(tests/support/tessera.py), and implements GoQuorum's `eth_sendRawPrivateTransaction(raw,
{privateFor, privacyFlag?, mandatoryFor?})` as GoQuorum's documentation describes it:
- the raw transaction must be a GoQuorum private one: legacy, value 0, `v` 37 or 38, its
  sender recovered from the pre-EIP-155 signing hash (no chain id), `data` a 64-byte hash;
- the node's Tessera is asked to send that hash's payload to the recipients (`POST
  /sendsignedtx`), and refuses an unknown hash or recipient (the node answers -32000 with its
  message, before the transaction enters any pool);
- the transaction then takes its sender's nonce on the public chain. anvil cannot take these
  bytes (it reads v 37/38 as EIP-155 on chain 1), so the stand-in has anvil mine the same
  sender, nonce, gas, gas price, `to` and `data` (the hash) by impersonating the sender, and
  answers with the hash of the bytes it was given. In every answer anvil gives afterwards, the
  hash of anvil's copy is shown as the given bytes' hash, and the other way round in requests,
  so that the proxy's ledger and a user's receipt polling see the transaction they sent.

Every other call goes to anvil as it is, except that with `pre_london` (the default, as a
GoQuorum network without London or gas pricing in its genesis) blocks carry no `baseFeePerGas`
and `eth_gasPrice` is 0 (anvil answers 1 gwei even when it charges nothing). What this does
not verify: GoQuorum's own private
execution (the private state, private receipts), QBFT, and GoQuorum's actual error texts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import rlp
from aiohttp import web
from coincurve import PublicKey

from signer.ecdsa import keccak256
from tests.support.anvil import free_port
from tests.support.servers import serve_on_loopback, stop_serving
from tests.support.tessera import TesseraStandIn


@dataclass
class PrivateSend:
    raw: bytes
    args: dict[str, Any]
    sender: bytes
    nonce: int
    tessera_hash: bytes
    tx_hash: str  # the hash of `raw`, as the node answered it
    psi: str | None = None  # the Quorum-PSI header it came with


@dataclass
class QuorumStandIn:
    anvil_url: str
    tessera: TesseraStandIn
    port: int = field(default_factory=free_port)
    private_sends: list[PrivateSend] = field(default_factory=list)
    refuse_private: str | None = None  # a -32000 message every private send gets, when set
    pre_london: bool = True  # blocks without baseFeePerGas, as GoQuorum's
    _ours: dict[str, str] = field(default_factory=dict)  # anvil's hash -> the given bytes' hash
    _theirs: dict[str, str] = field(default_factory=dict)  # and back
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _session: aiohttp.ClientSession | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/", self._rpc)
        self._runner = await serve_on_loopback(app, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        await stop_serving(runner)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _rpc(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        psi = request.headers.get("Quorum-PSI")
        if isinstance(body, list):
            answers = [await self._one(call, psi) for call in body]
            return web.json_response(answers)
        return web.json_response(await self._one(body, psi))

    async def _one(self, call: dict[str, Any], psi: str | None = None) -> dict[str, Any]:
        if call.get("method") == "eth_sendRawPrivateTransaction":
            try:
                result = await self._send_private(call.get("params") or [], psi)
            except _Refused as refusal:
                return {"jsonrpc": "2.0", "id": call.get("id"),
                        "error": {"code": -32000, "message": str(refusal)}}  # fmt: skip
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": result}
        if self.pre_london and call.get("method") == "eth_gasPrice":
            return {"jsonrpc": "2.0", "id": call.get("id"), "result": "0x0"}
        return await self._anvil(call)

    async def _anvil(self, call: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        text = json.dumps(call)
        for ours, theirs in self._theirs.items():
            text = text.replace(ours, theirs)
        headers = {"Content-Type": "application/json"}
        async with self._session.post(self.anvil_url, data=text, headers=headers) as answer:
            got = await answer.text()
        for theirs, ours in self._ours.items():
            got = got.replace(theirs, ours)
        answer = dict(json.loads(got))
        block = answer.get("result")
        if self.pre_london and call.get("method", "").startswith("eth_getBlockBy") and block:
            block.pop("baseFeePerGas", None)
        return answer

    async def _send_private(self, params: list[Any], psi: str | None) -> str:
        if len(params) != 2 or not isinstance(params[0], str) or not isinstance(params[1], dict):
            raise _Refused("expected [rawTransaction, {privateFor, privacyFlag, mandatoryFor}]")
        if self.refuse_private is not None:
            raise _Refused(self.refuse_private)
        raw = bytes.fromhex(params[0].removeprefix("0x"))
        args = params[1]
        fields = rlp.decode(raw)
        if not isinstance(fields, list) or len(fields) != 9:
            raise _Refused("transaction is not a legacy transaction")
        nonce, gas_price, gas, to, value, data, v, r, s = fields
        number = int.from_bytes
        if number(v, "big") not in (37, 38):
            raise _Refused("transaction is not private (v must be 37 or 38)")
        if number(value, "big") != 0:
            raise _Refused("ether value is not supported for private transactions")
        if len(data) != 64:
            raise _Refused("the data of a private transaction is a 64-byte Tessera hash")
        signing_hash = keccak256(rlp.encode([nonce, gas_price, gas, to, value, data]))
        signature = (r.rjust(32, b"\0") + s.rjust(32, b"\0")
                     + bytes([number(v, "big") - 37]))  # fmt: skip
        point = PublicKey.from_signature_and_message(signature, signing_hash, hasher=None)
        sender = keccak256(point.format(compressed=False)[1:])[-20:]
        assert self._session is not None
        request = {"hash": base64.b64encode(data).decode(),
                   "to": list(args.get("privateFor") or []),
                   "privacyFlag": int(args.get("privacyFlag") or 0),
                   "mandatoryRecipients": list(args.get("mandatoryFor") or [])}  # fmt: skip
        async with self._session.post(self.tessera.url + "/sendsignedtx", json=request) as sent:
            if sent.status != 200:
                raise _Refused(f"{sent.status} status: {await sent.text()}")
        tx_hash = "0x" + keccak256(raw).hex()
        account = "0x" + sender.hex()
        async with self._lock:
            await self._anvil({"jsonrpc": "2.0", "id": 1, "method": "anvil_impersonateAccount",
                               "params": [account]})  # fmt: skip
            copy = {"from": account, "nonce": hex(number(nonce, "big")),
                    "gas": hex(number(gas, "big")), "gasPrice": hex(number(gas_price, "big")),
                    "to": "0x" + to.hex() if to else None, "value": "0x0",
                    "data": "0x" + data.hex()}  # fmt: skip
            mined = await self._anvil({"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
                                       "params": [copy]})  # fmt: skip
        if "error" in mined:
            raise _Refused(str(mined["error"].get("message")))
        theirs = str(mined["result"])
        self._ours[theirs] = tx_hash
        self._theirs[tx_hash] = theirs
        self.private_sends.append(PrivateSend(raw, dict(args), sender, number(nonce, "big"),
                                              data, tx_hash, psi))  # fmt: skip
        return tx_hash


class _Refused(Exception):
    pass


@contextlib.asynccontextmanager
async def quorum_node(anvil_url: str, own_tessera: TesseraStandIn, *,
                      pre_london: bool = True) -> AsyncIterator[QuorumStandIn]:  # fmt: skip
    node = QuorumStandIn(anvil_url, own_tessera, pre_london=pre_london)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
