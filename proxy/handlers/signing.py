"""The signing methods: every one unlocks the caller's credentials, checks that the caller may
use `from`, signs inside the HSM, and (for eth_sendTransaction) sends through the node pool."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

from proxy import filling
from proxy.context import Caller, Services
from proxy.errors import Forbidden, InvalidParams, NodeError, Unauthorized
from proxy.rpc import RpcRequest
from signer.base import AsyncSigner, Signature, SignedTransaction
from signer.ecdsa import keccak256
from signer.errors import InvalidMessage, InvalidTransaction
from signer.messages import parse_typed_data, personal_message_digest, typed_data_digest
from signer.transactions import (
    Transaction,
    parse_address,
    parse_hex,
    sign_transaction_async,
)


def _address_param(value: Any) -> bytes:
    try:
        address = parse_address("address", value)
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    if address is None:
        raise InvalidParams("an address to sign with is required")
    return address


async def signer_for(services: Services, caller: Caller, address: bytes) -> AsyncSigner:
    """The key behind `address`, once the caller proved they may use it."""
    principal = caller.principal
    if not principal.may_sign:
        raise Forbidden(f"role {principal.role!r} may not sign")
    account = await services.identity.account_for(principal, address)
    if caller.credentials is None:
        if not caller.password:
            raise Unauthorized("signing with a JWT needs the X-Signer-Password header")
        _, caller.credentials = await services.identity.unlock_with_password(
            principal.user_id, caller.password
        )
        # A first unlock may have waited seconds for PBKDF2: a grant revoked meanwhile holds.
        account = await services.identity.account_for(principal, address)
    credentials = caller.credentials
    if credentials.token_serial != account.token_serial:
        raise Forbidden("this caller's credentials do not open the token of that account")
    key = await services.keyring.signer(credentials, account.key_id)
    if key.address != address:
        raise Forbidden("the HSM key does not match the registered account")
    return key


async def _chain_facts(services: Services) -> tuple[int | None, int]:
    block = await services.pool.call("eth_getBlockByNumber", ["latest", False])
    base_fee = block.get("baseFeePerGas")
    return (int(base_fee, 16) if base_fee is not None else None), int(block["gasLimit"], 16)


async def _prepare(services: Services, request: filling.Request) -> Callable[..., Transaction]:
    """Read what filling needs from the nodes (concurrently), before any nonce is held; the
    result builds the transaction once the nonce is known."""

    async def tip() -> int:
        try:
            return int(await services.pool.call("eth_maxPriorityFeePerGas"), 16)
        except NodeError:
            return 0

    async def gas_price() -> int:
        return int(await services.pool.call("eth_gasPrice"), 16)

    async def gas() -> int:
        if request.gas is not None:
            return request.gas
        estimate_fields = {k: v for k, v in request.fields.items()
                           if k in ("to", "value", "data", "input", "accessList")}  # fmt: skip
        estimate_fields["from"] = "0x" + request.sender.hex()
        return int(await services.pool.call("eth_estimateGas", [estimate_fields]), 16)

    (base_fee, gas_limit), gas_value = await asyncio.gather(_chain_facts(services), gas())
    fee_market = filling.uses_fee_market(request, base_fee)
    if fee_market and base_fee is None:
        raise InvalidParams("this network does not support EIP-1559 (type 2) transactions")
    tip_value = price = None
    if fee_market and "maxPriorityFeePerGas" not in request.fields:
        tip_value = await tip()
    if not fee_market and "gasPrice" not in request.fields:
        price = await gas_price()
    return functools.partial(
        filling.build, request, chain_id=services.pool.chain_id, gas=gas_value,
        block_gas_limit=gas_limit, fee_market=fee_market, base_fee=base_fee, gas_price=price,
        tip=tip_value,
    )  # fmt: skip


def _first_param(request: RpcRequest) -> Any:
    params = request.positional
    if not params:
        raise InvalidParams("expected a transaction object as the first parameter")
    return params[0]


async def send_transaction(services: Services, caller: Caller, request: RpcRequest) -> Any:
    parsed = filling.parse_request(_first_param(request))
    key = await signer_for(services, caller, parsed.sender)
    build = await _prepare(services, parsed)
    if parsed.nonce is not None:
        return await _sign_and_send(services, caller, key, build(nonce=parsed.nonce))
    async with services.nonces.lease(parsed.sender) as lease:
        return await _sign_and_send(services, caller, key, build(nonce=lease.nonce))


async def _sign(services: Services, key: AsyncSigner, tx: Transaction) -> SignedTransaction:
    started = time.perf_counter()
    signed = await sign_transaction_async(tx, key)
    services.metrics.hsm_sign.observe(time.perf_counter() - started)
    return signed


async def _sign_and_send(
    services: Services, caller: Caller, key: AsyncSigner, tx: Transaction
) -> str:
    signed = await _sign(services, key, tx)
    return await services.pool.send(
        "eth_sendRawTransaction",
        ["0x" + signed.raw.hex()],
        "0x" + signed.hash.hex(),
        headers=caller.forward_headers,
    )


async def sign_transaction(services: Services, caller: Caller, request: RpcRequest) -> Any:
    parsed = filling.parse_request(_first_param(request))
    key = await signer_for(services, caller, parsed.sender)
    nonce = parsed.nonce
    if nonce is None:
        count = await services.pool.call(
            "eth_getTransactionCount", ["0x" + parsed.sender.hex(), "pending"]
        )
        nonce = int(count, 16)
    tx = (await _prepare(services, parsed))(nonce=nonce)
    signed = await _sign(services, key, tx)
    return {"raw": "0x" + signed.raw.hex(), "tx": filling.to_rpc(tx, signed)}


def _message_bytes(value: Any) -> bytes:
    """A message given as 0x-hex is those bytes; any other string is its UTF-8 text."""
    if not isinstance(value, str):
        raise InvalidParams("the message must be a string (0x-hex bytes or text)")
    if value[:2] in ("0x", "0X"):
        try:
            return parse_hex("message", value)
        except InvalidTransaction:
            pass
    return value.encode()


def _looks_like_address(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")


async def _sign_digest(services: Services, key: AsyncSigner, digest: bytes) -> str:
    started = time.perf_counter()
    signature: Signature = await key.sign_digest_async(digest)
    services.metrics.hsm_sign.observe(time.perf_counter() - started)
    return "0x" + signature.to_bytes().hex()


async def eth_sign(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [address, message]")
    key = await signer_for(services, caller, _address_param(params[0]))
    return await _sign_digest(services, key, personal_message_digest(_message_bytes(params[1])))


async def personal_sign(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [message, address]")
    message, address = params[0], params[1]
    # MetaMask's order is [message, address]; some older tools send [address, message].
    if _looks_like_address(message) and not _looks_like_address(address):
        message, address = address, message
    key = await signer_for(services, caller, _address_param(address))
    return await _sign_digest(services, key, personal_message_digest(_message_bytes(message)))


async def sign_typed_data_v4(services: Services, caller: Caller, request: RpcRequest) -> Any:
    params = request.positional
    if len(params) < 2:
        raise InvalidParams("expected [address, typedData]")
    try:
        data = parse_typed_data(params[1])
        chain = data["domain"].get("chainId")
        if chain is not None:
            # Wallet libraries send the domain's chainId as a number, a decimal or hex string.
            text = str(chain)
            value = chain if isinstance(chain, int) else int(text, 16 if text[:2] == "0x" else 10)
            if value != services.pool.chain_id:
                raise InvalidParams(
                    f"typed data is for chain {value}, the nodes serve {services.pool.chain_id}"
                )
        digest = typed_data_digest(data)
    except (InvalidMessage, InvalidTransaction, ValueError) as exc:
        raise InvalidParams(str(exc)) from None
    key = await signer_for(services, caller, _address_param(params[0]))
    return await _sign_digest(services, key, digest)


# A caller's own signed transaction, submitted to a node: each method with whether the node
# answers with the transaction's hash (eth_distributePrivateTransaction answers with Tessera's).
SUBMISSIONS = {
    "eth_sendRawTransaction": True,
    "eth_sendRawPrivateTransaction": True,
    "eth_distributePrivateTransaction": False,
}


async def forward_raw(services: Services, caller: Caller, request: RpcRequest) -> Any:
    """A caller's own signed transaction (SUBMISSIONS), with the pool's safe-retry rules."""
    params = request.positional
    if not params or not isinstance(params[0], str):
        raise InvalidParams("expected [rawTransaction]")
    try:
        raw = parse_hex("rawTransaction", params[0])
    except InvalidTransaction as exc:
        raise InvalidParams(str(exc)) from None
    return await services.pool.send(
        request.method,
        list(params),
        "0x" + keccak256(raw).hex(),
        headers=caller.forward_headers,
        answers_hash=SUBMISSIONS[request.method],
    )
